"""The C fast path of quantize/fwht (`akvq/quant/cpu.py`) against the torch code it replaces: bit for bit."""

from __future__ import annotations

import pytest
import torch

from akvq.quant import cpu, hadamard, uniform

pytestmark = pytest.mark.skipif(cpu._lib() is None, reason=f"quant C library: {cpu.status()}")


def _torch(fn, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
    mp = pytest.MonkeyPatch()
    mp.setattr(cpu, "_lib", lambda: None)
    try:
        return fn(*a, **kw)
    finally:
        mp.undo()


def _inputs(seed: int, rows: int, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, n, generator=g)
    ties = torch.randint(-8, 9, (rows, n), generator=g).float() / 4  # values on the grid: rounding ties
    skew = base.abs() * 3 + 2  # one-signed groups
    tiny = base * 1e-30  # subnormal spreads
    mixed = base.clone()
    mixed[0] = 5.0  # a constant row
    mixed[1, : n // 2] = 0.0
    heavy = base * torch.exp(2 * torch.randn(rows, n, generator=g))  # outliers
    return [base, ties, skew, tiny, mixed, heavy, base * 1e4]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("group", [16, 64, 128])
@pytest.mark.parametrize("float_zero", [False, True])
@pytest.mark.parametrize("mode,ratio", [("center", 0.8), ("center", 1.0), ("minmax", 0.8), ("center", None)])
def test_quantize_bit_identical(
    bits: int, group: int, float_zero: bool, mode: str, ratio: float | None
) -> None:
    """ratio None: the clip search over CLIP_GRID."""
    ran = 0
    search = ratio is None
    grid = uniform.CLIP_GRID if search else ()
    for seed in range(2):
        for x in _inputs(seed, 12, 256):
            fast = cpu.quantize(x, bits, group, ratio or 1.0, float_zero, mode, grid)
            ref = _torch(uniform.quantize, x, bits, group, ratio or 1.0, search, float_zero, mode)
            got = uniform.quantize(x, bits, group, ratio or 1.0, search, float_zero, mode)  # the public entry
            assert torch.equal(got.codes, ref.codes) and torch.equal(got.scale, ref.scale)
            assert torch.equal(got.zero, ref.zero) and got.zero.dtype == ref.zero.dtype  # -0.0 == 0.0
            if fast is None:  # the torch path's call: fp32 metadata
                assert ref.scale.dtype == torch.float32
                continue
            ran += 1
            codes, scale, zero, ties = fast
            assert ties is None or search  # only a clip search has near-ties
            done = torch.ones(codes.shape[0], dtype=torch.bool)
            if ties is not None:
                done[ties] = False  # rows torch settles (compared through the public entry above)
            assert torch.equal(codes[done], ref.codes[done])
            assert torch.equal(scale[done], ref.scale[done])
            assert torch.equal(zero[done], ref.zero[done])
    assert ran >= 8


def test_the_vector_clip_search_equals_the_scalar_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AVX2 error sums (chosen at run time) and the scalar ones pick the same ratios and flag the same
    near-ties: the build without the vector search gives the same bits on the same inputs."""
    scalar, why = cpu.load_build(("-DAKVQ_SEARCH_SCALAR",))
    assert scalar is not None, why
    ran = 0
    for x in _inputs(5, 40, 256):
        for float_zero in (False, True):
            vec = cpu.quantize(x, 2, 64, 1.0, float_zero, "center", uniform.CLIP_GRID)
            monkeypatch.setattr(cpu, "_lib", lambda: scalar)
            ref = cpu.quantize(x, 2, 64, 1.0, float_zero, "center", uniform.CLIP_GRID)
            monkeypatch.undo()
            assert (vec is None) == (ref is None)
            if vec is None:
                continue
            assert (vec[3] is None) == (ref[3] is None)
            assert vec[3] is None or torch.equal(vec[3], ref[3])
            done = torch.ones(x.shape[0], dtype=torch.bool)
            if vec[3] is not None:
                done[vec[3]] = False  # a near-tie row's outputs are unset: the caller fills them from torch
            assert all(torch.equal(a[done], b[done]) for a, b in zip(vec[:3], ref[:3], strict=True))
            ran += int(done.sum())
    assert ran > 100


def test_clip_search_near_ties_go_to_torch_row_by_row() -> None:
    """Values on the grid make the clip search's errors tie: those rows (only) are settled in torch, and the
    spliced result equals the torch path's over the whole piece bit for bit, on one thread and on several."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 192, generator=g)
    x[::7] = torch.randint(-8, 9, (86, 192), generator=g).float() / 4  # every 7th row on a grid
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fast = cpu.quantize(x, 2, 64, 1.0, False, "center", uniform.CLIP_GRID)
            assert fast is not None and fast[3] is not None
            ties = fast[3]
            assert 0 < ties.numel() < x.shape[0] and bool((ties % 7 == 0).all())
            got = uniform.quantize(x, 2, 64, clip_search=True)
            ref = _torch(uniform.quantize, x, 2, 64, clip_search=True)
            assert torch.equal(got.codes, ref.codes) and torch.equal(got.scale, ref.scale)
            assert torch.equal(got.zero, ref.zero)
    finally:
        torch.set_num_threads(before)


def test_quantize_falls_back() -> None:
    """Non-finite elements and groups whose fp16 metadata would move the grid go to the torch path."""
    x = torch.randn(4, 64)
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    assert cpu.quantize(x, 2, 16, 1.0, False, "center") is None
    got, ref = uniform.quantize(x, 2, 16), _torch(uniform.quantize, x, 2, 16)
    assert torch.equal(got.codes, ref.codes) and torch.equal(got.scale, ref.scale)
    far = 1000 + 1e-3 * torch.randn(2, 16)  # integer zero a/s ~ -5e5: not an fp16 number
    assert cpu.quantize(far, 2, 16, 1.0, False, "center") is None
    assert uniform.quantize(far, 2, 16).zero.dtype == torch.float32
    assert cpu.quantize(x.double(), 2, 16, 1.0, False, "center") is None  # fp32 only
    assert cpu.quantize(x, 3, 16, 1.0, False, "center") is None  # 3-bit packing stays in torch


@pytest.mark.parametrize("d", [1, 2, 16, 64, 128])
def test_fwht_bit_identical(d: int) -> None:
    x = torch.randn(5, 3, d) * 10
    fast = cpu.fwht(x)
    assert fast is not None and fast.shape == x.shape
    assert torch.equal(fast, _torch(hadamard.fwht, x))
    assert torch.equal(hadamard.fwht(x), fast)
    t = x.transpose(0, 1)  # not contiguous
    assert torch.equal(hadamard.fwht(t), _torch(hadamard.fwht, t))
    assert cpu.fwht(x.half()) is None and cpu.fwht(x.requires_grad_()) is None


def test_switch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKVQ_QUANT_C", "0")
    cpu._lib.cache_clear()
    try:
        assert cpu._lib() is None and "AKVQ_QUANT_C=0" in cpu.status()
    finally:
        monkeypatch.delenv("AKVQ_QUANT_C")
        cpu._lib.cache_clear()
    assert cpu._lib() is not None


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_split_rows_bit_identical(threads: int) -> None:
    """Above PAR_MIN_ELEMS the rows are split over OpenMP threads: the same bits as one thread and as torch, and a
    bad row anywhere still sends the whole call to torch."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(333, 192) * 3  # 63,936 elements: past the threshold
        assert torch.equal(cpu.fwht(x.view(333, 3, 64)), _torch(hadamard.fwht, x.view(333, 3, 64)))
        for grid, search in (((), False), (uniform.CLIP_GRID, True)):
            ref = _torch(uniform.quantize, x, 2, 64, 0.8, search, False, "center")
            got = uniform.quantize(x, 2, 64, 0.8, search, False, "center")  # near-ties: those rows in torch
            assert torch.equal(got.codes, ref.codes) and torch.equal(got.scale, ref.scale)
            assert torch.equal(got.zero, ref.zero)
            fast = cpu.quantize(x, 2, 64, 0.8, False, "center", grid)
            assert fast is not None and (fast[3] is None or search)
        bad = x.clone()
        bad[300, 7] = float("nan")  # in the last thread's share
        assert cpu.quantize(bad, 2, 64, 0.8, False, "center") is None
    finally:
        torch.set_num_threads(before)
