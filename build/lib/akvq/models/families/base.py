"""What akvq knows about one model family, as one value: `Family`. Each family module defines one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from akvq.errors import UnsupportedModelError

IMAGE = "<image>"  # the family-neutral placeholders tasks write; `Family.render` maps them
VIDEO = "<video>"


@dataclass(frozen=True)
class TinyBuild:
    """What a family's tiny builder returns: the pieces `akvq.models.sources.tiny` assembles into a model."""

    tokenizer: Any
    processor: Any  # None for text-only families
    config: Any
    model_class: type


@dataclass(frozen=True)
class Family:
    """A model family. `vision_token_attrs` names the config attributes holding the ids of vision-feature
    positions (empty: text-only); `placeholders` maps `<image>`/`<video>` to the text the processor expands
    (missing: the literal placeholder is the model's own token)."""

    name: str
    model_types: tuple[str, ...]
    hub_class: str  # transformers class name used by the hub loader
    vision_token_attrs: tuple[str, ...] = ()
    placeholders: Mapping[str, str] = field(default_factory=dict)
    videos: bool = False
    tiny: Callable[[int | None], TinyBuild] | None = None  # head_dim (None: default) -> tiny random parts
    tiny_head_dim: bool = True  # whether the tiny builder takes another head_dim (mrope fixes Qwen2-VL's)

    @property
    def is_vlm(self) -> bool:
        return bool(self.vision_token_attrs)

    def render(self, prompt: str) -> str:
        """A prompt with family-neutral placeholders in this family's own text."""
        for placeholder, text in self.placeholders.items():
            prompt = prompt.replace(placeholder, text)
        return prompt

    def vision_token_ids(self, config: Any) -> list[int]:
        """Token ids that stand for vision features (empty for text-only families)."""
        if not self.is_vlm:
            return []
        ids = sorted({int(v) for n in self.vision_token_attrs if (v := getattr(config, n, None)) is not None})
        if not ids:
            raise UnsupportedModelError(
                f"{self.name} config has none of {self.vision_token_attrs}; cannot locate vision tokens"
            )
        return ids
