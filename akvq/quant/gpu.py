"""The Triton fast path of `quantize` on a GPU: one launch for a piece, the same bits as its torch code.

Why: a decode step quantizes one token per store, and the torch code is ~70 operator launches a call (its range,
scale, zero point, fp16 check, rounding and packing; `akvq.bench.syncs`' counts on the CPU): two calls a layer,
~140 launches, ~1 ms of host time a layer on a GPU. This kernel does a piece in one launch and still decides fp16
against fp32 metadata as the torch code does: it flags each group whose fp16 scale or zero would move its grid by
more than a quarter step, and the caller (`uniform.quantize`) reads the flags once; when any is set the torch code
quantizes the piece (fp32 metadata). Covers the per-token case of every method without a clip search: 1/2/4/8 bits,
either zero point, either clip mode. Checked bit for bit against the torch code in the interpreter
(`tests/test_quant.py`) and on a GPU by `scripts/gpu_kernels.py`; compiled without FMA contraction, so each fp32
operation rounds as torch's does (divisions through `tl.div_rn`: Triton's `/` on fp32 may be approximate)."""

from __future__ import annotations

import functools
import os

import torch

from akvq.quant.hadamard import is_power_of_two

try:  # triton is optional: the torch code covers every device
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Triton imports and kernels can run: a CUDA device, or the CPU interpreter (TRITON_INTERPRET=1, tests)."""
    if triton is None or os.environ.get("AKVQ_QUANT_TRITON", "1") == "0":
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _div(a, b):
        """IEEE division rounded to nearest, as torch's: Triton's `/` on fp32 may compile to an approximate one."""
        return tl.div_rn(a, b)

    @triton.jit
    def _round_half_even(x):
        """torch.round: halves to the even neighbour (exact for |x| < 2^24; larger fp32 values are integers)."""
        f = tl.floor(x)
        d = x - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
        up = (d > 0.5) | ((d == 0.5) & odd)
        r = tl.where(up, f + 1.0, f)
        return tl.where(tl.abs(x) < 16777216.0, r, x)

    @triton.jit
    def _quantize_kernel(
        x_ptr,
        codes_ptr,
        scale_ptr,
        zero_ptr,
        bad_ptr,
        n,
        ratio,
        GS: tl.constexpr,
        BITS: tl.constexpr,
        FZ: tl.constexpr,
        CENTER: tl.constexpr,
    ):
        """One program per (row, group): the group's finite range, scale and zero point (`uniform._params`),
        fp16 metadata and its check (`uniform.meta_dtype`), codes (`uniform._fake`), packed (`packing.pack`)."""
        row = tl.program_id(0)
        grp = tl.program_id(1)
        ngroups = n // GS
        qmax: tl.constexpr = (1 << BITS) - 1
        i = tl.arange(0, GS)
        x = tl.load(x_ptr + row.to(tl.int64) * n + grp * GS + i)
        fin = (x == x) & (tl.abs(x) != float("inf"))
        mn = tl.min(tl.where(fin, x, float("inf")), axis=0)
        mx = tl.max(tl.where(fin, x, -float("inf")), axis=0)
        anyf = tl.max(fin.to(tl.int32), axis=0) > 0
        mn = tl.where(anyf, mn, 0.0)
        mx = tl.where(anyf, mx, 0.0)
        if CENTER:
            mid = _div(mn, 2.0) + _div(mx, 2.0)
            half = (_div(mx, 2.0) - _div(mn, 2.0)) * ratio
            a = mid - half
            c = mid + half
        else:
            a = mn * ratio
            c = mx * ratio
        s = _div(c, qmax * 1.0) - _div(a, qmax * 1.0)
        flat = s < 1.1754943508222875e-38
        if FZ:
            s = tl.where(flat, 1.0, s)
            z = tl.where(flat, mn, a)
        else:
            v = tl.where(flat, mn, a)
            s = tl.where(flat, tl.maximum(tl.abs(v), 1e-6), s)
            z = -_round_half_even(_div(v, s))
        s16 = s.to(tl.float16)
        z16 = z.to(tl.float16)
        sf = s16.to(tl.float32)
        zf = z16.to(tl.float32)
        ds = tl.abs(sf - s)
        dz = tl.abs(zf - z)
        if FZ:
            moved = dz + qmax * ds
        else:
            moved = (qmax + tl.abs(z)) * ds + sf * dz
        step = _div(mx - mn, qmax * 1.0)
        ok = (sf == sf) & (zf == zf) & (tl.abs(sf) != float("inf")) & (tl.abs(zf) != float("inf"))
        ok = ok & (moved <= _div(step, 4.0))
        if FZ:
            q = _round_half_even(_div(x - zf, sf))
        else:
            q = _round_half_even(_div(x, sf)) + zf
        q = tl.where(q == q, q, 0.0)  # NaN -> 0, +-inf -> the ends of the grid (clamped below)
        q = tl.minimum(tl.maximum(q, 0.0), qmax * 1.0).to(tl.int32)
        gi = row.to(tl.int64) * ngroups + grp
        tl.store(scale_ptr + gi, s16)
        tl.store(zero_ptr + gi, z16)
        tl.store(bad_ptr + gi, (~ok).to(tl.int8))
        PER: tl.constexpr = 8 // BITS
        NB: tl.constexpr = GS // PER
        shifts = (tl.arange(0, PER) * BITS).to(tl.int32)
        byte = tl.sum(tl.reshape(q, (NB, PER)) << shifts[None, :], axis=1)
        tl.store(codes_ptr + row.to(tl.int64) * (n // PER) + grp * NB + tl.arange(0, NB), byte.to(tl.uint8))


def quantize(
    g: torch.Tensor, bits: int, group_size: int, ratio: float, float_zero: bool, clip_mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Codes, fp16 scale and fp16 zero of `uniform.quantize` (no clip search) for fp32 `g` [..., n] on a GPU; None
    when this path does not apply (the CPU, 3-bit codes, a group that is not a power of two, or a group whose
    metadata needs fp32: one read of the flags decides)."""
    if (
        not g.is_cuda
        and os.environ.get("TRITON_INTERPRET") != "1"
        or bits not in (1, 2, 4, 8)
        or clip_mode not in ("center", "minmax")
        or not is_power_of_two(group_size)
        or group_size < 8 // bits
        or g.dtype != torch.float32
        or g.requires_grad
        or not g.numel()
        or not available()
    ):
        return None
    n = g.shape[-1]
    x = g.contiguous().view(-1, n)
    rows, ngroups = x.shape[0], n // group_size
    codes = torch.empty(*g.shape[:-1], n * bits // 8, dtype=torch.uint8, device=g.device)
    scale = torch.empty(*g.shape[:-1], ngroups, dtype=torch.float16, device=g.device)
    zero = torch.empty_like(scale)
    bad = torch.empty(rows, ngroups, dtype=torch.int8, device=g.device)
    _quantize_kernel[(rows, ngroups)](
        x,
        codes,
        scale,
        zero,
        bad,
        n,
        float(ratio),
        GS=group_size,
        BITS=bits,
        FZ=bool(float_zero),
        CENTER=clip_mode == "center",
        enable_fp_fusion=False,
    )
    if bool(bad.any()):  # the one read: fp16 metadata does not hold this piece, the torch code decides
        return None
    return codes, scale, zero


__all__ = ["available", "quantize"]
