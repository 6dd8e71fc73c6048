"""Decode attention over the packed cache with Triton kernels (GPU; tested on CPU with TRITON_INTERPRET=1).

Same math and the same exact parts as `packed_torch` (WHT and SmoothQuant on q and on the output, 16-bit rows
and the tail in torch, they are few); the kernels replace the chunked loops over the packed tables:

- token axis: one program per (batch, KV head, split of the tokens) walks its sequence's tokens, reads each one's
  class and row in its class table from the store's lookup (`TensorStore.token_lookup`, in token order (t, b) ->
  t * B + b whatever order the store keeps its rows in), unpacks the codes of
  the class's bit width in registers and dequantizes with the row's per-group scale/zero. Scores for all G query
  heads of the KV head at once (GQA without repeating K); values weighted by p into per-split partial sums.
- channel axis (KIVI keys): codes packed along tokens; the program unpacks a block of tokens per channel.

Nothing is dequantized to memory: the only full-size reads are the packed codes and their scales."""

from __future__ import annotations

import functools

import torch

from akvq.attention.packed_torch import (
    _finish_out,
    _prepare_q,
    exact_output,
    exact_scores,
)
from akvq.attention.packed_torch import (
    packed_decode as torch_packed_decode,
)
from akvq.attention.packed_torch import (
    store_output as torch_store_output,
)
from akvq.cache.store import FULL, LOW, TEXT, TensorStore

try:  # triton is optional: the torch path covers every device
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None

BLOCK_T = 32


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when triton imports and kernels can run here (a CUDA device, or the CPU interpreter)."""
    if triton is None:
        return False
    import os

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _dequant_rows(
        codes_ptr, scale_ptr, zero_ptr, ti, ok, ch, W, GS, BITS: tl.constexpr, FZ: tl.constexpr
    ):
        """[BLOCK, D] values s * (c - z) of table rows `ti` (masked by ok) at channels `ch` of the row; FZ (a float
        zero point, KIVI's: z holds the group's minimum) s * c + z."""
        PER: tl.constexpr = 8 // BITS
        MASK: tl.constexpr = (1 << BITS) - 1
        nbytes = W // PER
        ngroups = W // GS
        m2 = ok[:, None] & (ch[None, :] >= 0)
        byte = tl.load(codes_ptr + ti[:, None] * nbytes + ch[None, :] // PER, mask=m2, other=0).to(tl.int32)
        code = ((byte >> ((ch[None, :] % PER) * BITS)) & MASK).to(tl.float32)
        g = ti[:, None] * ngroups + ch[None, :] // GS
        s = tl.load(scale_ptr + g, mask=m2, other=0.0).to(tl.float32)
        z = tl.load(zero_ptr + g, mask=m2, other=0.0).to(tl.float32)
        if FZ:
            return s * code + z
        return s * (code - z)

    @triton.jit
    def _token_rows(
        cls_ptr,
        r2t_ptr,
        lc,
        ls,
        lz,
        tc,
        ts,
        tz,
        b,
        h,
        t,
        n_q,
        B,
        W,
        GS,
        D: tl.constexpr,
        LBITS: tl.constexpr,
        TBITS: tl.constexpr,
        HAS_L: tl.constexpr,
        HAS_T: tl.constexpr,
        BLOCK: tl.constexpr,
        LFZ: tl.constexpr,
        TFZ: tl.constexpr,
    ):
        valid = t < n_q
        r = t.to(tl.int64) * B + b  # the lookup's token order, not the storage order
        c = tl.load(cls_ptr + r, mask=valid, other=2).to(tl.int32)
        ti = tl.load(r2t_ptr + r, mask=valid, other=0)
        ch = h * D + tl.arange(0, D)
        x = tl.zeros([BLOCK, D], dtype=tl.float32)
        if HAS_L:
            x += _dequant_rows(lc, ls, lz, ti, valid & (c == 0), ch, W, GS, LBITS, LFZ)
        if HAS_T:
            x += _dequant_rows(tc, ts, tz, ti, valid & (c == 1), ch, W, GS, TBITS, TFZ)
        return x

    @triton.jit
    def _token_scores_kernel(
        q_ptr,
        out_ptr,
        cls_ptr,
        r2t_ptr,
        lc,
        ls,
        lz,
        tc,
        ts,
        tz,
        n_q,
        T,
        B,
        H,
        W,
        GS,
        per_split,
        G: tl.constexpr,
        GP: tl.constexpr,
        D: tl.constexpr,
        LBITS: tl.constexpr,
        TBITS: tl.constexpr,
        HAS_L: tl.constexpr,
        HAS_T: tl.constexpr,
        BLOCK: tl.constexpr,
        LFZ: tl.constexpr = False,
        TFZ: tl.constexpr = False,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        qbase = (b * H + h) * G
        q = tl.load(q_ptr + (qbase + g[:, None]) * D + d[None, :], mask=g[:, None] < G, other=0.0)  # [GP, D]
        start = sp * per_split
        for t0 in range(start, tl.minimum(start + per_split, n_q), BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            k = _token_rows(
                cls_ptr,
                r2t_ptr,
                lc,
                ls,
                lz,
                tc,
                ts,
                tz,
                b,
                h,
                t,
                n_q,
                B,
                W,
                GS,
                D,
                LBITS,
                TBITS,
                HAS_L,
                HAS_T,
                BLOCK,
                LFZ,
                TFZ,
            )
            sc = tl.sum(k[:, None, :] * q[None, :, :], axis=2)  # [BLOCK, GP]
            ptr = out_ptr + (qbase + g[None, :]) * T + t[:, None]
            tl.store(ptr, sc, mask=(t[:, None] < n_q) & (g[None, :] < G))

    @triton.jit
    def _token_output_kernel(
        p_ptr,
        out_ptr,
        cls_ptr,
        r2t_ptr,
        lc,
        ls,
        lz,
        tc,
        ts,
        tz,
        n_q,
        T,
        B,
        H,
        W,
        GS,
        per_split,
        G: tl.constexpr,
        GP: tl.constexpr,
        D: tl.constexpr,
        LBITS: tl.constexpr,
        TBITS: tl.constexpr,
        HAS_L: tl.constexpr,
        HAS_T: tl.constexpr,
        BLOCK: tl.constexpr,
        LFZ: tl.constexpr = False,
        TFZ: tl.constexpr = False,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        qbase = (b * H + h) * G
        acc = tl.zeros([GP, D], dtype=tl.float32)
        start = sp * per_split
        for t0 in range(start, tl.minimum(start + per_split, n_q), BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            v = _token_rows(
                cls_ptr,
                r2t_ptr,
                lc,
                ls,
                lz,
                tc,
                ts,
                tz,
                b,
                h,
                t,
                n_q,
                B,
                W,
                GS,
                D,
                LBITS,
                TBITS,
                HAS_L,
                HAS_T,
                BLOCK,
                LFZ,
                TFZ,
            )
            pm = (t[:, None] < n_q) & (g[None, :] < G)
            p = tl.load(p_ptr + (qbase + g[None, :]) * T + t[:, None], mask=pm, other=0.0)  # [BLOCK, GP]
            acc += tl.sum(p[:, :, None] * v[:, None, :], axis=0)
        nb = tl.num_programs(0)
        nh = tl.num_programs(1)
        base = ((sp * nb + b) * nh + h) * G
        tl.store(out_ptr + (base + g[:, None]) * D + d[None, :], acc, mask=g[:, None] < G)

    @triton.jit
    def _channel_scores_kernel(
        q_ptr,
        out_ptr,
        codes_ptr,
        scale_ptr,
        zero_ptr,
        n_q,
        T,
        H,
        W,
        GS,
        NBYTES,
        NGROUPS,
        per_split,
        G: tl.constexpr,
        GP: tl.constexpr,
        D: tl.constexpr,
        BITS: tl.constexpr,
        BLOCK: tl.constexpr,
        FZ: tl.constexpr = False,
    ):
        PER: tl.constexpr = 8 // BITS
        MASK: tl.constexpr = (1 << BITS) - 1
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        qbase = (b * H + h) * G
        q = tl.load(q_ptr + (qbase + g[:, None]) * D + d[None, :], mask=g[:, None] < G, other=0.0)
        ch = (b * W + h * D + d).to(tl.int64)  # row of chan.codes [B, W, NBYTES]
        start = sp * per_split
        for t0 in range(start, tl.minimum(start + per_split, n_q), BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            ok = (t[:, None] < n_q) & (d[None, :] >= 0)
            byte = tl.load(codes_ptr + ch[None, :] * NBYTES + t[:, None] // PER, mask=ok, other=0).to(
                tl.int32
            )
            code = ((byte >> ((t[:, None] % PER) * BITS)) & MASK).to(tl.float32)
            gi = ch[None, :] * NGROUPS + t[:, None] // GS
            s = tl.load(scale_ptr + gi, mask=ok, other=0.0).to(tl.float32)
            z = tl.load(zero_ptr + gi, mask=ok, other=0.0).to(tl.float32)
            if FZ:
                k = s * code + z  # [BLOCK, D]
            else:
                k = s * (code - z)
            sc = tl.sum(k[:, None, :] * q[None, :, :], axis=2)
            tl.store(
                out_ptr + (qbase + g[None, :]) * T + t[:, None],
                sc,
                mask=(t[:, None] < n_q) & (g[None, :] < G),
            )


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=8)
def _dummies(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins for an absent class's codes and scales (never read): made once, not two launches per call."""
    return torch.zeros(1, dtype=torch.uint8, device=dev), torch.zeros(1, dtype=torch.float16, device=dev)


def _tables(store: TensorStore, dev: torch.device) -> tuple[list, dict]:
    """Kernel arguments for the LOW and TEXT tables (dummies where a class is absent)."""
    dummy8, dummy16 = _dummies(dev)
    args, meta = [], {}
    for c, key in ((LOW, "L"), (TEXT, "T")):
        qt = store.tables.get(c)
        if qt is None or qt.bits not in (1, 2, 4, 8):
            if qt is not None:
                raise NotImplementedError(
                    f"{qt.bits}-bit codes straddle bytes; the Triton path takes 1/2/4/8 bits"
                )
            args += [dummy8, dummy16, dummy16]
            meta[f"{key}BITS"], meta[f"HAS_{key}"], meta[f"{key}FZ"] = 2, False, False
        else:
            args += [qt.codes, qt.scale, qt.zero]
            meta[f"{key}BITS"], meta[f"HAS_{key}"], meta[f"{key}FZ"] = qt.bits, True, qt.float_zero
    return args, meta


# Programs (batch x KV head x split of the tokens) a launch aims for per SM. A program walks its tokens one block
# after another, each block a lookup and then the rows it names, so it waits on memory: the GPU needs several per SM
# to hide that. The first H200 run aimed for 256 in all (~2 per SM; the scores kernel read ~26 GB/s);
# `scripts/gpu_kernels.py` times the choices on the GPU at hand.
PROGRAMS_PER_SM = 8


@functools.lru_cache(maxsize=8)
def _sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 32 for the CPU interpreter (its splits are those of a GPU)."""
    if device.type != "cuda":
        return 32
    return torch.cuda.get_device_properties(device).multi_processor_count


def _splits(b: int, h: int, n: int, programs: int) -> tuple[int, int]:
    """(number of splits, tokens per split): about `programs` programs in all, whole blocks per split."""
    want = max(1, min(64, -(-programs // (b * h))))
    per = max(BLOCK_T, -(-n // want))
    per = -(-per // BLOCK_T) * BLOCK_T
    return -(-n // per), per


def _programs(device: torch.device, per_sm: int | None) -> int:
    return (PROGRAMS_PER_SM if per_sm is None else per_sm) * _sms(device)


def store_scores(store: TensorStore, q: torch.Tensor, per_sm: int | None = None) -> torch.Tensor:
    """As `packed_torch.store_scores`, the packed part in a kernel (`per_sm`: programs per SM, default
    PROGRAMS_PER_SM)."""
    b, h, g, d = q.shape
    nt = store.tail_len
    t_all = store.n_q + nt
    out = torch.zeros(b, h, g, t_all, device=q.device, dtype=torch.float32)
    if store.n_q:
        qt = _prepare_q(store, q).contiguous()
        ns, per = _splits(b, h, store.n_q, _programs(q.device, per_sm))
        gp = max(2, _pow2(g))
        if store.plan.axis == "channel":
            c = store.chan
            if c.bits not in (1, 2, 4, 8) or store.group % (8 // c.bits):
                raise NotImplementedError(
                    "the Triton path takes 1/2/4/8-bit channel codes, groups of whole bytes"
                )
            _channel_scores_kernel[(b, h, ns)](
                qt,
                out,
                c.codes,
                c.scale,
                c.zero,
                store.n_q,
                t_all,
                h,
                store.width,
                store.group,
                c.codes.stride(1),
                c.scale.stride(1),
                per,
                G=g,
                GP=gp,
                D=d,
                BITS=c.bits,
                BLOCK=BLOCK_T,
                FZ=c.float_zero,
            )
        else:
            args, meta = _tables(store, q.device)
            _token_scores_kernel[(b, h, ns)](
                qt,
                out,
                *store.token_lookup(),
                *args,
                store.n_q,
                t_all,
                b,
                h,
                store.width,
                store.group,
                per,
                G=g,
                GP=gp,
                D=d,
                BLOCK=BLOCK_T,
                **meta,
            )
    return exact_scores(store, q, out)


def store_output(store: TensorStore, p: torch.Tensor, per_sm: int | None = None) -> torch.Tensor:
    """As `packed_torch.store_output`; token-axis tables in a kernel (channel-axis values use the torch path)."""
    if store.plan.axis == "channel" or not store.n_q:
        return torch_store_output(store, p)
    b, h, g, t_all = p.shape
    d = store.head_dim
    p = p.contiguous()
    ns, per = _splits(b, h, store.n_q, _programs(p.device, per_sm))
    part = torch.empty(ns, b, h, g, d, device=p.device, dtype=torch.float32)
    args, meta = _tables(store, p.device)
    _token_output_kernel[(b, h, ns)](
        p,
        part,
        *store.token_lookup(),
        *args,
        store.n_q,
        t_all,
        b,
        h,
        store.width,
        store.group,
        per,
        G=g,
        GP=max(2, _pow2(g)),
        D=d,
        BLOCK=BLOCK_T,
        **meta,
    )
    return exact_output(store, p, _finish_out(store, part.sum(0)))


def packed_decode(
    query: torch.Tensor,
    kstore: TensorStore,
    vstore: TensorStore,
    attention_mask: torch.Tensor | None,
    scaling: float,
    per_sm: int | None = None,
) -> torch.Tensor:
    """As `packed_torch.packed_decode`, through the kernels: [B, Hq, 1, D] in query's dtype (`per_sm`: programs per
    SM a launch aims for, default PROGRAMS_PER_SM; `scripts/gpu_kernels.py` sweeps it)."""
    if kstore.perm is not None or vstore.perm is not None:
        raise NotImplementedError("the Triton kernels read unpermuted channels")
    if vstore.plan.axis == "channel" and vstore.plan.float_zero:  # channel values go through packed_torch
        raise NotImplementedError("channel-axis values with float zero points: no Triton or torch fold")
    scores = functools.partial(store_scores, per_sm=per_sm)
    output = functools.partial(store_output, per_sm=per_sm)
    return torch_packed_decode(query, kstore, vstore, attention_mask, scaling, scores, output)


__all__ = ["FULL", "available", "packed_decode", "store_output", "store_scores"]
