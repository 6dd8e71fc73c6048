"""Attention implementations registered with transformers, so any supported model reads the cache without patching.

- "akvq_packed": decode steps read the packed stores through the path `akvq.attention.paths.select` picks from
  the cache's one setting (`attention = auto | reference | packed_torch | packed_c | triton`); a layout the
  chosen path cannot read goes to the reference, logged. Prefill and multi-token steps go to SDPA over
  full-precision K/V.
- "akvq_reference": dequantize-then-attend in fp32 (the ground truth of the tests).
Masks are built as for SDPA (boolean, True = attend)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from akvq.attention.paths import check_setting, select
from akvq.attention.reference import full_kv, reference_decode, store_of

PACKED, REFERENCE = "akvq_packed", "akvq_reference"
_registered: list[bool] = []  # transformers' registries are process-wide; register once


def _sdpa(module, query, key, value, attention_mask, dropout, scaling, kwargs):
    return sdpa_attention_forward(
        module,
        query,
        full_kv(key),
        full_kv(value),
        attention_mask,
        dropout=dropout,
        scaling=scaling,
        **kwargs,
    )


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    ks, vs = store_of(key), store_of(value)
    if ks is None or vs is None or query.shape[2] != 1:
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    path = select(getattr(key, "akvq_attention", "auto"), ks, vs, query.is_cuda)
    if path.decode is None:
        out = reference_decode(query, key, value, attention_mask, scaling)
    else:
        out = path.decode(query, ks, vs, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def reference_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if (
        store_of(key) is None and query.shape[2] != 1
    ):  # prefill: nothing quantized yet, same as the packed path
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = reference_decode(query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Idempotent: add both implementations (and their SDPA-style masks) to transformers' global registries."""
    if _registered:
        return
    AttentionInterface.register(PACKED, packed_attention)
    AttentionInterface.register(REFERENCE, reference_attention)
    AttentionMaskInterface.register(PACKED, sdpa_mask)
    AttentionMaskInterface.register(REFERENCE, sdpa_mask)
    _registered.append(True)


# The benchmark configs name transformers implementations; they mean these settings.
_IMPLEMENTATION_NAMES = {PACKED: "auto", REFERENCE: "reference"}


def use_packed(model: Any, cache: Any = None, attention: str = "auto") -> None:
    """Point a loaded model and its cache at one decode path: `attention` is `auto | reference | packed_torch |
    packed_c | triton` (also the implementation names `akvq_packed` = auto, `akvq_reference` = reference), or
    `sdpa` to switch back (the cache then hands out materialized K/V)."""
    register_attention()
    setting = (
        "sdpa" if attention == "sdpa" else check_setting(_IMPLEMENTATION_NAMES.get(attention, attention))
    )
    model.set_attn_implementation({"sdpa": "sdpa", "reference": REFERENCE}.get(setting, PACKED))
    if cache is not None:
        cache.packed_reads = setting != "sdpa"
        cache.attention = "auto" if setting == "sdpa" else setting


__all__ = [
    "PACKED",
    "REFERENCE",
    "packed_attention",
    "reference_attention",
    "register_attention",
    "use_packed",
]
