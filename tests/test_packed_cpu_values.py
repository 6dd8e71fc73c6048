"""The C kernel's integer value side (issue #14): u8 weights p_t s_t per 32-token block, vpmaddubsw over 2-bit codes,
against the float path of the same build and against dequantize-then-attend."""

from __future__ import annotations

import pytest
import torch
from test_attention import B, H, _skip_variant, _store, _views

from akvq.attention import packed_cpu
from akvq.attention.reference import reference_decode
from akvq.policies.base import TensorPlan

# 2-bit values in segments of 64k channels (the integer path), with text rows of 4 bits, pivots, float zero points
PLANS_V8 = {
    "akvq_psa_d64": (TensorPlan(bits=2, group_size=64, window=7, hadamard=True), None, "all", 64),
    # no text rows: the 32-token value blocks take the vector row gather, pivots as masked lanes
    "akvq_psa_pivots_d64": (TensorPlan(bits=2, group_size=64, window=7, hadamard=True), None, "pivots", 64),
    "akvq_tsa_d64": (TensorPlan(bits=2, group_size=128, window=7, hadamard=True), 4, "all", 64),
    "float_zero_across_d64": (
        TensorPlan(bits=2, group_size=128, window=3, float_zero=True, group_across_heads=True),
        4,
        "all",
        64,
    ),
    "akvq_d128": (TensorPlan(bits=2, group_size=128, window=5, hadamard=True), 4, "all", 128),
}
# Each block's weights move by at most max_t(p_t s_t) / 510, the zero-point term uses the same weights, so the
# error is sum_t dp_t v_t over centred values. Largest measured over this matrix and three seeds: 3.8e-3.
V8_REL_TOL = 1e-2


@pytest.mark.parametrize("variant", ["avx2", "avx512"])
@pytest.mark.parametrize("name", sorted(PLANS_V8))
@pytest.mark.parametrize("groups", [1, 3, 8])
@pytest.mark.parametrize("n", [45, 200])
def test_integer_values_match_float_path(name: str, groups: int, n: int, variant: str) -> None:
    _skip_variant(f"cpu-{variant}")
    plan, text_bits, classes, d = PLANS_V8[name]
    vst = _store(plan, text_bits, n, 2, classes, flushes=3, d=d)
    g = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(B, H, groups, n, generator=g) * 3, -1)
    v8 = packed_cpu.store_output(vst, p, int8=True, variant=variant)
    v32 = packed_cpu.store_output(vst, p, int8=False, variant=variant)
    assert not torch.equal(v8, v32)  # the integer path ran
    assert float((v8 - v32).norm() / v32.norm()) < V8_REL_TOL
    # the whole integer decode (int8 q and u8 weights) against dequantize-then-attend
    kst = _store(plan, text_bits, n, 1, classes, d=d)
    q = torch.randn(B, H * groups, 1, d, generator=g)
    ref = reference_decode(q, _views(kst), _views(vst), None, d**-0.5)
    out = packed_cpu.packed_decode(q, kst, vst, None, d**-0.5, variant=variant)
    assert float((out - ref).norm() / ref.norm()) < 2e-2


# 2- and 4-bit keys in every segment width the integer key path takes (4-bit in 32: an odd number of 16-byte chunks)
PLANS_KEYS = {
    "k2_g64": (TensorPlan(bits=2, group_size=64, window=7, hadamard=True), 4, "all", 64),
    # no text rows: the 16-token blocks run whole (vector row gather, masked lanes for the 16-bit pivots)
    "k2_g64_pivots": (TensorPlan(bits=2, group_size=64, window=7, hadamard=True), None, "pivots", 64),
    "k2_g128_d128": (TensorPlan(bits=2, group_size=128, window=5, hadamard=True), 4, "all", 128),
    "k4_g32": (TensorPlan(bits=4, group_size=32, window=3), None, "low", 64),
    "k4_g128_d128": (TensorPlan(bits=4, group_size=128, window=3), None, "low", 128),
}


@pytest.mark.parametrize("name", sorted(PLANS_KEYS))
@pytest.mark.parametrize("groups", [1, 3, 8])
def test_vnni_build_equals_avx2_build(name: str, groups: int) -> None:
    """The int8 key dots are exact in integers, so vpdpbusd (avx512) and vpmaddubsw (avx2) give the same scores bit for
    bit; the value side and the 16-wide fp16 kernels agree with the avx2 build to rounding."""
    _skip_variant("cpu-avx512")
    plan, text_bits, classes, d = PLANS_KEYS[name]
    kst = _store(plan, text_bits, 200, 1, classes, d=d)
    q = torch.randn(B, H, groups, d, generator=torch.Generator().manual_seed(7))
    s512 = packed_cpu.store_scores(kst, q, int8=True, variant="avx512")
    s2 = packed_cpu.store_scores(kst, q, int8=True, variant="avx2")
    # the quantized rows bit for bit; the 16-bit rows (window, pivots) are summed in another order
    low = (kst.table_slots(0, kst.n_q)[0].T < 2)[:, None, None, :].expand(-1, H, groups, -1)
    assert low.any()
    assert torch.equal(s512[..., : kst.n_q][low], s2[..., : kst.n_q][low])
    torch.testing.assert_close(s512, s2, atol=1e-4, rtol=1e-5)
    assert not torch.equal(
        s512, packed_cpu.store_scores(kst, q, int8=False, variant="avx512")
    )  # integer path ran
    p = torch.softmax(torch.randn(B, H, groups, 200, generator=torch.Generator().manual_seed(8)), -1)
    # the integer value side: the same u8 weights and integer sums (vpdpbusd over four tokens on avx512, vpmaddubsw
    # pairs on avx2), the zero-point terms and 16-bit rows summed in another order
    o512 = packed_cpu.store_output(kst, p, int8=True, variant="avx512")
    torch.testing.assert_close(
        o512, packed_cpu.store_output(kst, p, int8=True, variant="avx2"), atol=1e-5, rtol=1e-5
    )
    full = _store(TensorPlan(bits=16, window=1 << 30), None, 200, 2, classes, d=d)
    for fn, arg in ((packed_cpu.store_scores, q), (packed_cpu.store_output, p)):
        a, b = fn(full, arg, variant="avx512"), fn(full, arg, variant="avx2")
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def old_avx2() -> object:
    """The avx2 build without the fourteenth pass's paths (keys' 8-token lanes, sealed value blocks from two
    indices): what they replaced."""
    lib, why = packed_cpu.load_build("avx2", ("-DAKVQ_LANES8=0", "-DAKVQ_V8SEAL=0"))
    if lib is None:
        pytest.skip(f"the old avx2 build: {why}")
    return lib


@pytest.mark.parametrize("classes", ["runs", "pivots", "all"])
@pytest.mark.parametrize("groups", [1, 3, 8])
@pytest.mark.parametrize("d", [64, 128])
def test_the_avx2_lanes_are_bit_identical_to_the_old_avx2_paths(
    old_avx2: object, classes: str, groups: int, d: int
) -> None:
    """Same integer sums, same float operations in the same order per token: the fused call's outputs agree bit for
    bit, on sealed blocks (all 2-bit, with pivots, with text rows) and the token-major rest."""
    _skip_variant("cpu-avx2")
    plan = TensorPlan(bits=2, group_size=64, window=7, hadamard=True)
    text_bits = 4 if classes == "all" else None
    kst = _store(plan, text_bits, 400, 1, classes, flushes=4, d=d, cls_seed=11)
    vst = _store(plan, text_bits, 400, 2, classes, flushes=4, d=d, cls_seed=11)
    assert kst.n_q >= 256  # four sealed blocks of 64 tokens, then token-major rows
    q = torch.randn(B, H * groups, 1, d, generator=torch.Generator().manual_seed(9))
    new = packed_cpu.fused_decode(q, kst, vst, None, d**-0.5, variant="avx2")
    old = packed_cpu.fused_decode(q, kst, vst, None, d**-0.5, lib=old_avx2)
    assert new is not None and old is not None  # the fused kernel ran
    assert torch.equal(new, old)
    ref = reference_decode(q, _views(kst), _views(vst), None, d**-0.5)
    assert float((new - ref).norm() / ref.norm()) < 2e-2
