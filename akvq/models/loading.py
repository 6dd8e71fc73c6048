"""Load a model + tokenizer/processor from a `ModelSpec` (Hydra group `model`) through its source
(`akvq.models.sources`: hub ids and local dirs, GGUF, tiny random, ...).

Validation happens first (`validate_spec`) so a typo costs milliseconds; missing weights give one
`MissingDataError` that says what to download and which config key to point at it."""

from __future__ import annotations

from typing import Any

from akvq.errors import ConfigError, UnsupportedModelError
from akvq.models.registry import FAMILIES, get_family, supported
from akvq.models.sources import SOURCES, Source
from akvq.models.spec import Loaded, ModelSpec, torch_dtype

DTYPES: tuple[str, ...] = ("auto", "float16", "bfloat16", "float32")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = (
    "sdpa",
    "eager",
    "flash_attention_2",
    "flash_attention_3",
    "flex_attention",
)


def source_of(spec: ModelSpec) -> Source:
    if spec.source not in SOURCES:
        raise ConfigError(
            f"model {spec.name!r}: unknown source {spec.source!r}; choose one of {', '.join(SOURCES)}"
        )
    return SOURCES[spec.source]


def validate_spec(spec: ModelSpec) -> ModelSpec:
    """Cheap checks before any download/load: known source and its keys, family, dtype, attention."""
    source = source_of(spec)
    unknown = sorted(set(spec.options) - set(source.keys))
    if unknown:
        raise ConfigError(
            f"model {spec.name!r}: unknown model config keys {unknown} for source {spec.source!r}"
        )
    if spec.family is not None and spec.family not in FAMILIES:
        raise UnsupportedModelError(
            f"model {spec.name!r}: unknown family {spec.family!r}; supported families: {supported()}"
        )
    if spec.dtype not in DTYPES:
        raise ConfigError(
            f"model {spec.name!r}: unknown dtype {spec.dtype!r}; choose one of {', '.join(DTYPES)}"
        )
    if spec.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"model {spec.name!r}: unknown attn_implementation {spec.attn_implementation!r}; "
            f"choose one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    source.check(spec)
    return spec


def is_vlm(spec: ModelSpec) -> bool | None:
    """Whether the model takes images, known before loading; None when only the weights can tell."""
    family = source_of(spec).family(spec)
    return None if family is None else get_family(family).is_vlm


def load_model(spec: ModelSpec | dict[str, Any] | Any) -> Loaded:
    """Load what `spec` describes (a ModelSpec, a dict or a Hydra node).

    Sets `model._akvq_model_name` (the layer-pattern name) so `akvq.api` can find the model's TSA/PSA pattern.
    A dtype other than `auto` is the model's dtype whatever the source built (the tiny and synth-vlm sources build
    in float32 and merge adapters there: casting after the merge keeps `model.dtype` from being silently ignored)."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_dict(spec)
    loaded = source_of(validate_spec(spec)).load(spec)
    if spec.dtype != "auto":
        dtype = torch_dtype(spec)
        if getattr(loaded.model, "dtype", dtype) != dtype:
            loaded.model.to(dtype)
    loaded.model._akvq_model_name = spec.pattern_name
    return loaded


__all__ = ["Loaded", "ModelSpec", "is_vlm", "load_model", "validate_spec"]
