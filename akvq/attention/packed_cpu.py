"""Decode attention over the packed cache with a small C kernel (CPU): the fused form of `packed_torch`.

Why C: in vectorized torch every packed element goes through several full passes (shift, mask, stack, convert,
permute, matmul), each writing a tensor as large as the chunk in fp32, so per element the packed path costs about
what fp16 attention costs and a 2-bit cache buys little speed. The kernel unpacks each row segment into a stack
buffer and reduces it against the G query heads of its KV head at once: one read of the bytes, no fp32 K/V.

The source (`csrc/packed_cpu.c`, plain C, no torch headers) is compiled on first use with the system C compiler
(`$CC`, else cc) into `~/.cache/akvq/kernels/` (or `$AKVQ_KERNEL_DIR`), keyed by the source, compiler, flags and
variant (`VARIANTS`: avx512, avx2, portable; the best the CPU's flags allow is loaded), and loaded with ctypes; a build
takes a few seconds. Keys of 2/4 bits go through the integer path by default (q quantized to int8 per segment; see
docs/efficiency.md). Without a compiler (or without the source, in a broken install) `available()`
is False and attention=auto uses the torch path. The WHT/SmoothQuant on q and on the output, the 16-bit rows and the
recent tail are the torch code shared by all paths (`packed_torch.exact_*`)."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from akvq import native
from akvq.attention.packed_torch import _finish_out, _prepare_q, exact_output, exact_scores
from akvq.attention.packed_torch import packed_decode as torch_packed_decode
from akvq.cache.store import LOW, ROW_BLOCK, TEXT, TensorStore

SOURCE = Path(__file__).with_name("csrc") / "packed_cpu.c"
# Reassociation lets the compiler vectorize the dot products. Not -ffast-math: with GCC < 13 it links
# crtfastmath.o into the library, whose constructor turns on flush-to-zero for the whole process.
FLAGS = (
    "-O3",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-fPIC",
    "-shared",
    "-std=c11",
)
# Builds of the one source, best first: the CPU flags each needs (/proc/cpuinfo names) and its compiler flags.
# "avx512": AVX-512 F/BW/VL/DQ + VNNI (vpdpbusd for the int8 key dots; the fp16 control 16 channels wide, so the control
# gains from the wider unit too). "portable" is plain C (whatever the compiler's default target vectorizes).
# No AMX build: a tile holds 16 rows of 64 bytes, and a decode step has one query row per head; an AMX key path
# (16 tokens as a tile's rows) was built and measured 1.2-1.3x slower (results/efficiency/README.md, fifteenth pass).
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "avx512": (
        ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
        ("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"),
    ),
    "avx2": (("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c")),
    "portable": ((), ()),
}
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_state: dict[str, str] = {}


def best_variant() -> str:
    """The first build in VARIANTS whose CPU flags this machine has (x86 flags only; elsewhere "portable")."""
    flags = native.cpu_flags()
    return next(
        v for v, (need, _) in VARIANTS.items() if not need or (native.is_x86() and set(need) <= flags)
    )


@functools.cache
def _lib(variant: str = "auto") -> ctypes.CDLL | None:
    """The kernel library built for `variant` ("auto": `best_variant()`), or None (reason in `status()`)."""
    variant = best_variant() if variant == "auto" else variant
    if variant not in VARIANTS:
        raise ValueError(f"kernel variant {variant!r}: expected auto or one of {sorted(VARIANTS)}")
    lib, _state["reason"] = load_build(variant)
    return lib


def load_build(variant: str, switches: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """`variant`'s build with extra `-D` switches of the kernel's paths (e.g. `-DAKVQ_LANES8=0`), bound, and the
    loader's message: the one place a build is made, for `_lib` and for A/B benchmarks and tests of old paths."""
    tag = "-".join([variant, *(f.removeprefix("-DAKVQ_").replace("=", "").lower() for f in switches)])
    lib, why = native.load(SOURCE, (*FLAGS, *VARIANTS[variant][1], *switches), tag, openmp=True)
    return (None if lib is None else bind(lib)), why


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the kernel library's C signatures (ctypes would otherwise pass 64-bit ints as 32-bit)."""
    tok = [_i64] * 6 + [_ptr, _i64, _i64] + [_ptr, _ptr, _ptr, _i64] * 2 + [_i64]
    lib.akvq_token_scores.argtypes = [*tok, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64]
    lib.akvq_token_output.argtypes = [*tok, _ptr, _i64, _i64, _i64, _ptr, _i64, _i64]
    lib.akvq_channel_scores.argtypes = [_i64] * 6 + [_ptr, _ptr, _ptr] + [_i64] * 4 + [_ptr, _ptr, _i64, _i64]
    half = [_i64] * 5 + [_ptr] + [_i64] * 3
    lib.akvq_half_scores.argtypes = [*half, _ptr, _ptr, _i64, _i64, _i64]
    lib.akvq_half_output.argtypes = [*half, _ptr, _i64, _i64, _ptr, _i64]
    lib.akvq_token_hp.argtypes = [_i64] * 5 + [
        _ptr,
        _i64,
        _i64,
        _ptr,
        _ptr,
        _ptr,
        _i64,
        _i64,
        _i64,
        _ptr,
        _i64,
        _i64,
        _i64,
        _ptr,
    ]
    fns = (
        lib.akvq_token_hp,
        lib.akvq_token_scores,
        lib.akvq_token_output,
        lib.akvq_channel_scores,
        lib.akvq_half_scores,
        lib.akvq_half_output,
    )
    store = [_i64, _ptr, _i64, _i64, _ptr, _ptr, _ptr, _i64, _ptr, _ptr, _ptr, _i64, _i64, _ptr]
    lib.akvq_token_decode.argtypes = (
        [_i64] * 5
        + store * 2
        + [_ptr, _ptr, _i64]
        + [_ptr, _i64, _i64, _i64] * 2
        + [_ptr, _ptr, _i64, _ptr, _ptr, _i64]
    )
    for f in (*fns, lib.akvq_token_decode):
        f.restype = ctypes.c_int
    return lib


def available() -> bool:
    """True when the kernel is built (or builds now) and loads."""
    return _lib() is not None


def status() -> str:
    """Why the kernel is or is not in use (for logs and records)."""
    _lib()
    return _state.get("reason", "")


def _table_args(store: TensorStore) -> list:
    args = []
    for c in (LOW, TEXT):
        qt = store.tables.get(c)
        if qt is None:
            args += [None, None, None, 2]
        else:
            for t in (qt.codes, qt.scale, qt.zero):
                if not t.is_contiguous() or (t is not qt.codes and t.dtype != torch.float16):
                    raise ValueError("packed tables must be contiguous with fp16 scale/zero")
            args += [qt.codes.data_ptr(), qt.scale.data_ptr(), qt.zero.data_ptr(), qt.bits]
    return args


def _order(store: TensorStore) -> list:
    """The rows' order for the kernel (`token_rows`): sealed tokens and their block, which the kernel checks."""
    return [store.sealed, ROW_BLOCK]


def _check(rc: int) -> None:
    if rc:
        raise ValueError("packed_cpu kernel: segment or query-group size out of range")


def _kernel_tail(store: TensorStore) -> bool:
    """The recent-window tail goes through the kernel when it is fp16 with unit stride along head_dim (an 8-bit
    window, int8 codes and scales, takes the torch path over `store.window()`, its dequantized temporary)."""
    t = store.tail
    return t is not None and store.tail_len > 0 and t.dtype == torch.float16 and t.stride(-1) == 1


def _kernel_hp(store: TensorStore) -> bool:
    """The 16-bit rows of a per-token store go through the kernel when they are fp16 and contiguous."""
    r = store.hp_rows
    return (
        store.n_q > 0
        and store.plan.axis == "token"
        and r is not None
        and r.dtype == torch.float16
        and r.is_contiguous()
    )


def _nt(threads: int | None) -> int:
    return torch.get_num_threads() if threads is None else max(1, int(threads))


def store_scores(
    store: TensorStore, q: torch.Tensor, threads: int | None = None, int8: bool = True, variant: str = "auto"
) -> torch.Tensor:
    """As `packed_torch.store_scores`: [B, H, G, n_q + tail]. `int8`: per-token keys of 2/4 bits take the integer
    path (q quantized per segment to int8); `threads`: OpenMP threads (None: torch's count)."""
    b, h, g, d = q.shape
    t_all = store.n_q + store.tail_len
    out = torch.empty(b, h, g, t_all, dtype=torch.float32)
    lib, nt = _lib(variant), _nt(threads)
    if store.n_q:
        qt = _prepare_q(store, q).float().contiguous()
        if store.plan.axis == "channel":
            c = store.chan
            w = store.width
            if (
                c.codes.stride(-1) != 1
                or c.codes.stride(0) != w * c.codes.stride(1)
                or c.scale.stride(-1) != 1
                or c.scale.stride(0) != w * c.scale.stride(1)
                or c.zero.stride() != c.scale.stride()
            ):
                raise ValueError("channel codes must be laid out [B, W, bytes] with unit stride along tokens")
            _check(
                lib.akvq_channel_scores(
                    store.n_q,
                    b,
                    h,
                    g,
                    d,
                    store.group,
                    c.codes.data_ptr(),
                    c.scale.data_ptr(),
                    c.zero.data_ptr(),
                    c.bits,
                    c.codes.stride(1),
                    c.scale.stride(1),
                    int(c.float_zero),
                    qt.data_ptr(),
                    out.data_ptr(),
                    t_all,
                    nt,
                )
            )
        else:  # straight into [B, H, G, T] (measured: cheaper than writing token-major and transposing)
            _check(
                lib.akvq_token_scores(
                    store.n_q * b,
                    b,
                    h,
                    g,
                    d,
                    store.group,
                    store.cls.data_ptr(),
                    *_order(store),
                    *_table_args(store),
                    int(store.plan.float_zero),
                    qt.data_ptr(),
                    out.data_ptr(),
                    h * g * t_all,
                    1,
                    t_all,
                    int(int8),
                    nt,
                )
            )
    tail, hp = _kernel_tail(store), _kernel_hp(store)
    q32 = q.float().contiguous()
    if tail:
        x = store.tail
        _check(
            lib.akvq_half_scores(
                b,
                h,
                g,
                d,
                store.tail_len,
                x.data_ptr(),
                x.stride(0),
                x.stride(1),
                x.stride(2),
                q32.data_ptr(),
                out.data_ptr(),
                t_all,
                store.n_q,
                nt,
            )
        )
    if hp:
        _check(
            lib.akvq_token_hp(
                store.n_q * b,
                b,
                h,
                g,
                d,
                store.cls.data_ptr(),
                *_order(store),
                store.hp_rows.data_ptr(),
                q32.data_ptr(),
                out.data_ptr(),
                h * g * t_all,
                1,
                t_all,
                None,
                0,
                0,
                0,
                None,
            )
        )
        if not tail and store.tail_len:
            out[..., store.n_q :] = torch.einsum("bhgd,bhtd->bhgt", q, store.window(torch.float32))
        return out
    return exact_scores(store, q, out, tail=not tail)


def store_output(
    store: TensorStore, p: torch.Tensor, threads: int | None = None, int8: bool = True, variant: str = "auto"
) -> torch.Tensor:
    """As `packed_torch.store_output` for per-token values: [B, H, G, D]. `int8`: 2-bit values take the integer
    path (weights p_t s_t quantized to u8 per block of 32 tokens, vpmaddubsw; AVX2 builds)."""
    b, h, g, t_all = p.shape
    out = torch.zeros(b, h, g, store.head_dim, dtype=torch.float32)
    p = p.float().contiguous()
    lib, nt = _lib(variant), _nt(threads)
    if store.n_q:
        _check(
            lib.akvq_token_output(
                store.n_q * b,
                b,
                h,
                g,
                store.head_dim,
                store.group,
                store.cls.data_ptr(),
                *_order(store),
                *_table_args(store),
                int(store.plan.float_zero),
                p.data_ptr(),
                h * g * t_all,
                1,
                t_all,
                out.data_ptr(),
                int(int8),
                nt,
            )
        )
        out = _finish_out(store, out)
        if _kernel_hp(store):  # the 16-bit rows, in the original space
            _check(
                lib.akvq_token_hp(
                    store.n_q * b,
                    b,
                    h,
                    g,
                    store.head_dim,
                    store.cls.data_ptr(),
                    *_order(store),
                    store.hp_rows.data_ptr(),
                    None,
                    None,
                    0,
                    0,
                    0,
                    p.data_ptr(),
                    h * g * t_all,
                    1,
                    t_all,
                    out.data_ptr(),
                )
            )
    tail = _kernel_tail(store)
    if tail:
        x = store.tail
        _check(
            lib.akvq_half_output(
                b,
                h,
                g,
                store.head_dim,
                store.tail_len,
                x.data_ptr(),
                x.stride(0),
                x.stride(1),
                x.stride(2),
                p.data_ptr(),
                t_all,
                store.n_q,
                out.data_ptr(),
                nt,
            )
        )
    if _kernel_hp(store):
        if not tail and store.tail_len:
            out += torch.einsum("bhgt,bhtd->bhgd", p[..., store.n_q :], store.window(torch.float32))
        return out
    return exact_output(store, p, out, tail=not tail)


def _fusable(store: TensorStore) -> bool:
    """Whether one store can go through the fused kernel: per-token codes (or none), fp16 contiguous 16-bit rows,
    and a tail the kernel reads (fp16, unit stride) or none."""
    if store.n_q and store.plan.axis != "token":
        return False
    if store.n_q and store.hp_rows is not None and not _kernel_hp(store):
        return False
    return store.tail_len == 0 or _kernel_tail(store)


def _tail_args(store: TensorStore) -> list:
    if not store.tail_len:
        return [None, 0, 0, 0]
    x = store.tail
    return [x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)]


def fused_decode(
    query: torch.Tensor,
    kstore: TensorStore,
    vstore: TensorStore,
    attention_mask: torch.Tensor | None,
    scaling: float,
    threads: int | None = None,
    variant: str = "auto",
    lib: ctypes.CDLL | None = None,
) -> torch.Tensor | None:
    """softmax(q K^T * scaling + mask) V in one kernel call (`akvq_token_decode`: online softmax per chunk, no
    [B, H, G, T] scores in memory), or None where it does not apply (the caller takes the two-kernel form).
    `lib`: a build loaded by the caller (`bind`), in place of `variant`'s (A/B benchmarks of build flags)."""
    b, hq, _, d = query.shape
    h, g = kstore.num_heads, hq // kstore.num_heads
    n_q, t_all = kstore.n_q, kstore.n_q + kstore.tail_len
    if (
        vstore.n_q != n_q
        or vstore.tail_len != kstore.tail_len
        or vstore.head_dim != d
        or not (_fusable(kstore) and _fusable(vstore))
    ):
        return None
    mb = mf = None
    msb = 0
    if attention_mask is not None:  # [B or 1, T_all]: bool (True = attend) as bytes, or additive float
        m = attention_mask[..., -t_all:].reshape(attention_mask.shape[0], t_all)
        if m.shape[0] not in (1, b):
            return None
        msb = t_all if m.shape[0] == b else 0
        if m.dtype == torch.bool:
            mb = m.contiguous().view(torch.uint8)
        else:
            mf = m.float().contiguous()
    q = query.float().reshape(b, h, g, d) * scaling  # a fresh contiguous tensor
    qt = _prepare_q(kstore, q).float().contiguous() if n_q else q
    oq = torch.empty(b, h, g, d, dtype=torch.float32)
    ox = torch.empty(b, h, g, d, dtype=torch.float32)
    side = []
    for st in (kstore, vstore):
        hp = st.hp_rows if n_q and st.hp_rows is not None else None
        side += [
            st.group,
            st.cls.data_ptr() if n_q else None,
            *_order(st),
            *_table_args(st),
            int(st.plan.float_zero),
            None if hp is None else hp.data_ptr(),
        ]
    rc = (lib or _lib(variant)).akvq_token_decode(
        n_q * b,
        b,
        h,
        g,
        d,
        *side,
        qt.data_ptr(),
        q.data_ptr(),
        kstore.tail_len,
        *_tail_args(kstore),
        *_tail_args(vstore),
        None if mb is None else mb.data_ptr(),
        None if mf is None else mf.data_ptr(),
        msb,
        oq.data_ptr(),
        ox.data_ptr(),
        _nt(threads),
    )
    if rc == 2:
        return None
    _check(rc)
    o = (_finish_out(vstore, oq) if n_q else oq) + ox
    return o.reshape(b, hq, 1, d).to(query.dtype)


def packed_decode(
    query: torch.Tensor,
    kstore: TensorStore,
    vstore: TensorStore,
    attention_mask: torch.Tensor | None,
    scaling: float,
    threads: int | None = None,
    int8: bool = True,
    variant: str = "auto",
    fused: bool = True,
) -> torch.Tensor:
    """softmax(q K^T * scaling + mask) V for one query token, as `packed_torch.packed_decode`, through the C kernel.

    `int8=False` keeps q and the value weights in fp32 (the float path, two kernels); `fused=False` takes the
    two-kernel form (scores, torch softmax, outputs) where the fused kernel would apply; `variant` forces a build
    ("avx2", "portable"; tests)."""
    if _lib(variant) is None:
        raise RuntimeError(f"packed_cpu kernel unavailable: {status()}")
    if query.shape[2] != 1:
        raise ValueError(f"the packed path is for decode steps (one query token), got {query.shape[2]}")
    if int8 and fused:
        out = fused_decode(query, kstore, vstore, attention_mask, scaling, threads, variant)
        if out is not None:
            return out
    return torch_packed_decode(
        query,
        kstore,
        vstore,
        attention_mask,
        scaling,
        scores=functools.partial(store_scores, threads=threads, int8=int8, variant=variant),
        output=functools.partial(store_output, threads=threads, int8=int8, variant=variant),
    )


__all__ = [
    "VARIANTS",
    "available",
    "best_variant",
    "fused_decode",
    "load_build",
    "packed_decode",
    "status",
    "store_output",
    "store_scores",
]
