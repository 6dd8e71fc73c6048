"""Dynamic asymmetric uniform quantization with the paper's formula, grouped along the last dim.

s = (c - a) / (2^n - 1), z = -round(a / s), q = clip(round(x / s) + z, 0, 2^n - 1), x^ = s (q - z).
The clipping ratio r picks [a, c] inside the group's [min, max]; the paper leaves how open (`CLIP_MODES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from akvq.errors import ConfigError
from akvq.quant import cpu, gpu
from akvq.quant.packing import pack, unpack

SUPPORTED_BITS = (1, 2, 3, 4, 8)
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
# How r shrinks a group's range [mn, mx]: "center" keeps the midpoint, [m - r h, m + r h] with h the half-range
# (a one-signed group stays where it is); "minmax" is SKVQ's [r mn, r mx], which moves a one-signed group toward
# zero (a group in [10, 11] at r = 0.8 reconstructs in [8, 8.8]).
CLIP_MODES = ("center", "minmax")


@dataclass
class QTensor:
    """Packed codes plus scale and zero point per group; `n` is the unpacked last-dim length. Scale and zero are
    fp16 unless a group needs more (`quantize`): then the whole piece is fp32, and its bytes count as such."""

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


def check_bits(bits: int, what: str = "bits") -> None:
    """The one bit-width check (quantization and every policy): a ConfigError, raised before any model loads."""
    if bits not in SUPPORTED_BITS:
        raise ConfigError(f"{what}={bits} is not supported; choose one of {list(SUPPORTED_BITS)}")


def check_group(n: int, group_size: int) -> None:
    if group_size <= 0 or n % group_size:
        raise ValueError(f"group_size {group_size} must divide the quantized dim {n}")


def check_clip_mode(mode: str) -> None:
    if mode not in CLIP_MODES:
        raise ConfigError(f"clip_mode={mode!r} is not supported; choose one of {list(CLIP_MODES)}")


def _finite_range(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over the finite elements of each group (0 for a group with none): a NaN or inf element
    must not turn its group's scale into NaN, nor stretch it to infinity."""
    ok = torch.isfinite(g)
    mn = torch.where(ok, g, torch.inf).amin(-1)
    mx = torch.where(ok, g, -torch.inf).amax(-1)
    none = ~ok.any(-1)
    return mn.masked_fill(none, 0.0), mx.masked_fill(none, 0.0)


def _params(
    mn: torch.Tensor, mx: torch.Tensor, bits: int, ratio: float, float_zero: bool, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 scale and zero point per group from its finite range. The paper's integer zero point shifts the
    grid by up to half a step; `float_zero` stores a = the clipped minimum instead, as KIVI does."""
    qmax = 2**bits - 1
    if mode == "minmax":
        a, c = mn * ratio, mx * ratio
    else:
        mid, half = mn / 2 + mx / 2, (mx / 2 - mn / 2) * ratio
        a, c = mid - half, mid + half
    s = c / qmax - a / qmax
    # A constant group (or one clipped to a point) is reproduced exactly: float zero a = v with any scale,
    # integer zero s = |v| and z = -sign(v).
    flat = s < torch.finfo(torch.float32).tiny
    if float_zero:
        return torch.where(flat, 1.0, s), torch.where(flat, mn, a)
    v = torch.where(flat, mn, a)
    s = torch.where(flat, v.abs().clamp_min(1e-6), s)
    return s, -torch.round(v / s)


def meta_dtype(
    s: torch.Tensor, z: torch.Tensor, bits: int, float_zero: bool, step: torch.Tensor
) -> torch.dtype:
    """fp16 when rounding every group's scale and zero to fp16 moves its grid by at most a quarter step (a
    constant group: not at all), else fp32 for the whole piece.

    fp16 overflows past 65504 and loses the zero point of a group far from 0 with a small spread (1000 + 1e-3
    noise: a = 1000 is off by up to 0.25, the integer zero a/s = -5e5 is not even finite)."""
    s16, z16 = s.half().float(), z.half().float()
    ds, dz = (s16 - s).abs(), (z16 - z).abs()
    qmax = 2**bits - 1
    moved = dz + qmax * ds if float_zero else (qmax + z.abs()) * ds + s16 * dz
    ok = torch.isfinite(s16) & torch.isfinite(z16) & (moved <= step / 4)
    return torch.float16 if bool(ok.all()) else torch.float32


def _fake(
    g: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, float_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    s, z = s.unsqueeze(-1), z.unsqueeze(-1)
    qmax = 2**bits - 1
    q = torch.round((g - z) / s) if float_zero else torch.round(g / s) + z
    # NaN -> code 0, +-inf -> the ends of the grid (ranges come from finite elements only)
    q = torch.nan_to_num(q, nan=0.0, posinf=qmax, neginf=0.0).clamp_(0, qmax)
    return q, (s * q + z if float_zero else s * (q - z))


def quantize(
    x: torch.Tensor,
    bits: int,
    group_size: int,
    clip_ratio: float = 1.0,
    clip_search: bool = False,
    float_zero: bool = False,
    clip_mode: str = "center",
) -> QTensor:
    """Quantize groups of `group_size` along the last dim. `clip_search` picks, per group, the ratio on
    CLIP_GRID with the least squared error (an improvement over the paper's fixed ratio)."""
    check_bits(bits)
    check_clip_mode(clip_mode)
    n = x.shape[-1]
    check_group(n, group_size)
    grid = CLIP_GRID if clip_search else ()
    xf = x.float()
    fast = cpu.quantize(xf, bits, group_size, clip_ratio, float_zero, clip_mode, grid)
    if fast is None and not grid:  # a GPU: one Triton launch (no clip search there)
        got = gpu.quantize(xf, bits, group_size, clip_ratio, float_zero, clip_mode)
        if got is not None:
            return QTensor(*got, bits, group_size, n, float_zero)
    if fast is not None:
        codes, s, z, ties = fast
        if ties is not None:  # rows whose clip search torch must settle: the torch path on them alone
            sub = _quantize_torch(xf.reshape(-1, n)[ties], bits, group_size, clip_ratio, clip_search,
                                  float_zero, clip_mode)  # fmt: skip
            if sub.scale.dtype != torch.float16:  # then the whole piece takes fp32 metadata: all in torch
                return _quantize_torch(xf, bits, group_size, clip_ratio, clip_search, float_zero, clip_mode)
            codes.view(-1, codes.shape[-1])[ties] = sub.codes
            s.view(-1, s.shape[-1])[ties] = sub.scale
            z.view(-1, z.shape[-1])[ties] = sub.zero
        return QTensor(codes, s, z, bits, group_size, n, float_zero)
    return _quantize_torch(xf, bits, group_size, clip_ratio, clip_search, float_zero, clip_mode)


def _quantize_torch(
    x: torch.Tensor,
    bits: int,
    group_size: int,
    clip_ratio: float,
    clip_search: bool,
    float_zero: bool,
    clip_mode: str,
) -> QTensor:
    """`quantize` in torch: every case, and the reference the C path matches bit for bit (per group: a row's
    result does not depend on the other rows, so a subset of rows gives the same bits)."""
    n = x.shape[-1]
    g = x.float().unflatten(-1, (n // group_size, group_size))
    mn, mx = _finite_range(g)
    if clip_search:
        gf = torch.where(torch.isfinite(g), g, mn.unsqueeze(-1))  # score on finite elements only
        best_err = best_s = best_z = None
        for r in CLIP_GRID:
            s, z = _params(mn, mx, bits, r, float_zero, clip_mode)
            err = (_fake(gf, s, z, bits, float_zero)[1] - gf).square().sum(-1)
            if best_err is None:
                best_err, best_s, best_z = err, s, z
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_s = torch.where(better, s, best_s)
                best_z = torch.where(better, z, best_z)
        s, z = best_s, best_z
    else:
        s, z = _params(mn, mx, bits, clip_ratio, float_zero, clip_mode)
    dt = meta_dtype(s, z, bits, float_zero, (mx - mn) / (2**bits - 1))
    s, z = s.to(dt), z.to(dt)
    q, _ = _fake(g, s.float(), z.float(), bits, float_zero)
    codes = pack(q.flatten(-2).to(torch.uint8), bits)
    return QTensor(codes, s, z, bits, group_size, n, float_zero)


def dequantize(qt: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    q = unpack(qt.codes, qt.bits, qt.n).float().unflatten(-1, (qt.n // qt.group_size, qt.group_size))
    s, z = qt.scale.float().unsqueeze(-1), qt.zero.float().unsqueeze(-1)
    x = s * q + z if qt.float_zero else s * (q - z)
    return x.flatten(-2).to(dtype)


def fake_quantize(
    x: torch.Tensor, bits: int, group_size: int, clip_ratio: float = 1.0, clip_mode: str = "center"
) -> torch.Tensor:
    """Quantize then dequantize (for calibration and analysis only; the cache stores real packed codes)."""
    return dequantize(quantize(x, bits, group_size, clip_ratio, clip_mode=clip_mode), x.dtype)
