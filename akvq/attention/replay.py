"""Token-by-token decoding of a known continuation in one forward: the attention side of
`AKVQLayer.replay_views`.

Why: teacher-forced perplexity through a quantized cache must read the cache as decoding does, one token a
step (a chunk of tokens fed together would attend to each other in full precision). Feeding 256 tokens one at
a time costs 256 forwards of a 30-layer model; here the query of step t reads, for each earlier position, the
version (dequantized or 16-bit) that step t would have read, so one forward gives the same logits (to float
rounding; `tests/test_fidelity.py` checks it against the step-by-step loop for every method)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from akvq.cache import AKVQCache
from akvq.cache.layer import Replay

REPLAY = "akvq_replay"


def replay_of(x: torch.Tensor) -> Replay | None:
    return getattr(x, "akvq_replay", None)


def _span(r: Replay, deq: bool, total: int) -> tuple[torch.Tensor | None, int, int]:
    """The tensor holding one version of K or V and the positions [lo, hi) it covers."""
    if deq:
        return r.deq, 0, 0 if r.deq is None else r.deq.shape[-2]
    return r.fresh, r.start, total


def _versions(k: Replay, v: Replay, total: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K, V and mask [n, L] over every (K version, V version) pair a position can take: each (query, position)
    is allowed in exactly one pair, so softmax over the allowed entries is the step's own attention."""
    dev = k.fresh.device
    pos = torch.arange(total, device=dev)
    k_deq = pos[None] < k.bounds[:, None]  # [n, T]: step t reads position p dequantized
    v_deq = pos[None] < v.bounds[:, None]
    causal = pos[None] <= (total - n + torch.arange(n, device=dev))[:, None]
    ks, vs, ms = [], [], []
    for kd in (True, False):
        for vd in (True, False):
            kt, k_lo, k_hi = _span(k, kd, total)
            vt, v_lo, v_hi = _span(v, vd, total)
            lo, hi = max(k_lo, v_lo), min(k_hi, v_hi)
            if hi <= lo:
                continue
            ks.append(kt[..., lo - k_lo : hi - k_lo, :])
            vs.append(vt[..., lo - v_lo : hi - v_lo, :])
            sel = (k_deq if kd else ~k_deq) & (v_deq if vd else ~v_deq) & causal
            ms.append(sel[:, lo:hi])
    return torch.cat(ks, -2), torch.cat(vs, -2), torch.cat(ms, -1)


def replay_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    k, v = replay_of(key), replay_of(value)
    if k is None or v is None:  # the prefill, or a cache that is not replaying
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError("replayed decoding takes one sequence (no padding); feed batch rows separately")
    kk, vv, mask = _versions(k, v, key.shape[-2], query.shape[-2])
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        kk.to(query.dtype),
        vv.to(query.dtype),
        attn_mask=mask[None, None],
        scale=scaling,
        enable_gqa=query.shape[1] != kk.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def can_replay(cache: Any) -> bool:
    """Only our cache replays; any other (transformers' QuantizedCache, DynamicCache) would take a multi-token
    forward as one chunk, so its callers decode step by step instead."""
    return isinstance(cache, AKVQCache)


@contextlib.contextmanager
def replayed(model: Any, cache: Any) -> Iterator[None]:
    """Within the block, a multi-token forward through `cache` is token-by-token decoding of those tokens."""
    if not can_replay(cache):
        raise NotImplementedError(
            f"{type(cache).__name__} cannot replay decoding; feed it one token per forward"
        )
    AttentionInterface.register(REPLAY, replay_attention)  # idempotent: a dict entry
    AttentionMaskInterface.register(REPLAY, sdpa_mask)
    before = model.config._attn_implementation
    model.set_attn_implementation(REPLAY)
    cache.replay_steps = True
    try:
        yield
    finally:
        cache.replay_steps = False
        model.set_attn_implementation(before)


__all__ = ["REPLAY", "can_replay", "replay_attention", "replayed"]
