"""Dynamic asymmetric uniform quantization with the paper's formula, grouped along the last dim.

s = (c - a) / (2^n - 1), z = -round(a / s), q = clip(round(x / s) + z, 0, 2^n - 1), x^ = s (q - z),
where [a, c] = [r * min, r * max] of the group (SKVQ's convention for the clipping ratio r; the paper leaves it open).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from akvq.quant.packing import pack, packed_len, unpack

SUPPORTED_BITS = (1, 2, 3, 4, 8)
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


@dataclass
class QTensor:
    """Packed codes plus fp16 scale and zero point per group; `n` is the unpacked last-dim length."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    n: int
    float_zero: bool = False  # zero holds the group's (clipped) minimum a: x^ = s q + a

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scale.nbytes + self.zero.nbytes


def check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")


def check_group(n: int, group_size: int) -> None:
    if group_size <= 0 or n % group_size:
        raise ValueError(f"group_size {group_size} must divide the quantized dim {n}")


def _params(
    g: torch.Tensor, bits: int, ratio: torch.Tensor | float, float_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per group; g is [..., groups, group_size] in fp32. The paper's integer zero point
    shifts the grid by up to half a step; `float_zero` stores a = the clipped minimum instead, as KIVI does."""
    qmax = 2**bits - 1
    mn, mx = g.amin(-1), g.amax(-1)
    a, c = mn * ratio, mx * ratio
    s = (c - a) / qmax
    # A constant group (or one clipped to a point) gets s = |v| and z = -sign(v), which reproduces v exactly.
    flat = s <= torch.finfo(torch.float16).tiny
    v = torch.where(flat, mn, a)
    s = torch.where(flat, v.abs().clamp_min(1e-6), s)
    if float_zero:
        return s, torch.where(flat, v, a)
    z = -torch.round(v / s)
    return s, z


def _fake(
    g: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, float_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    s, z = s.unsqueeze(-1), z.unsqueeze(-1)
    if float_zero:
        q = torch.round((g - z) / s).clamp_(0, 2**bits - 1)
        return q, s * q + z
    q = (torch.round(g / s) + z).clamp_(0, 2**bits - 1)
    return q, s * (q - z)


def quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int,
    clip_ratio: float = 1.0,
    clip_search: bool = False,
    float_zero: bool = False,
) -> QTensor:
    """Quantize groups of `group_size` along the last dim. `clip_search` picks, per group, the ratio on
    CLIP_GRID with the least squared error (an improvement over the paper's fixed ratio)."""
    check_bits(bits)
    n = x.shape[-1]
    check_group(n, group_size)
    g = x.float().unflatten(-1, (n // group_size, group_size))
    if clip_search:
        best_err = best_s = best_z = None
        for r in CLIP_GRID:
            s, z = _params(g, bits, r, float_zero)
            # Round the parameters to their stored fp16 precision before scoring them.
            s, z = s.half().float(), z.half().float()
            err = (_fake(g, s, z, bits, float_zero)[1] - g).square().sum(-1)
            if best_err is None:
                best_err, best_s, best_z = err, s, z
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_s = torch.where(better, s, best_s)
                best_z = torch.where(better, z, best_z)
        s, z = best_s, best_z
    else:
        s, z = _params(g, bits, clip_ratio, float_zero)
        s, z = s.half().float(), z.half().float()
    q, _ = _fake(g, s, z, bits, float_zero)
    codes = pack(q.flatten(-2).to(torch.uint8), bits)
    return QTensor(codes, s.half(), z.half(), bits, group_size, n, float_zero)


def dequantize(qt: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    q = unpack(qt.codes, qt.bits, qt.n).float().unflatten(-1, (qt.n // qt.group_size, qt.group_size))
    s, z = qt.scale.float().unsqueeze(-1), qt.zero.float().unsqueeze(-1)
    x = s * q + z if qt.float_zero else s * (q - z)
    return x.flatten(-2).to(dtype)


def fake_quantize(x: torch.Tensor, bits: int, group_size: int, clip_ratio: float = 1.0) -> torch.Tensor:
    """Quantize then dequantize (for calibration and analysis only; the cache stores real packed codes)."""
    return dequantize(quantize(x, bits, group_size, clip_ratio), x.dtype)


def packed_nbytes(n: int, bits: int, group_size: int) -> int:
    """Bytes one row of n elements takes: codes plus fp16 scale and zero per group."""
    return packed_len(n, bits) + 4 * (n // group_size)
