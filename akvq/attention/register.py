"""Attention implementations registered with transformers, so any supported model reads the cache without patching.

- "akvq_packed": decode steps read the packed stores: the Triton kernels on CUDA (when triton imports), the C
  kernel on CPU (`packed_cpu`, when a C compiler is there), else vectorized torch (`packed_torch`); a layout no
  fast path folds (SKVQ's channel permutation) is dequantized and attended as in the reference. Prefill and
  multi-token steps go to SDPA over full-precision K/V.
- "akvq_reference": dequantize-then-attend in fp32 (the ground truth of the tests).
Masks are built as for SDPA (boolean, True = attend)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from akvq.attention import packed_cpu
from akvq.attention.packed_torch import packed_decode
from akvq.attention.packed_torch import supports as torch_supports
from akvq.attention.reference import full_kv, reference_decode, store_of

PACKED, REFERENCE = "akvq_packed", "akvq_reference"
_state = {"registered": False, "triton": True, "cpu_kernel": True, "cpu_int8": True}


def _sdpa(module, query, key, value, attention_mask, dropout, scaling, kwargs):
    return sdpa_attention_forward(
        module, query, full_kv(key), full_kv(value), attention_mask, dropout=dropout, scaling=scaling, **kwargs
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
    if query.is_cuda and _state["triton"]:
        from akvq.attention import packed_triton

        if packed_triton.available():
            try:
                out = packed_triton.packed_decode(query, ks, vs, attention_mask, scaling)
                return out.transpose(1, 2).contiguous(), None
            except NotImplementedError:  # 3-bit codes, float zero points: the paths below read them
                pass
    if not query.is_cuda and _state["cpu_kernel"] and packed_cpu.supports(ks, vs):
        out = packed_cpu.packed_decode(query, ks, vs, attention_mask, scaling, int8=_state["cpu_int8"])
    elif torch_supports(ks, vs):
        out = packed_decode(query, ks, vs, attention_mask, scaling)
    else:
        out = reference_decode(query, key, value, attention_mask, scaling)
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
    if store_of(key) is None and query.shape[2] != 1:  # prefill: nothing quantized yet, same as the packed path
        return _sdpa(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = reference_decode(query, key, value, attention_mask, scaling)
    return out.transpose(1, 2).contiguous(), None


def register_attention() -> None:
    """Idempotent: add both implementations (and their SDPA-style masks) to transformers' global registries."""
    if _state["registered"]:
        return
    AttentionInterface.register(PACKED, packed_attention)
    AttentionInterface.register(REFERENCE, reference_attention)
    AttentionMaskInterface.register(PACKED, sdpa_mask)
    AttentionMaskInterface.register(REFERENCE, sdpa_mask)
    _state["registered"] = True


def use_triton(enabled: bool) -> None:
    """Let "akvq_packed" use the Triton kernels on CUDA (default) or force the torch path."""
    _state["triton"] = enabled


def use_cpu_kernel(enabled: bool, int8: bool = True) -> None:
    """Let "akvq_packed" use the C kernel on CPU (default, when it builds) or force the torch path; `int8`: the
    kernel's integer path for 2/4-bit keys (q quantized to int8 per segment; default) or fp32 q."""
    _state["cpu_kernel"] = enabled
    _state["cpu_int8"] = int8


def use_packed(model: Any, cache: Any = None, implementation: str = PACKED) -> None:
    """Switch a loaded model to an akvq attention implementation and tell the cache to hand out packed views.

    `implementation="sdpa"` switches back (and the cache to materialized K/V)."""
    register_attention()
    model.set_attn_implementation(implementation)
    if cache is not None:
        cache.packed_reads = implementation in (PACKED, REFERENCE)


__all__ = ["PACKED", "REFERENCE", "packed_attention", "reference_attention", "register_attention", "use_cpu_kernel", "use_packed", "use_triton"]
