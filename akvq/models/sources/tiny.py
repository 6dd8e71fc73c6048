"""Tiny random-weight models with real processors, built offline in a second: the test bed for every family.

Each family module supplies its own tiny parts (`Family.tiny`); this source seeds and assembles them."""

from __future__ import annotations

import torch

from akvq.errors import ConfigError
from akvq.models.families import REGISTRY
from akvq.models.sources import Source
from akvq.models.spec import Loaded, ModelSpec
from akvq.quant.hadamard import is_power_of_two


def kinds() -> tuple[str, ...]:
    """Families that have a tiny builder."""
    return tuple(sorted(n for n, f in REGISTRY.items() if f.tiny is not None))


def check(spec: ModelSpec) -> None:
    kind = spec.tiny_kind or spec.family
    if kind not in kinds():
        raise ConfigError(
            f"model {spec.name!r}: tiny models need `tiny_kind` in {', '.join(kinds())}, got {kind!r}"
        )
    if spec.family is not None and spec.family != kind:
        raise ConfigError(
            f"model {spec.name!r}: tiny_kind {kind!r} builds family {kind!r}, not {spec.family!r}"
        )
    hd = spec.tiny_head_dim
    if hd is not None and (not is_power_of_two(hd) or not REGISTRY[kind].tiny_head_dim):
        raise ConfigError(
            f"model {spec.name!r}: tiny_head_dim must be a power of two (the WHT needs one) and is not "
            f"supported for {kind} (its rotary sections fix head_dim), got {hd}"
        )


def build_tiny(
    kind: str, seed: int = 0, attn_implementation: str = "sdpa", head_dim: int | None = None
) -> Loaded:
    """A fresh tiny random model of family `kind` (same seed, same weights) with its real tokenizer/processor.

    `head_dim`: the text model's head size, default 16; the benchmark uses 128, the size of LLaVA-1.5-7B's heads,
    because per-group metadata and kernel shapes depend on it. Tokenizer and processor objects are shared."""
    if kind not in kinds():
        raise ConfigError(f"unknown tiny model kind {kind!r}; choose one of {', '.join(kinds())}")
    build = REGISTRY[kind].tiny(head_dim)  # type: ignore[misc]
    build.config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build.model_class(build.config)
    model.eval()
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = build.tokenizer.pad_token_id
    spec = ModelSpec(name=f"tiny-{kind.replace('_', '-')}", source="tiny", tiny_kind=kind, family=kind)
    model._akvq_model_name = spec.name  # read by akvq.api to find the layer pattern
    return Loaded(model=model, tokenizer=build.tokenizer, processor=build.processor, family=kind, spec=spec)


def load(spec: ModelSpec) -> Loaded:
    loaded = build_tiny(
        spec.tiny_kind or spec.family or "",
        attn_implementation=spec.attn_implementation,
        head_dim=spec.tiny_head_dim,
    )
    loaded.spec = spec
    return loaded


SOURCE = Source(name="tiny", load=load, check=check, family=lambda spec: spec.tiny_kind or spec.family)
