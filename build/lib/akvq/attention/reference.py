"""The dequantize-then-attend reference: what every fast path must match (within fp tolerance).

It reads the same stand-ins as the packed path (`AKVQLayer.packed_views`) but rebuilds full K/V with
`TensorStore.materialize`, then attends in fp32 with explicit softmax, so the tests compare against plain math."""

from __future__ import annotations

import torch

from akvq.attention.packed_torch import apply_mask
from akvq.cache.store import TensorStore


def store_of(x: torch.Tensor) -> TensorStore | None:
    """The TensorStore behind a stand-in returned by `AKVQLayer.packed_views`, else None."""
    return getattr(x, "akvq_store", None)


def full_kv(x: torch.Tensor) -> torch.Tensor:
    """A real tensor for K or V: the stand-in's store materialized, or x itself."""
    st = store_of(x)
    return x if st is None else st.materialize(torch.float32)


def reference_decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """softmax(q K^T * scaling + mask) V in fp32 with GQA by grouping; returns [B, Hq, Lq, D] in query's dtype."""
    k, v = full_kv(key).float(), full_kv(value).float()
    b, hq, lq, d = query.shape
    h = k.shape[1]
    q = query.float().view(b, h, hq // h, lq, d)
    s = torch.einsum("bhgqd,bhtd->bhgqt", q, k) * scaling
    t = s.shape[-1]
    if attention_mask is not None:
        m = attention_mask[..., -t:]
        m = m.reshape(m.shape[0], 1, 1, m.shape[-2], t)
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m.float()
    elif lq > 1:  # no mask given: causal, the queries being the last lq positions
        causal = torch.ones(lq, t, dtype=torch.bool, device=s.device).tril(t - lq)
        s = s.masked_fill(~causal, float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("bhgqt,bhtd->bhgqd", p, v)
    return o.reshape(b, hq, lq, v.shape[-1]).to(query.dtype)


__all__ = ["apply_mask", "full_kv", "reference_decode", "store_of"]
