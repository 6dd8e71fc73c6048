"""The packed decode paths against dequantize-then-attend, on stores filled directly and through real models."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import needs_triton_interpreter

from akvq import native
from akvq.attention import packed_cpu
from akvq.attention.packed_torch import packed_decode, unpack_float
from akvq.attention.paths import PATHS as DECODE_PATHS
from akvq.attention.reference import reference_decode
from akvq.cache.store import FULL, LOW, TEXT, TensorStore
from akvq.policies.base import TensorPlan
from akvq.quant.packing import pack

B, H, D = 3, 2, 16


def _store(
    plan: TensorPlan,
    text_bits: int | None,
    n: int,
    seed: int,
    classes: str,
    flushes: int = 2,
    d: int = D,
    cls_seed: int | None = None,
) -> TensorStore:
    """A store with n tokens written in `flushes` appends, older ones flushed with random classes (drawn from
    cls_seed's generator when given: two stores with the same cls_seed and shapes get the same classes)."""
    g = torch.Generator().manual_seed(seed)
    gc = g if cls_seed is None else torch.Generator().manual_seed(cls_seed)
    st = TensorStore(plan, text_bits, torch.float16, H, d, B)
    x = torch.randn(B, H, n, d, generator=g) * (1 + 3 * torch.rand(1, 1, 1, d, generator=g))
    for part in x.chunk(flushes, dim=2):
        m = st.flushable(part.shape[2])
        if m:
            if classes == "low":
                cls = torch.full((m, B), LOW, dtype=torch.uint8)
            elif classes == "pivots":  # a PSA layer: 2-bit rows and rare 16-bit pivots, no text rows
                cls = torch.full((m, B), LOW, dtype=torch.uint8)
                cls[torch.rand(m, B, generator=gc) < 0.05] = FULL
            elif classes == "runs":  # stretches of 64 tokens of one class (all sequences), rare pivots: whole
                # sealed blocks (`token_rows`) and whole runs of 64 token-major rows of each class
                j = torch.arange(st.n_q, st.n_q + m).unsqueeze(1).expand(m, B)
                cls = torch.where((j // 64) % 2 == 1, TEXT, LOW).to(torch.uint8)
                cls[torch.rand(m, B, generator=gc) < 0.005] = FULL
            else:
                cls = torch.randint(0, 3 if classes == "all" else 2, (m, B), generator=gc).to(torch.uint8)
                if classes == "all":  # pivots are rare
                    cls[torch.rand(m, B, generator=gc) < 0.7] = LOW
            st.flush(m, cls)
        st.append(part)
    return st


def _views(st: TensorStore) -> torch.Tensor:
    t = st.n_q + st.tail_len
    x = torch.full((1, 1, 1, 1), float("nan")).expand(B, H, t, st.head_dim)
    x.akvq_store = st
    return x


PLANS = {
    "rtn2": (TensorPlan(bits=2, group_size=128, clip_ratio=1.0, window=0), None, "low"),
    "rtn4_window": (TensorPlan(bits=4, group_size=8, window=5), None, "low"),
    "akvq_tsa_wht": (TensorPlan(bits=2, group_size=128, window=7, hadamard=True), 4, "text"),
    "akvq_psa_pivots": (TensorPlan(bits=2, group_size=128, window=7, hadamard=True), None, "all"),
    "akvq_all_classes_nowht": (TensorPlan(bits=2, group_size=8, window=4), 4, "all"),
    "across_heads": (TensorPlan(bits=2, group_size=32, window=3, group_across_heads=True), 4, "all"),
    "smoothquant": (TensorPlan(bits=4, group_size=16, window=2, smooth_alpha=0.5), None, "low"),
    "bits3_8": (TensorPlan(bits=3, group_size=16, window=2), 8, "all"),
    "bits3_group4": (TensorPlan(bits=3, group_size=4, window=2), 8, "all"),  # 12-bit groups straddle bytes
    "kivi_keys": (TensorPlan(bits=2, group_size=8, clip_ratio=1.0, axis="channel", window=0), None, "low"),
    "kivi_keys_hp": (TensorPlan(bits=2, group_size=8, axis="channel", window=0, hadamard=True), None, "all"),
    # akvq_plus-like layouts: the group minimum as zero point, value groups across heads, channel keys
    "float_zero_across": (
        TensorPlan(bits=2, group_size=32, window=3, float_zero=True, hadamard=True, group_across_heads=True),
        4,
        "all",
    ),
    "float_zero_bits3": (TensorPlan(bits=3, group_size=8, window=2, float_zero=True), 4, "all"),
    "channel_float_zero": (
        TensorPlan(bits=2, group_size=8, axis="channel", window=0, float_zero=True),
        None,
        "all",
    ),
    # 8-bit windows (`window_bits: 8`): every path reads the window's dequantized values (the kernel skips it)
    "akvq_psa_pivots_w8": (
        TensorPlan(bits=2, group_size=128, window=7, hadamard=True, window_bits=8),
        None,
        "all",
    ),
    "kivi_keys_w8": (
        TensorPlan(bits=2, group_size=8, clip_ratio=1.0, axis="channel", window=0, window_bits=8),
        None,
        "low",
    ),
}


def case(
    name: str, groups: int, n: int, masked: bool
) -> tuple[TensorStore, TensorStore, torch.Tensor, torch.Tensor | None]:
    """One case of the layout matrix: K and V stores of plan `name` (channel-axis keys: 43 tokens, token-axis
    values beside them), a query with `groups` query heads per KV head, and a left-padding mask or None. Shared
    by the tests here and `scripts/gpu_kernels.py` (the same matrix on a GPU)."""
    plan, text_bits, classes = PLANS[name]
    kst = _store(plan, text_bits, n if plan.axis == "token" else 43, 1, classes)
    vplan = plan if plan.axis == "token" else TensorPlan(bits=2, group_size=16, window=6)
    vst = _store(vplan, text_bits, kst.n_q + kst.tail_len, 2, classes, flushes=3)
    t = kst.n_q + kst.tail_len
    q = torch.randn(B, H * groups, 1, D, generator=torch.Generator().manual_seed(3))
    mask = None
    if masked:
        mask = torch.ones(B, 1, 1, t, dtype=torch.bool)
        mask[0, ..., :5] = False
        mask[2, ..., :11] = False
    return kst, vst, q, mask


# The C kernel's float path in each build (avx2 where the CPU has it, portable plain C everywhere)
PATHS = {
    "torch": packed_decode,
    **{
        f"cpu-{v}": functools.partial(packed_cpu.packed_decode, variant=v, int8=False)
        for v in packed_cpu.VARIANTS
    },
}


def _skip_variant(path: str) -> None:
    v = path.split("-", 1)[1] if path.startswith("cpu-") else None
    if v and v != "portable" and not set(packed_cpu.VARIANTS[v][0]) <= native.cpu_flags():
        pytest.skip(f"this CPU lacks {packed_cpu.VARIANTS[v][0]}")


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("name", sorted(PLANS))
@pytest.mark.parametrize(
    "groups", [1, 3, 12], ids=["mha", "gqa", "gqa12"]
)  # 12: past the kernel's 8 registers
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "padmask"])
@pytest.mark.parametrize(
    "n", [45, 150], ids=["open", "sealed"]
)  # 150: two sealed blocks of 64 (`token_rows`)
def test_packed_matches_reference(name: str, groups: int, masked: bool, path: str, n: int) -> None:
    if PLANS[name][0].axis == "channel" and n != 45:
        pytest.skip("sealed blocks are the token axis's order")
    kst, vst, q, mask = case(name, groups, n, masked)
    assert kst.n_q > 0 and vst.n_q > 0
    ref = reference_decode(q, _views(kst), _views(vst), mask, 0.25)
    if path == "torch" and DECODE_PATHS["packed_torch"].why_not(kst, vst, cuda=False) is not None:
        pytest.skip("a layout the torch path does not fold (the attention dispatcher dequantizes it)")
    if path.startswith("cpu-") and not (kst.half_meta and vst.half_meta):
        pytest.skip("fp32 scales (a group past fp16's range): the C kernel does not take them")
    _skip_variant(path)
    out = PATHS[path](q, kst, vst, mask, 0.25)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


# Layouts the integer (int8 query) path reads: 2-bit codes in segments of 64/128 channels, 4-bit in 32/64/128;
# head_dim 64 (SmolLM2) and 128 (LLaVA-7B). Others in the same call fall back to the float path per table.
PLANS_I8 = {
    "akvq_psa_d64": (TensorPlan(bits=2, group_size=128, window=7, hadamard=True), None, "all", 64),
    "akvq_tsa_d64": (TensorPlan(bits=2, group_size=64, window=7, hadamard=True), 4, "text", 64),
    # whole rows of 64 of one class, which the kernel's table index fills as a ramp (`table_index`)
    "akvq_tsa_runs_d64": (TensorPlan(bits=2, group_size=64, window=7, hadamard=True), 4, "runs", 64),
    "rtn4_g32_d64": (TensorPlan(bits=4, group_size=32, window=3), None, "low", 64),
    "float_zero_across_d64": (
        TensorPlan(bits=2, group_size=128, window=3, float_zero=True, group_across_heads=True),
        4,
        "all",
        64,
    ),
    "akvq_d128": (TensorPlan(bits=2, group_size=128, window=5, hadamard=True), 4, "all", 128),
    "bits3_falls_back_d64": (TensorPlan(bits=3, group_size=64, window=2), 8, "all", 64),
    "akvq_psa_d64_w8": (
        TensorPlan(bits=2, group_size=128, window=7, hadamard=True, window_bits=8),
        None,
        "all",
        64,
    ),
}
# The int8 query is an approximation (q rounded to 1/254 of its segment's max), and so are the u8 value weights of
# 2-bit values (test_packed_cpu_values.py): attention outputs are compared by relative norm. Largest measured over
# this matrix and three seeds: 1.37e-2 (akvq_d128, G=1: peaked random scores); int8 q alone: 8.6e-3.
I8_REL_TOL = 2e-2


@pytest.mark.parametrize("variant", sorted(packed_cpu.VARIANTS))
@pytest.mark.parametrize("name", sorted(PLANS_I8))
@pytest.mark.parametrize("groups", [1, 3, 12], ids=["mha", "gqa", "gqa12"])
def test_int8_query_path_matches_reference(name: str, groups: int, variant: str) -> None:
    plan, text_bits, classes, d = PLANS_I8[name]
    _skip_variant(f"cpu-{variant}")
    kst = _store(plan, text_bits, 45, 1, classes, d=d)
    vst = _store(plan, text_bits, 45, 2, classes, flushes=3, d=d)
    q = torch.randn(B, H * groups, 1, d, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, 1, 1, 45, dtype=torch.bool)
    mask[0, ..., :5] = False
    scale = d**-0.5
    ref = reference_decode(q, _views(kst), _views(vst), mask, scale)
    flt = packed_cpu.packed_decode(q, kst, vst, mask, scale, variant=variant, int8=False)
    torch.testing.assert_close(flt, ref, atol=2e-5, rtol=1e-4)
    out = packed_cpu.packed_decode(q, kst, vst, mask, scale, variant=variant, int8=True)
    assert float((out - ref).norm() / ref.norm()) < I8_REL_TOL
    # the scores themselves against the float path of the same build: each q entry moves by at most half a step,
    # max|q| / 254 of its segment, so |ds| <= |q|_inf |k|_1 / 254 <= |q|_2 |k|_2 sqrt(d) / 254 (WHT: orthonormal)
    qs = q.float().reshape(B, H, groups, d)
    s8 = packed_cpu.store_scores(kst, qs, variant=variant, int8=True)
    s32 = packed_cpu.store_scores(kst, qs, variant=variant, int8=False)
    kn = _views_dense(kst).norm(dim=-1).unsqueeze(2)  # [B, H, 1, T]
    bound = qs.norm(dim=-1, keepdim=True) * kn * d**0.5 / 254 * 1.01 + 1e-5
    assert bool(((s8 - s32).abs() <= bound).all())
    if "falls_back" not in name and groups <= 8 and plan.bits in (2, 4):
        assert not torch.equal(s8, s32)  # the integer path ran


def _views_dense(st: TensorStore) -> torch.Tensor:
    from akvq.attention.reference import full_kv

    return full_kv(_views(st)).float()


# The fused kernel (`akvq_token_decode`: online softmax per chunk of 64 tokens, the threads' states merged at the
# end) against the two-kernel form of the same build, which shares its int8 scores and u8 value weights: only the
# softmax's order of operations and its exp differ. Largest measured over FUSED_CASES: 4.0e-7.
FUSED_REL_TOL = 1e-5


def _mask(kind: str, t: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    m = torch.ones(B, 1, 1, t, dtype=torch.bool)
    m[0, ..., :5] = False
    m[2, ..., :130] = False  # whole chunks of sequence 2 masked: its running max starts at -inf
    return (
        m
        if kind == "bool"
        else torch.zeros(B, 1, 1, t).masked_fill(~m, float("-inf")) - 0.5 * (~m[:1]).float()
    )


FUSED_CASES = [  # (layout, G, mask, threads, build): each layout, mask kind, thread count and build at least twice
    ("akvq_psa_d64", 3, "bool", 2, "avx512"),
    ("akvq_psa_d64", 1, "float", 1, "avx2"),
    ("akvq_tsa_d64", 3, "none", 1, "avx512"),
    ("akvq_tsa_d64", 3, "bool", 2, "avx2"),
    ("akvq_tsa_runs_d64", 3, "bool", 1, "avx512"),
    ("akvq_tsa_runs_d64", 1, "none", 2, "avx2"),
    ("akvq_d128", 1, "bool", 1, "avx512"),
    ("akvq_d128", 3, "float", 2, "avx512"),
    ("float_zero_across_d64", 3, "none", 2, "avx512"),
    ("float_zero_across_d64", 1, "bool", 1, "avx2"),
]


@pytest.mark.parametrize(("name", "groups", "mask_kind", "threads", "variant"), FUSED_CASES)
def test_fused_kernel_matches_two_pass_form(
    name: str, groups: int, mask_kind: str, threads: int, variant: str
) -> None:
    plan, text_bits, classes, d = PLANS_I8[name]
    _skip_variant(f"cpu-{variant}")
    n = 402  # 5 chunks of 64 and a partial one packed, then a 16-bit tail
    kst = _store(plan, text_bits, n, 1, classes, flushes=6, d=d)
    vst = _store(plan, text_bits, n, 2, classes, flushes=6, d=d)  # as K: the fused kernel needs equal n_q
    assert kst.n_q == vst.n_q > 5 * 64 and kst.n_q % 64 and kst.tail_len > 0
    if classes == "runs":  # aligned blocks of 64 rows of each packed class, and blocks with pivots
        blocks = kst.cls[: kst.cls.numel() // 64 * 64].view(-1, 64)
        for c in (LOW, TEXT):
            assert bool((blocks == c).all(1).any())
        assert bool((blocks == FULL).any(1).any())
    q = 3 * torch.randn(B, H * groups, 1, d, generator=torch.Generator().manual_seed(3))
    mask, scale = _mask(mask_kind, n), d**-0.5
    fused = packed_cpu.fused_decode(q, kst, vst, mask, scale, threads=threads, variant=variant)
    assert fused is not None
    two = packed_cpu.packed_decode(q, kst, vst, mask, scale, threads=threads, variant=variant, fused=False)
    assert float((fused - two).norm() / two.norm()) < FUSED_REL_TOL
    ref = reference_decode(q, _views(kst), _views(vst), mask, scale)
    assert float((fused - ref).norm() / ref.norm()) < I8_REL_TOL
    # the default path is the fused one
    assert torch.equal(
        packed_cpu.packed_decode(q, kst, vst, mask, scale, threads=threads, variant=variant), fused
    )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "name", ["akvq_psa_d64", "akvq_tsa_d64", "akvq_tsa_runs_d64", "float_zero_across_d64"]
)
def test_fused_kernel_with_the_same_classes_for_k_and_v(name: str, threads: int) -> None:
    """K and V flushed with the same classes, as the cache does (cache/layer.py): the fused kernel builds one row
    index for both (AKVQ_SHAREIDX). Against the two-kernel form (an index per store) and the reference."""
    plan, text_bits, classes, d = PLANS_I8[name]
    _skip_variant("cpu-avx512")
    n = 402
    kst = _store(plan, text_bits, n, 1, classes, flushes=6, d=d, cls_seed=7)
    vst = _store(plan, text_bits, n, 2, classes, flushes=6, d=d, cls_seed=7)
    assert torch.equal(kst.cls, vst.cls) and kst.cls.data_ptr() != vst.cls.data_ptr()
    assert not torch.equal(kst.tables[LOW].codes, vst.tables[LOW].codes)
    q = 3 * torch.randn(B, H * 3, 1, d, generator=torch.Generator().manual_seed(3))
    mask, scale = _mask("bool", n), d**-0.5
    fused = packed_cpu.fused_decode(q, kst, vst, mask, scale, threads=threads)
    assert fused is not None
    two = packed_cpu.packed_decode(q, kst, vst, mask, scale, threads=threads, fused=False)
    assert float((fused - two).norm() / two.norm()) < FUSED_REL_TOL
    ref = reference_decode(q, _views(kst), _views(vst), mask, scale)
    assert float((fused - ref).norm() / ref.norm()) < I8_REL_TOL


def _shifted(qt, what: str):
    """qt with its scale or zero in a buffer one half past an aligned address (not 8-byte aligned), same values."""
    import dataclasses

    x = getattr(qt, what)
    buf = torch.zeros(x.numel() + 8, dtype=x.dtype)
    y = buf[1 : 1 + x.numel()].view(x.shape)
    y.copy_(x)
    assert y.is_contiguous() and y.data_ptr() % 8 == 2
    return dataclasses.replace(qt, **{what: y})


@pytest.mark.parametrize("name", ["akvq_psa_d64", "akvq_tsa_d64", "float_zero_across_d64"])
def test_kernel_reads_scales_at_any_alignment_and_tiny_tables(name: str) -> None:
    """The vector row gather reads up to 4 scale/zero halves a row as the 8 bytes that end with the row
    (halves16q), and one half at a time where a table's scale or zero is not 8-byte aligned (half16): both give the
    same outputs, bit for bit, in the fused and the two-kernel forms. And a 2-bit table of one row (2-4 bytes of
    scales), all other rows 16-bit: read inside its allocation."""
    plan, text_bits, classes, d = PLANS_I8[name]
    _skip_variant("cpu-avx512")
    n = 402
    kst = _store(plan, text_bits, n, 1, classes, flushes=6, d=d, cls_seed=7)
    vst = _store(plan, text_bits, n, 2, classes, flushes=6, d=d, cls_seed=7)
    q = 3 * torch.randn(B, H * 3, 1, d, generator=torch.Generator().manual_seed(3))
    mask, scale = _mask("bool", n), d**-0.5
    for fused in (True, False):
        a = packed_cpu.packed_decode(q, kst, vst, mask, scale, threads=1, fused=fused)
        for st in (kst, vst):
            st.tables[LOW] = _shifted(_shifted(st.tables[LOW], "scale"), "zero")
        b = packed_cpu.packed_decode(q, kst, vst, mask, scale, threads=1, fused=fused)
        assert torch.equal(a, b)
    # one 2-bit row in each store, the rest 16-bit pivots
    one = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        st = TensorStore(plan, text_bits, torch.float16, H, d, B)
        st.append(torch.randn(B, H, 40, d, generator=g))
        m = st.flushable(1)
        cls = torch.full((m, B), FULL, dtype=torch.uint8)
        cls[m // 2, 1] = LOW
        st.flush(m, cls)
        st.append(torch.randn(B, H, 1, d, generator=g))
        assert st.tables[LOW].scale.numel() * 2 < 8
        one.append(st)
    ref = reference_decode(q, _views(one[0]), _views(one[1]), None, scale)
    for fused in (True, False):
        out = packed_cpu.packed_decode(q, one[0], one[1], None, scale, threads=1, fused=fused)
        assert float((out - ref).norm() / ref.norm()) < I8_REL_TOL


@pytest.mark.parametrize("mask_kind", ["none", "bool"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kernel_on_a_16_bit_cache(mask_kind: str, threads: int) -> None:
    """The fp16 control (no packed rows, every token in the 16-bit tail) goes through the same fused kernel:
    exact up to float rounding."""
    if packed_cpu.best_variant() == "portable":
        pytest.skip("the fused kernel needs an AVX2 build")
    st = [_store(TensorPlan(bits=16, window=1 << 30), None, 200, s, "low") for s in (1, 2)]
    assert st[0].n_q == 0 and st[0].tail_len == 200
    q = torch.randn(B, H * 3, 1, D)
    mask = _mask(mask_kind, 200)
    out = packed_cpu.fused_decode(q, st[0], st[1], mask, 0.25, threads=threads)
    assert out is not None
    torch.testing.assert_close(
        out, reference_decode(q, _views(st[0]), _views(st[1]), mask, 0.25), atol=2e-5, rtol=1e-4
    )


def test_fused_kernel_declines_what_it_does_not_read() -> None:
    """Stores of different lengths, and the portable build: None, so packed_decode takes the two-kernel form."""
    plan, text_bits, classes, d = PLANS_I8["akvq_psa_d64"]
    kst = _store(plan, text_bits, 45, 1, classes, d=d)
    vst = _store(plan, text_bits, 45, 2, classes, flushes=3, d=d)
    q = torch.randn(B, H, 1, d)
    assert kst.n_q != vst.n_q
    assert packed_cpu.fused_decode(q, kst, vst, None, 0.125) is None
    same = _store(plan, text_bits, 45, 2, classes, d=d)
    assert packed_cpu.fused_decode(q, kst, same, None, 0.125, variant="portable") is None


def test_cpu_kernel_builds_where_a_compiler_is() -> None:
    """The C kernel must build wherever a C compiler exists (else "akvq_packed" silently uses the slow path)."""
    import shutil

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler here")
    assert packed_cpu.available(), packed_cpu.status()
    # loading it must leave the process's float environment alone (no flush-to-zero of subnormals)
    assert (torch.tensor([1e-39]) * 1.0).item() > 0


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_unpack_float(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (5, 24), dtype=torch.uint8)
    assert torch.equal(unpack_float(pack(codes, bits), bits, 24), codes.float())


def test_classes_constant() -> None:
    assert (LOW, TEXT, FULL) == (0, 1, 2)


# --- through a real model: transformers' attention interface, greedy tokens ------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama():
    from akvq.models import build_tiny

    loaded = build_tiny("llama")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights: greedy tokens that vary, so equal tokens mean something
        for p in loaded.model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3, generator=g)
    enc = loaded.tokenizer(
        ["The capital of France is a city that", "Hello there"], return_tensors="pt", padding=True
    )
    return loaded.model, enc


GEN_POLICIES = {
    "fp16": {"hp_dtype": "float16"},
    "rtn": {"bits": 2, "group_size": 16},
    "akvq": {"window": 2, "group_size": 16, "layer_pattern": ["tsa", "psa", "psa", "psa"]},
    "kivi": {"residual": 4, "group_size": 16},
    "akvq_plus": {
        "policy": "akvq",
        "window": 2,
        "group_size": 32,
        "float_zero": True,
        "k_axis": "channel",
        "k_window": 0,
        "group_across_heads": True,
        "layer_pattern": ["tsa", "psa", "psa", "psa"],
    },
}
GEN_POLICIES["akvq_plus_w8"] = {**GEN_POLICIES["akvq_plus"], "window_bits": 8}


def _generate(model, enc, impl: str, name: str, **kw):
    from akvq.api import cache_kwarg
    from akvq.attention import use_packed
    from akvq.cache import AKVQCache
    from akvq.policies import make_policy

    kw = dict(kw)
    policy = make_policy({"policy": kw.pop("policy", name)}, **kw)
    cache = AKVQCache(policy, model.config.num_hidden_layers)
    cache.set_attention_mask(enc["attention_mask"])
    t = enc["input_ids"].shape[1]
    if policy.needs_roles:
        g = torch.Generator().manual_seed(1)
        cache.set_token_roles(torch.rand(2, t, generator=g) < 0.5)
        cache.set_pivots(torch.rand(2, t, generator=g) < 0.2)
    use_packed(model, cache, impl)
    try:
        with torch.inference_mode():
            out = model.generate(
                **enc,
                **{cache_kwarg(): cache},
                max_new_tokens=6,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        use_packed(model, None, "sdpa")
    assert cache.layers[0].k.n_q > 0 or policy.name == "fp16"
    return out.sequences[:, t:], torch.stack(out.logits)


@pytest.mark.parametrize("name", sorted(GEN_POLICIES))
def test_generate_packed_equals_reference(tiny_llama, name: str) -> None:
    model, enc = tiny_llama
    ref_tokens, ref_logits = _generate(model, enc, "akvq_reference", name, **GEN_POLICIES[name])
    tokens, logits = _generate(model, enc, "akvq_packed", name, **GEN_POLICIES[name])
    assert len(set(ref_tokens[0].tolist())) > 1
    assert torch.equal(tokens, ref_tokens)
    # fp32 reassociation only; a later token's K can round to a neighbouring 2-bit code because of it, so the
    # logits are compared by relative norm, not elementwise
    assert float((logits - ref_logits).norm() / ref_logits.norm()) < 1e-4


@pytest.mark.parametrize("name", ["akvq", "akvq_plus", "akvq_plus_w8"])
def test_generate_torch_path_equals_cpu_kernel(tiny_llama, name: str) -> None:
    """attention=packed_torch runs the vectorized torch path, or (akvq_plus's float zero points, which that path
    does not read) the reference: same tokens as the C kernel either way."""
    model, enc = tiny_llama
    fast, fast_logits = _generate(model, enc, "akvq_packed", name, **GEN_POLICIES[name])
    slow, slow_logits = _generate(model, enc, "packed_torch", name, **GEN_POLICIES[name])
    assert torch.equal(fast, slow)
    assert float((fast_logits - slow_logits).norm() / slow_logits.norm()) < 1e-4


def test_generate_packed_equals_sdpa(tiny_llama) -> None:
    """The default (materialize + SDPA) path and the packed path pick the same tokens."""
    model, enc = tiny_llama
    base, _ = _generate(model, enc, "sdpa", "akvq", **GEN_POLICIES["akvq"])
    packed, _ = _generate(model, enc, "akvq_packed", "akvq", **GEN_POLICIES["akvq"])
    assert torch.equal(base, packed)


_TRITON_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from test_attention import _views, case
from akvq.attention import packed_triton as PT
from akvq.attention.reference import reference_decode
assert PT.available()
for name, groups, n in {cases!r}:
    kst, vst, q, mask = case(name, groups, n, masked=True)
    ref = reference_decode(q, _views(kst), _views(vst), mask, 0.25)
    torch.testing.assert_close(PT.packed_decode(q, kst, vst, mask, 0.25), ref, atol=2e-5, rtol=1e-4)
print("TRITON_OK")
"""


def _run_triton(cases: list[tuple[str, int, int]]) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(Path(tests).parent)}
    p = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT.format(tests=tests, cases=cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert "TRITON_OK" in p.stdout, p.stderr[-3000:]


@needs_triton_interpreter
def test_triton_kernels_match_reference_in_interpreter() -> None:
    """The Triton kernels on CPU (TRITON_INTERPRET=1 must be set before triton is imported: a subprocess):
    2/4/16-bit classes with GQA, token-major and in sealed blocks (150 tokens), KIVI channel-axis keys with 16-bit
    rows and WHT, and float zero points (KIVI's and akvq_plus's group minimum) on both axes (full matrix:
    -m benchmark)."""
    _run_triton(
        [
            ("akvq_all_classes_nowht", 3, 45),
            ("akvq_all_classes_nowht", 3, 150),
            ("kivi_keys_hp", 1, 45),
            ("channel_float_zero", 1, 45),
            ("float_zero_across", 3, 150),
        ]
    )


@pytest.mark.benchmark
@needs_triton_interpreter
def test_triton_kernels_full_matrix() -> None:
    """Every packable plan, MHA and GQA (minutes in the interpreter)."""
    _run_triton(
        [(n, g, t) for n in sorted(PLANS) if PLANS[n][0].bits != 3 for g in (1, 3) for t in (45, 150)]
    )


def test_every_decode_path_declares_every_plan_field() -> None:
    """A new TensorPlan field fails here until every path says which of its values it reads."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(TensorPlan)}
    for name, path in DECODE_PATHS.items():
        assert set(path.reads) == fields, f"{name} declares {sorted(set(path.reads) ^ fields)} wrongly"


def test_selector_fails_closed_to_the_reference(caplog: pytest.LogCaptureFixture) -> None:
    import dataclasses

    from akvq.attention.paths import _fallback, select

    _fallback.cache_clear()  # the line is logged once per (setting, reason) per process
    plan = TensorPlan(bits=2, group_size=8, window=2, float_zero=True)
    st = _store(plan, None, 20, 0, "low")
    assert select("packed_c", st, st, cuda=False).name == (
        "packed_c" if packed_cpu.available() else "reference"
    )
    with caplog.at_level("INFO", logger="akvq.attention.paths"):
        assert select("packed_torch", st, st, cuda=False).name == "reference"  # float zero points: not read
    assert "k.float_zero=True" in caplog.text
    # a path that does not declare a field (as if TensorPlan had grown one) is never chosen
    partial = dataclasses.replace(
        DECODE_PATHS["packed_torch"],
        reads={k: v for k, v in DECODE_PATHS["packed_torch"].reads.items() if k != "hadamard"},
    )
    assert "not declared" in partial.why_not(
        _store(TensorPlan(bits=2, group_size=8, window=2), None, 20, 0, "low"), st, cuda=False
    )
