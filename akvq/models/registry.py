"""Questions about a model's family, answered from the family registry (`akvq.models.families`).

Everything downstream (roles, prompts, loaders, the runner, cache sizing) asks here instead of poking at model
internals or keeping its own list of families."""

from __future__ import annotations

from typing import Any

from torch import nn

from akvq.errors import UnsupportedModelError
from akvq.models.families import REGISTRY as FAMILIES
from akvq.models.families import Family


def supported() -> str:
    """`idefics3, llama, ...`: the registered family names, for error messages."""
    return ", ".join(sorted(FAMILIES))


def get_family(name: str) -> Family:
    """The registered family `name`, else UnsupportedModelError naming them."""
    if name not in FAMILIES:
        raise UnsupportedModelError(f"unknown family {name!r}; supported families: {supported()}")
    return FAMILIES[name]


def _config_of(model_or_config: Any) -> Any:
    """Accept a model, a config, or an `akvq.models.Loaded`."""
    if (
        hasattr(model_or_config, "model")
        and hasattr(model_or_config, "family")
        and hasattr(model_or_config, "spec")
    ):
        model_or_config = model_or_config.model
    cfg = getattr(model_or_config, "config", model_or_config)
    if not hasattr(cfg, "model_type"):
        raise UnsupportedModelError(
            f"cannot tell the model family of {type(model_or_config).__name__}: it has no `config.model_type`; "
            f"supported families: {supported()}"
        )
    return cfg


def family_of(model_or_config: Any) -> str:
    """Family name of a model/config, else UnsupportedModelError naming the supported families."""
    mt = _config_of(model_or_config).model_type
    for fam in FAMILIES.values():
        if mt in fam.model_types:
            return fam.name
    raise UnsupportedModelError(
        f"model_type {mt!r} is not supported by akvq; supported families: {supported()} "
        f"(family 'llama' covers text-only decoders: {', '.join(sorted(FAMILIES['llama'].model_types))})"
    )


def vision_token_ids(model_or_config: Any) -> list[int]:
    """Token ids that stand for vision features in this model (empty for text-only models)."""
    return get_family(family_of(model_or_config)).vision_token_ids(_config_of(model_or_config))


def text_config(model_or_config: Any) -> Any:
    """The language model's config (num_hidden_layers, heads, head_dim live here for VLMs)."""
    cfg = _config_of(model_or_config)
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def num_layers(model_or_config: Any) -> int:
    return int(text_config(model_or_config).num_hidden_layers)


# Attribute paths to the decoder's ModuleList, most specific first (transformers 5 layouts).
_LAYER_PATHS: tuple[tuple[str, ...], ...] = (
    ("model", "language_model", "layers"),  # LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL
    ("model", "text_model", "layers"),  # Idefics3 / SmolVLM
    ("model", "layers"),  # LlamaForCausalLM and friends
    ("language_model", "model", "layers"),  # older VLM layouts
    ("language_model", "layers"),
    ("layers",),  # a bare decoder model
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of the language model's decoder layers (where the KV cache is written)."""
    for path in _LAYER_PATHS:
        obj: Any = model
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise UnsupportedModelError(
        f"cannot find the decoder layers of {type(model).__name__}; supported families: {supported()}"
    )
