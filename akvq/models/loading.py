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
    if not source.places:
        _check_device(spec)
    source.check(spec)
    return spec


def _check_device(spec: ModelSpec) -> None:
    """For sources that build the model in one piece: a device name the machine has, before anything loads."""
    import torch

    dm = spec.device_map
    if dm is None or dm == "auto":
        return
    allowed = "auto, cpu, cuda, cuda:N"
    try:
        device = torch.device(dm) if isinstance(dm, str) else None
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"model {spec.name!r}: source {spec.source!r} builds its model in one piece; model.device_map takes a "
            f"device ({allowed}), not {dm!r}"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model {spec.name!r}: model.device_map={dm!r} but this machine has no CUDA GPU")


def placement(spec: ModelSpec) -> str | None:
    """The device a source that does not place its model moves it to: `device_map` as a device name, `auto` = the
    GPU when there is one; None = leave it on the CPU."""
    import torch

    dm = spec.device_map
    if dm is None or dm == "cpu" or (dm == "auto" and not torch.cuda.is_available()):
        return None
    return "cuda" if dm == "auto" else str(dm)


def is_vlm(spec: ModelSpec) -> bool | None:
    """Whether the model takes images, known before loading; None when only the weights can tell."""
    family = source_of(spec).family(spec)
    return None if family is None else get_family(family).is_vlm


def load_model(spec: ModelSpec | dict[str, Any] | Any) -> Loaded:
    """Load what `spec` describes (a ModelSpec, a dict or a Hydra node).

    Sets `model._akvq_model_name` (the layer-pattern name) so `akvq.api` can find the model's TSA/PSA pattern.
    Sources that build the model themselves (tiny, synth-vlm: float32 on the CPU, adapters merged there) get
    `model.dtype` and `model.device_map` applied here, after the merge, so neither key is silently ignored."""
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec.from_dict(spec)
    source = source_of(validate_spec(spec))
    loaded = source.load(spec)
    if not source.places:
        if spec.dtype != "auto":
            loaded.model.to(torch_dtype(spec))
        device = placement(spec)
        if device is not None:
            loaded.model.to(device)
    loaded.model._akvq_model_name = spec.pattern_name
    return loaded


__all__ = ["Loaded", "ModelSpec", "is_vlm", "load_model", "validate_spec"]
