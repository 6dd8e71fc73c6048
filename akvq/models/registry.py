"""Model families akvq knows: which config `model_type`s they cover and where their decoder layers live.

Everything downstream (roles, pivots, cache sizing) asks this module instead of poking at model internals,
so a new family is one entry here plus its role rule in `akvq.saliency.roles`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from akvq.errors import UnsupportedModelError

FAMILIES: tuple[str, ...] = ("llama", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")
VISION_FAMILIES: frozenset[str] = frozenset(FAMILIES) - {"llama"}

# Text-only decoders with the Llama-style layer layout; all handled as family "llama".
TEXT_MODEL_TYPES: frozenset[str] = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma",
        "gemma2",
        "smollm3",
        "olmo",
        "olmo2",
        "granite",
        "starcoder2",
    }
)
_VLM_MODEL_TYPES: dict[str, str] = {
    "llava": "llava",
    "llava_next": "llava_next",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",  # SmolVLM is Idefics3's architecture under another name
}


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
            f"supported families: {', '.join(FAMILIES)}"
        )
    return cfg


def family_of(model_or_config: Any) -> str:
    """Family name of a model/config: one of FAMILIES, else UnsupportedModelError naming them."""
    cfg = _config_of(model_or_config)
    mt = cfg.model_type
    if mt in _VLM_MODEL_TYPES:
        return _VLM_MODEL_TYPES[mt]
    if mt in TEXT_MODEL_TYPES:
        return "llama"
    raise UnsupportedModelError(
        f"model_type {mt!r} is not supported by akvq; supported families: {', '.join(FAMILIES)} "
        f"(family 'llama' covers text-only decoders: {', '.join(sorted(TEXT_MODEL_TYPES))})"
    )


def is_vision_family(family: str) -> bool:
    return family in VISION_FAMILIES


def text_config(model_or_config: Any) -> Any:
    """The language model's config (num_hidden_layers, heads, head_dim live here for VLMs)."""
    cfg = _config_of(model_or_config)
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def num_layers(model_or_config: Any) -> int:
    return int(text_config(model_or_config).num_hidden_layers)


def head_dim(model_or_config: Any) -> int:
    tc = text_config(model_or_config)
    hd = getattr(tc, "head_dim", None)
    return int(hd) if hd else int(tc.hidden_size // tc.num_attention_heads)


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
        f"cannot find the decoder layers of {type(model).__name__}; supported families: {', '.join(FAMILIES)}"
    )
