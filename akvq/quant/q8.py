"""Symmetric 8-bit codes with one fp16 scale per group of channels (llama.cpp's q8_0 block), for the recent
window of `window_bits: 8` (`akvq.cache.store`); the asymmetric low-bit quantizer is `uniform.py`."""

from __future__ import annotations

import torch


def quantize_q8(x: torch.Tensor, g: int) -> torch.Tensor:
    """x [..., D] -> int8 [..., D + 2 D/g]: per group of g channels, codes round(x / d) in [-127, 127] with
    d = fp16(absmax / 127), followed by the groups' fp16 scales as bytes (a q8_0 block's contents, one tensor).

    Why one tensor: every field-wise operation on the tail (append, slice, gather along the batch, the benchmark's
    save/load) then carries codes and scales together unchanged. Why the fp16-rounded d for the codes: the
    reconstruction is code x (stored d), so rounding against it is the nearest point of the stored grid. A NaN
    codes as 0, +-inf as +-127; d comes from the finite elements and saturates at fp16's max (|x| <= 8.3e6)."""
    xf = x.float().unflatten(-1, (x.shape[-1] // g, g))
    amax = torch.where(torch.isfinite(xf), xf.abs(), 0.0).amax(-1, keepdim=True)
    d = (amax / 127).clamp(max=torch.finfo(torch.float16).max).to(torch.float16)
    df = d.float()
    q = torch.where(df > 0, xf / df.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    q = torch.nan_to_num(q, nan=0.0).round().clamp(-127, 127).to(torch.int8)
    return torch.cat([q.flatten(-2), d.squeeze(-1).view(torch.int8)], -1)


def dequantize_q8(t: torch.Tensor, d: int, g: int, dtype: torch.dtype) -> torch.Tensor:
    """The values of `quantize_q8`'s output [..., D + 2 D/g] as [..., D] in dtype (computed in fp32)."""
    scale = t[..., d:].contiguous().view(torch.float16).float()
    return (t[..., :d].float().unflatten(-1, (d // g, g)) * scale.unsqueeze(-1)).flatten(-2).to(dtype)
