"""Quantization math: error bounds, packing, WHT. Property-based over shapes, dtypes and bit widths."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import needs_triton_interpreter
from hypothesis import given, settings
from hypothesis import strategies as st

from akvq.quant import SUPPORTED_BITS, check_dim, dequantize, fwht, pack, quantize, unpack
from akvq.quant.hadamard import hadamard_matrix
from akvq.quant.packing import packed_len

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from(SUPPORTED_BITS),
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    gexp=st.integers(2, 7),
    dtype=st.sampled_from(DTYPES),
    scale=st.floats(1e-2, 1e3),
    seed=st.integers(0, 2**16),
)
def test_error_bound_without_clipping(bits, rows, groups, gexp, dtype, scale, seed):
    """With ratio 1 every element is within half a step (plus fp16 rounding of scale and zero)."""
    g = 2**gexp
    x = (torch.randn(rows, groups * g, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)
    qt = quantize(x, bits, g, clip_ratio=1.0, float_zero=seed % 2 == 1)
    y = dequantize(qt, torch.float32)
    assert torch.isfinite(y).all()
    xf = x.float().view(rows, groups, g)
    step = (xf.amax(-1) - xf.amin(-1)) / (2**bits - 1)
    # half a step from rounding, one step of slack for the fp16 zero point and scale rounding
    bound = (1.5 * step + 1e-3 * xf.abs().amax(-1) + 1e-6).unsqueeze(-1)
    assert ((y.view(rows, groups, g) - xf).abs() <= bound).all()


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from(SUPPORTED_BITS), value=st.floats(-1e3, 1e3), g=st.sampled_from([8, 64, 128]))
def test_constant_groups_are_exact(bits, value, g):
    x = torch.full((3, g), value)
    for ratio in (1.0, 0.8):
        y = dequantize(quantize(x, bits, g, clip_ratio=ratio))
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, x.half().float(), rtol=2e-3, atol=1e-6)


def test_clipping_ratio_shrinks_range():
    x = torch.linspace(-1, 1, 64).unsqueeze(0)
    # float zero point: the grid spans exactly [0.8 min, 0.8 max]
    y = dequantize(quantize(x, 2, 64, clip_ratio=0.8, float_zero=True))
    assert abs(y.max() - 0.8) < 1e-3 and abs(y.min() + 0.8) < 1e-3
    # the paper's integer zero point shifts the grid by at most half a step
    y = dequantize(quantize(x, 2, 64, clip_ratio=0.8))
    step = 1.6 / 3
    assert y.max() <= 0.8 + step / 2 + 1e-3 and y.min() >= -0.8 - step / 2 - 1e-3
    assert y.max() - y.min() == pytest.approx(1.6, abs=1e-3)


def test_clip_search_never_worse_than_fixed_ratios():
    x = torch.randn(256, 128) * torch.rand(256, 1) * 10
    search = (dequantize(quantize(x, 2, 64, clip_search=True)) - x).square().sum()
    for r in (1.0, 0.8, 0.6):
        assert search <= (dequantize(quantize(x, 2, 64, clip_ratio=r)) - x).square().sum() * 1.0001


def test_codes_really_packed():
    x = torch.randn(10, 128)
    for bits in SUPPORTED_BITS:
        qt = quantize(x, bits, 64)
        assert qt.codes.dtype == torch.uint8
        assert qt.codes.shape[-1] == packed_len(128, bits) == math.ceil(128 * bits / 8)
    # 2-bit payload is 1/8 of the fp16 bytes
    assert quantize(x, 2, 64).codes.nbytes * 8 == x.half().nbytes


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("n", [1, 7, 8, 64, 130])
def test_pack_roundtrip(bits, n):
    codes = torch.randint(0, 2**bits, (3, 5, n), dtype=torch.uint8)
    packed = pack(codes, bits)
    assert packed.shape[-1] == packed_len(n, bits)
    assert torch.equal(unpack(packed, bits, n), codes)


def test_bad_bits_and_groups():
    with pytest.raises(ValueError, match="bits"):
        quantize(torch.randn(2, 64), 5, 64)
    with pytest.raises(ValueError, match="group_size"):
        quantize(torch.randn(2, 64), 2, 48)


@pytest.mark.parametrize("d", [1, 2, 16, 64, 128])
def test_wht_orthonormal_and_self_inverse(d):
    h = hadamard_matrix(d, torch.float64)
    torch.testing.assert_close(h @ h.T, torch.eye(d, dtype=torch.float64))
    x = torch.randn(4, 3, d, dtype=torch.float64)
    torch.testing.assert_close(fwht(fwht(x)), x)
    torch.testing.assert_close(fwht(x), x @ h)
    q, k = torch.randn(5, d, dtype=torch.float64), torch.randn(7, d, dtype=torch.float64)
    torch.testing.assert_close(fwht(q) @ fwht(k).T, q @ k.T)


@pytest.mark.parametrize("d", [16, 128])
def test_wht_as_one_matmul_matches_the_butterfly(d):
    """On a GPU `fwht` is one matmul by the dense H (`_dense`), not the butterfly's 3 log2(d) + 2 launches: the same
    transform in fp32 (the CPU cannot take that branch, so its two pieces are compared here)."""
    from akvq.quant.hadamard import _butterfly, _dense

    x = torch.randn(50, 2, d)
    h = _dense(d, torch.device("cpu"))
    assert h.dtype == torch.float32
    torch.testing.assert_close(x @ h, _butterfly(x), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(h, hadamard_matrix(d, torch.float64).float())


def test_wht_spreads_a_channel_outlier():
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    x[:, 3] += 50
    err_plain = (dequantize(quantize(x, 4, 64)) - x).square().mean()
    err_wht = (fwht(dequantize(quantize(fwht(x), 4, 64))) - x).square().mean()
    assert err_wht < err_plain / 4


@pytest.mark.parametrize("d", [0, 3, 48, 80, 96])
def test_wht_rejects_non_power_of_two(d):
    with pytest.raises(ValueError, match="power-of-two"):
        check_dim(d)


# --- numerics at the edges: metadata never overflows, non-finite values stay in their group -------------------------
def _edge_groups(dtype: torch.dtype, g: int) -> torch.Tensor:
    """Rows of groups: 1e5-scale, 1e-5-scale, a large offset with a tiny spread, constant, one NaN, one inf."""
    gen = torch.Generator().manual_seed(0)
    big = min(1e5, torch.finfo(dtype).max / 4)
    groups = [
        torch.randn(g, generator=gen) * big,
        torch.randn(g, generator=gen) * 1e-5,
        1000 + 1e-3 * torch.randn(g, generator=gen),
        torch.full((g,), 3.3),
        torch.randn(g, generator=gen),
        torch.randn(g, generator=gen) * 7,
    ]
    groups[4][3] = float("nan")
    groups[5][1] = float("inf")
    return torch.cat(groups).unsqueeze(0).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("float_zero", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_edge_groups_reconstruct_finite_within_the_bound(dtype, float_zero, bits):
    g = 16
    x = _edge_groups(dtype, g)
    qt = quantize(x, bits, g, clip_ratio=1.0, float_zero=float_zero)
    assert torch.isfinite(qt.scale).all() and torch.isfinite(qt.zero).all()
    y = dequantize(qt).view(-1, g)
    assert torch.isfinite(y).all()
    xf = x.float().view(-1, g)
    ok = torch.isfinite(xf)
    mn = torch.where(ok, xf, torch.inf).amin(-1, keepdim=True)
    mx = torch.where(ok, xf, -torch.inf).amax(-1, keepdim=True)
    step = (mx - mn) / (2**bits - 1)
    # half a step of rounding plus half a step of integer-zero shift; fp32 arithmetic on top
    bound = step + 1e-6 * xf.abs().nan_to_num(0, 0, 0).amax(-1, keepdim=True) + 1e-30
    assert ((y - xf).abs() <= bound)[ok].all()
    # a non-finite element lands on the group's grid, and its neighbours are unaffected
    assert ((y >= mn - bound) & (y <= mx + bound)).all()
    clean = x.clone()
    clean.view(-1, g)[4, 3] = clean.view(-1, g)[4, 2]
    clean.view(-1, g)[5, 1] = clean.view(-1, g)[5, 0]
    y_clean = dequantize(quantize(clean, bits, g, clip_ratio=1.0, float_zero=float_zero)).view(-1, g)
    rows = [0, 1, 2, 3]
    torch.testing.assert_close(y[rows], y_clean[rows], rtol=0, atol=0)


def test_large_offset_small_spread_keeps_its_zero_point():
    """The audit's case: fp16 gave zero = -inf. Now the piece keeps fp32 metadata (counted in its bytes)."""
    x = 1000 + 1e-3 * torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    for fz in (False, True):
        qt = quantize(x, 2, 16, float_zero=fz)
        assert qt.zero.dtype == torch.float32 and torch.isfinite(qt.zero).all()
        assert qt.nbytes == qt.codes.nbytes + 2 * 4 * 16
        step = (x.view(4, 4, 16).amax(-1) - x.view(4, 4, 16).amin(-1)) / 3
        assert ((dequantize(qt) - x).view(4, 4, 16).abs() <= step.unsqueeze(-1) + 1e-4).all()
    # ordinary data keeps fp16 metadata
    assert quantize(torch.randn(4, 64), 2, 16).scale.dtype == torch.float16


@pytest.mark.parametrize("float_zero", [False, True])
def test_center_clipping_keeps_a_one_signed_group_in_place(float_zero):
    """[r min, r max] moved a group in [10, 11] to 8.8 at r = 0.8; clipping around the centre keeps it there."""
    x = (10 + torch.linspace(0, 1, 16)).unsqueeze(0)
    y = dequantize(quantize(x, 2, 16, clip_ratio=0.8, float_zero=float_zero))
    assert (y - x).abs().max() < 0.25
    old = dequantize(quantize(x, 2, 16, clip_ratio=0.8, float_zero=float_zero, clip_mode="minmax"))
    assert (old - x).abs().max() > 1.0  # the old rule, kept as clip_mode="minmax"
    with pytest.raises(ValueError, match="clip_mode"):
        quantize(x, 2, 16, clip_mode="zero")


_TRITON_QUANT = """
import sys
sys.path.insert(0, {scripts!r})
from gpu_kernels import quantizer
from akvq.quant import gpu
assert gpu.available()
bad, lines = quantizer("cpu")
assert bad == 0, [line for line in lines if "[0, 0, 0]" not in line]
print("QUANT_OK")
"""


@needs_triton_interpreter
def test_triton_quantizer_matches_the_torch_code_bit_for_bit() -> None:
    """The GPU's one-launch quantizer (`akvq.quant.gpu`) against the torch code in the interpreter
    (TRITON_INTERPRET=1 before triton is imported: a subprocess), by the GPU script's own check
    (`scripts/gpu_kernels.py::quantizer`): codes, fp16 scales and zeros equal over bits, groups, both zero points and
    clip modes, with outliers, a constant group, NaN/inf and rounding ties; a piece whose metadata needs fp32 is
    handed back (None) for the torch code to decide."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            _TRITON_QUANT.format(scripts=str(Path(__file__).resolve().parents[1] / "scripts")),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert "QUANT_OK" in p.stdout, p.stderr[-3000:]
