"""One of K or V for one layer: a tail (the recent window, 16-bit or 8-bit) plus the tokens that left it, packed.

Rows are tokens, each row all KV heads' channels (heads * head_dim), in the order `token_rows` defines: sealed blocks
of ROW_BLOCK tokens, each sequence's rows of a block one stretch, then the newest tokens token-major, so that a flush
appends rows (and seals a block once it is full) and never re-quantizes old ones. A class map in that order (one
uint8 per row: 0 = low bits, 1 = text bits, 2 = 16-bit) says which packed table holds each row; each table holds its
class's rows in that order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from akvq.policies.base import TensorPlan
from akvq.quant.hadamard import fwht
from akvq.quant.q8 import dequantize_q8, quantize_q8
from akvq.quant.uniform import QTensor, dequantize, quantize

# Precision class of a packed row (values, not bit widths): LOW = the policy's low bits, TEXT = its text bits (TSA),
# FULL = kept in 16 bits (pivots, sink).
LOW, TEXT, FULL = 0, 1, 2
# Channels per fp16 scale of an 8-bit window (`window_bits: 8`), as in llama.cpp's q8_0 blocks; a head_dim it does
# not divide takes gcd(32, head_dim).
WINDOW_GROUP = 32


@dataclass
class StoreBytes:
    codes: int = 0
    meta: int = 0
    hp: int = 0
    index: int = 0

    def __iadd__(self, other: StoreBytes) -> StoreBytes:
        self.codes += other.codes
        self.meta += other.meta
        self.hp += other.hp
        self.index += other.index
        return self


GROWTH = 32  # an append that outgrows a buffer reserves 1/GROWTH more (at least RESERVE_MIN units along dim)
RESERVE_MIN = 64
# A sliding view (a quantized cache's tail: each flush cuts its front, each append adds at its end) gets this many
# units past its end, and moves into them: one reallocation and copy of the window every SLIDE_RESERVE appends, not
# one per append (the copy was ~0.46 ms per store and step at batch 79, 8K: 3.9 MB). The cost is SLIDE_RESERVE / window
# more tail memory (8 of 128 tokens: 6%); a reserve of 1/GROWTH and at least RESERVE_MIN units there cost ~0.16 GiB of
# peak memory at batch 223.
SLIDE_RESERVE = 8


# Tokens per sealed block of the packed rows (`token_rows`): the C kernel's work items (64 tokens of one sequence)
# are one block's stretch of a sequence, so it reads them as contiguous rows, not rows `batch` apart.
ROW_BLOCK = 64


def token_rows(
    t0: int, t1: int, batch: int, sealed: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Storage rows of tokens [t0, t1) of sequences 0..batch-1, int64 [t1 - t0, batch]: the order of the packed
    rows (token axis), in one place. Tokens before `sealed` (a multiple of ROW_BLOCK) lie in blocks of ROW_BLOCK
    tokens, sequence by sequence: row (t // K) * K * batch + b * K + t % K. The rest are token-major, row
    t * batch + b, so that a flush appends rows; a block is sealed (its rows reordered) when it is full. Why:
    the kernel reads a sequence's 64 tokens as one stretch (issue #14, tenth pass). Every Python reader of the
    token-axis tables asks here (through `TensorStore.table_slots`: dequantize, select_batch, the torch
    reference, the Triton lookup); the C kernel's `tok_row` (attention/csrc/packed_cpu.c) is the same function,
    given `sealed` and ROW_BLOCK by the caller."""
    t = torch.arange(t0, t1, device=device).unsqueeze(1)
    b = torch.arange(batch, device=device)
    k = ROW_BLOCK
    blocked = (t // k) * (k * batch) + b * k + t % k
    return torch.where(t < sealed, blocked, t * batch + b)


def _class_ranks(cls: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """For each row of `cls` (uint8 [n] classes), its index among the rows of its class in `cls`, int64 [n];
    with `sizes` (rows of each class's table in all), its row in that table, `cls` being the table's last rows.
    One 1-D cumsum per class: on a GPU a cumsum down a [n, 3] one-hot is a scan along the outer dim, which ran
    ~1.5 ms per call at 30K rows on an H200 (results/efficiency/gpu/README.md)."""
    r = cls.long()
    out = torch.zeros_like(r)
    for c in (LOW, TEXT, FULL):
        m = r == c
        cs = m.long().cumsum(0)
        base = -1 if sizes is None else sizes[c] - 1 - cs[-1:]  # rows of the class before `cls` starts
        out = torch.where(m, cs + base, out)
    return out


def _cat(a: torch.Tensor | None, b: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return b if a is None else torch.cat([a, b], dim=dim)


def _to_device(x: torch.Tensor | np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    """A host tensor or array on `device`. To a GPU through pinned memory, asynchronously: a copy from pageable
    memory may wait for the device's queue, which is what keeping the bookkeeping on the host avoids."""
    if x is None:
        return None
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _append(a: torch.Tensor | None, b: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """`torch.cat([a, b], dim)` for append-only tensors, without copying `a` on every call.

    The result is a prefix view (along dim) of a buffer with spare capacity; while the spare lasts, an append
    writes only `b`. Why: a decode step appends one token to every packed table (and, for the 16-bit cache, to
    the tail), and a cat per step copies the whole history: 60 stores x tens of MB at batch 80 and 8K. The spare
    (1/GROWTH of the used size, at least RESERVE_MIN units) is not written before it is used; `nbytes` counts
    the used prefix, and the benchmark's peak RSS counts whatever of the spare the allocator made resident."""
    if a is None or a.numel() == 0:
        a = b.new_empty(b.shape[: dim % b.dim()] + (0,) + b.shape[dim % b.dim() + 1 :]) if a is None else a
    d = dim % b.dim()
    n, k = a.shape[d], b.shape[d]
    full = tuple(a.shape[:d]) + (n + k,) + tuple(a.shape[d + 1 :])
    room = _capacity(a, d)
    if room >= n + k:
        out = a.as_strided(full, a.stride(), a.storage_offset())
    else:  # a view past the buffer's start is a sliding window (the tail after a flush): a small reserve
        slide = SLIDE_RESERVE if d else 0
        room = n + k + (slide if a.storage_offset() else max(RESERVE_MIN, (n + k) // GROWTH))
        shape = tuple(a.shape[:d]) + (room,) + tuple(a.shape[d + 1 :])
        out = b.new_empty(shape).narrow(d, 0, n + k)
        out.narrow(d, 0, n).copy_(a)
    out.narrow(d, n, k).copy_(b)
    out._akvq_room = (d, room)
    return out


def _drop_front(a: torch.Tensor, d: int, m: int) -> torch.Tensor:
    """`a` without its first m units along d, keeping `_append`'s note of the room after it (a sliding tail)."""
    out = a.narrow(d, m, a.shape[d] - m)
    room = getattr(a, "_akvq_room", None)
    if room is not None and room[0] == d:
        out._akvq_room = (d, room[1] - m)
    return out


def _drop_back(a: torch.Tensor, n: int) -> torch.Tensor:
    """The first n units of an `_append`-made view along dim 0, keeping its note of the room (appends refill it)."""
    out = a.narrow(0, 0, n)
    room = getattr(a, "_akvq_room", None)
    if room is not None and room[0] == 0:
        out._akvq_room = room
    return out


def _overflows_half(x: torch.Tensor) -> bool:
    """Whether x has a finite value past fp16's range. One reduction when the largest |x| is in range (every
    append of an fp32 model asks; four passes were ~0.1 ms per store and step at batch 79)."""
    top = torch.finfo(torch.float16).max
    # a NaN or inf maximum fails the comparison, and the exact test below decides
    if not x.numel() or float(x.abs().amax()) <= top:
        return False
    return bool(((x.abs() > top) & torch.isfinite(x)).any())


def _capacity(a: torch.Tensor, d: int) -> int:
    """Units along dim d from a's start to its buffer's end, when a is a view made by `_append` (a prefix of its
    buffer, or along d > 0 a window of it that has slid forward); else a's length.

    `_append` and `_drop_front` note the answer on the view they return (`_akvq_room`): working it out from the
    strides and the storage took ~8 us, five times per store and step. Any other view carries no note."""
    room = getattr(a, "_akvq_room", None)
    if room is not None and room[0] == d:
        return room[1]
    off = a.storage_offset()
    if not a.numel() or not a.stride(d) or (off and d == 0):
        return a.shape[d]
    if d == 0:
        cap, start = a.untyped_storage().nbytes() // (a[0].numel() * a.element_size()), 0
    else:  # a contiguous buffer with `cap` along d has stride(d - 1) = cap * stride(d)
        cap = a.stride(d - 1) // a.stride(d)
        if off % a.stride(d) or off >= a.stride(d - 1):  # not a window along d of the buffer's first block
            return a.shape[d]
        start = off // a.stride(d)
    full = list(a.shape)
    full[d] = cap
    strides = [1] * a.dim()
    for i in range(a.dim() - 2, -1, -1):
        strides[i] = strides[i + 1] * full[i + 1]
    if list(a.stride()) != strides or a.untyped_storage().nbytes() < math.prod(full) * a.element_size():
        return a.shape[d]
    return cap - start


def _append_q(a: QTensor | None, b: QTensor, dim: int = 0) -> QTensor:
    if a is None:
        a = QTensor(None, None, None, b.bits, b.group_size, 0 if dim == -1 else b.n, b.float_zero)
    elif (
        b.scale.dtype.itemsize > a.scale.dtype.itemsize
    ):  # a piece that needed fp32 metadata widens the table
        a = QTensor(
            a.codes,
            a.scale.to(b.scale.dtype),
            a.zero.to(b.zero.dtype),
            a.bits,
            a.group_size,
            a.n,
            a.float_zero,
        )
    return QTensor(
        _append(a.codes, b.codes, dim),
        _append(a.scale, b.scale, dim),
        _append(a.zero, b.zero, dim),
        a.bits,
        a.group_size,
        a.n + (b.n if dim == -1 else 0),
        a.float_zero,
    )


@dataclass
class TensorStore:
    plan: TensorPlan
    text_bits: int | None
    hp_dtype: torch.dtype
    num_heads: int
    head_dim: int
    batch: int
    # [B, H, n, D] in hp_dtype; 8-bit window: int8 [B, H, n, D + 2 D/g], codes then fp16 scales
    # (`akvq.quant.q8`). Read values through `window()`.
    tail: torch.Tensor | None = None
    n_q: int = 0  # tokens that left the window
    cls: torch.Tensor | None = None  # uint8 [n_q * B] (token axis), in storage order (`token_rows`)
    tables: dict[int, QTensor] = field(default_factory=dict)  # class -> rows (token axis)
    hp_rows: torch.Tensor | None = None  # [N_high, H*D], original space
    hp_pos: torch.Tensor | None = None  # int32 row positions of hp_rows (channel axis only)
    chan: QTensor | None = None  # channel axis: codes [B, H*D, n_q * bits / 8]
    smooth: torch.Tensor | None = None  # fp16 [B, H*D]
    perm: torch.Tensor | None = None  # int16 [H*D] channel order (SKVQ reordering)
    # Evaluation speed-up: keep the dequantized history (numerically identical reads, fp memory). Off for
    # memory/throughput measurements; the packed tables are held and accounted either way.
    keep_dequantized: bool = False
    _deq: torch.Tensor | None = None
    _lookup_cls: torch.Tensor | None = None  # see `token_lookup`
    _lookup_slot: torch.Tensor | None = None
    _hp_at: tuple[torch.Tensor, torch.Tensor] | None = None  # see `high_positions`

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def group(self) -> int:
        return self.plan.row_group(self.num_heads, self.head_dim)

    @property
    def window_group(self) -> int:
        """Channels per scale of an 8-bit window (within one head)."""
        return math.gcd(WINDOW_GROUP, self.head_dim)

    @property
    def tail_len(self) -> int:
        return 0 if self.tail is None else self.tail.shape[-2]

    @property
    def sealed(self) -> int:
        """Packed tokens in sealed blocks (`token_rows`): every full block (token axis)."""
        return self.n_q // ROW_BLOCK * ROW_BLOCK if self.plan.axis == "token" else 0

    def bits_of(self, cls: int) -> int:
        return self.text_bits if cls == TEXT and self.text_bits else self.plan.bits

    def flushable(self, n_new: int, tail_len: int | None = None) -> int:
        """Tokens to move out of the tail before appending n_new, so that the window holds the newest ones
        (`tail_len`: plan ahead from a tail of that length instead of the current one)."""
        tail_len = self.tail_len if tail_len is None else tail_len
        m = min(tail_len + n_new - self.plan.window, tail_len)
        c = self.plan.chunk
        return max(0, m // c * c)

    # --- transforms between [B, H, n, D] and rows [n * B, H * D] ---
    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        b, h, n, d = x.shape
        return x.permute(2, 0, 1, 3).reshape(n * b, h * d)

    def _forward(self, rows: torch.Tensor) -> torch.Tensor:
        rows = rows.float()
        if self.plan.hadamard:
            rows = fwht(rows.unflatten(-1, (self.num_heads, self.head_dim))).flatten(-2)
        if self.smooth is not None:
            rows = (rows.view(-1, self.batch, self.width) / self.smooth.float()).view(-1, self.width)
        if self.perm is not None:
            rows = rows[:, self.perm.long()]
        return rows

    def _inverse(self, rows: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            rows = rows[:, torch.argsort(self.perm.long())]
        if self.smooth is not None:
            rows = (rows.view(-1, self.batch, self.width) * self.smooth.float()).view(-1, self.width)
        if self.plan.hadamard:
            rows = fwht(rows.unflatten(-1, (self.num_heads, self.head_dim))).flatten(-2)
        return rows

    def _calibrate(self, rows: torch.Tensor, pad: torch.Tensor | None = None) -> None:
        """Per-channel statistics from the first tokens that leave the window (the prompt): SmoothQuant scales,
        and SKVQ's channel reordering (channels sorted by a calibrated statistic, so each group holds like channels:
        `reorder_by="absmax"` their largest magnitude, `"center"` the middle of their [min, max], which keeps a
        channel offset to +10 apart from one offset to -10 -- the fixed-size-group stand-in for SKVQ's KMeans
        clusters of (min, max)). Pads are excluded."""
        a = self.plan.smooth_alpha
        if self.n_q or (a is None and not self.plan.reorder):
            return
        x = rows.float()
        if self.plan.hadamard:
            x = fwht(x.unflatten(-1, (self.num_heads, self.head_dim))).flatten(-2)
        pad = None if pad is None else pad.reshape(-1, 1)
        ax = x.abs() if pad is None else x.abs().masked_fill(pad, 0.0)
        amax = ax.view(-1, self.batch, self.width).amax(0).clamp_min(1e-5)
        if a is not None:
            s = amax.pow(a)
            self.smooth = (s / s.mean(-1, keepdim=True)).half()
            amax = amax / s
        if self.plan.reorder:
            if self.plan.reorder_by == "center":
                lo = x if pad is None else x.masked_fill(pad, float("inf"))
                hi = x if pad is None else x.masked_fill(pad, float("-inf"))
                div = self.smooth.float() if a is not None else 1.0
                lo, hi = (t.view(-1, self.batch, self.width) / div for t in (lo, hi))
                key = (lo.amin(0) + hi.amax(0)).mean(0)
            else:
                key = amax.amax(0)
            self.perm = torch.argsort(key).to(torch.int16)

    # --- write ---
    def append(self, x: torch.Tensor) -> None:
        """New tokens enter the window: as they are (16-bit), or quantized to 8 bits once, here."""
        # bf16 reaches 3e38 as fp32 does: its values past 65504 would become inf in an fp16 window too
        if self.hp_dtype == torch.float16 and x.dtype != torch.float16 and _overflows_half(x):
            self._widen_hp(x.dtype)
        if self.plan.window_bits == 8:
            self.tail = _append(self.tail, quantize_q8(x, self.window_group), dim=-2)
        else:
            self.tail = _append(self.tail, x.to(self.hp_dtype), dim=-2)

    def window(self, dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """The window's values [B, H, n, D]. A 16-bit tail is returned as stored (cast when dtype is given); an
        8-bit one is dequantized into a temporary (dtype, default fp32): every reader of the window (attention
        paths, replay, flush) comes through here, so none sees the int8 layout."""
        return None if self.tail is None else self._values(self.tail, dtype)

    def _values(self, tail: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`window()` of a slice of the tail along tokens (a flush reads only the tokens it moves out)."""
        if self.plan.window_bits == 16:
            return tail if dtype is None else tail.to(dtype)
        return dequantize_q8(tail, self.head_dim, self.window_group, dtype or torch.float32)

    def _widen_hp(self, dtype: torch.dtype) -> None:
        """Full-precision tokens of an fp32 or bf16 model kept in fp16 would turn finite values past 65504 into inf:
        from the first such token on, this store keeps them in `dtype` (and counts their bytes as such)."""
        self.hp_dtype = dtype
        if self.tail is not None and self.plan.window_bits == 16:
            self.tail = self.tail.to(dtype)
        if self.hp_rows is not None:
            self.hp_rows = self.hp_rows.to(dtype)

    def flush(self, m: int, classes: torch.Tensor, pad: torch.Tensor | None = None) -> None:
        """Quantize the m oldest tail tokens once; classes is uint8 [m, B]; pad (bool [m, B], True at left
        padding) keeps pad tokens out of statistics shared with real tokens. Both are read on the host (the cache
        keeps them there, `AKVQLayer.classes`): which rows go to which table is decided without reading the device."""
        old, self.tail = self._values(self.tail[:, :, :m]), _drop_front(self.tail, 2, m)
        dev = old.device
        flat = classes.reshape(-1).to(torch.uint8).cpu()
        pad = None if pad is None else pad.reshape(-1).cpu()
        orig = self._rows(old)
        self._calibrate(orig, _to_device(pad, dev))
        rows = self._forward(orig)
        if self.plan.axis == "channel":
            self._flush_channel(orig, rows, flat, m, pad)
        else:
            self._flush_token(orig, rows, flat)
        sealed = self.sealed
        self.n_q += m
        if self.sealed > sealed:
            self.seal(sealed)
        if self.keep_dequantized:
            self._deq = _cat(self._deq, self.dequantize(m, torch.float32), dim=-2)

    def _quantize(self, rows: torch.Tensor, bits: int) -> QTensor:
        p = self.plan
        return quantize(rows, bits, self.group, p.clip_for(bits), p.clip_search, p.float_zero, p.clip_mode)

    def _flush_token(self, orig: torch.Tensor, rows: torch.Tensor, flat: torch.Tensor) -> None:
        """`flat`: the rows' classes on the host (counted and selected there, in numpy: no device op)."""
        host = flat.numpy()
        counts = np.bincount(host, minlength=3)
        before = self._table_rows()
        for c in (LOW, TEXT, FULL):
            if counts[c] == 0:
                continue
            # a decode step's flush is usually one class: no row selection then
            sel = (
                slice(None) if counts[c] == host.size else _to_device(np.flatnonzero(host == c), rows.device)
            )
            if c == FULL:
                self.hp_rows = _append(self.hp_rows, orig[sel].to(self.hp_dtype))
                self._hp_at = None
            else:
                self.tables[c] = _append_q(self.tables.get(c), self._quantize(rows[sel], self.bits_of(c)))
        dev_flat = _to_device(flat, rows.device)
        self.cls = _append(self.cls, dev_flat)
        if self._lookup_slot is not None and self._lookup_slot.shape[0] == self.n_q * self.batch:
            # The Triton lookup, up to date: the new tokens' slots from the host (each class's rows went to the end
            # of its table in token order), instead of `table_slots` over them on every decode step (~30 launches
            # a store on a GPU, results/efficiency/gpu/README.md)
            rank = np.zeros(host.size, dtype=np.int64)
            for c in (LOW, TEXT, FULL):
                m = host == c
                rank[m] = before[c] + np.arange(int(counts[c]))
            self._lookup_cls = _append(self._lookup_cls, dev_flat)
            self._lookup_slot = _append(self._lookup_slot, _to_device(rank, rows.device))

    def _table_rows(self) -> list[int]:
        """Rows in each class's table (FULL: `hp_rows`), from the shapes: no device read."""
        sizes = [self.tables[c].codes.shape[0] if c in self.tables else 0 for c in (LOW, TEXT)]
        return [*sizes, 0 if self.hp_rows is None else self.hp_rows.shape[0]]

    def _flush_channel(
        self, orig: torch.Tensor, rows: torch.Tensor, flat: torch.Tensor, m: int, pad: torch.Tensor | None
    ) -> None:
        """`flat` and `pad`: on the host, as in `_flush_token`."""
        dev = rows.device
        high = flat.numpy() == FULL
        if high.any():
            pos = _to_device(np.flatnonzero(high), dev)
            self.hp_rows = _append(self.hp_rows, orig[pos].to(self.hp_dtype))
            self.hp_pos = _append(self.hp_pos, (pos + self.n_q * self.batch).to(torch.int32))
        skip = high if pad is None else high | pad.numpy()
        if skip.any():
            # A 16-bit token or a pad must not stretch its channel group: it stands in as the mean of the other
            # tokens of its own group of `group` tokens (a flush spans m / group groups).
            g = self.group
            r = rows.view(m // g, g, self.batch, self.width)
            keep = _to_device(~skip, dev).view(m // g, g, self.batch, 1).float()
            mean = (r * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
            rows = torch.where(keep.bool(), r, mean.expand_as(r)).view(-1, self.width)
        x = rows.view(m, self.batch, self.width).permute(1, 2, 0)  # [B, W, m], groups of `group` tokens
        self.chan = _append_q(self.chan, self._quantize(x, self.plan.bits), -1)

    @property
    def half_meta(self) -> bool:
        """Whether every packed table keeps fp16 scale/zero (a piece whose groups overflow fp16 keeps fp32)."""
        tables = [*self.tables.values(), *([self.chan] if self.chan is not None else [])]
        return all(qt.scale.dtype == torch.float16 and qt.zero.dtype == torch.float16 for qt in tables)

    @property
    def packable(self) -> bool:
        """Whether a layer hands attention packed stand-ins (`AKVQLayer.packed_views`) on decode steps; the
        attention then picks a path that folds this layout or dequantizes (`akvq.attention.register`). Not for
        SKVQ's channel permutation, which no fast path folds: those layers materialize K/V directly."""
        return self.perm is None

    # --- read ---
    def materialize(self, dtype: torch.dtype) -> torch.Tensor:
        """All tokens as [B, H, T, D]: the packed ones dequantized, then the tail, in token order."""
        tail = self.window(dtype)
        if self.n_q == 0:
            return tail
        return torch.cat([self.history(dtype), tail], dim=-2)

    def history(self, dtype: torch.dtype) -> torch.Tensor:
        """The packed tokens dequantized, [B, H, n_q, D] (the kept copy on the cached read path)."""
        return self._deq.to(dtype) if self.keep_dequantized else self.dequantize(self.n_q, dtype)

    def dequantize(self, m: int, dtype: torch.dtype) -> torch.Tensor:
        """The last m packed tokens as [B, H, m, D] (token axis: their rows found through `table_slots`)."""
        b, start = self.batch, (self.n_q - m) * self.batch
        if self.plan.axis == "channel":
            q, per = self.chan, self.plan.bits * self.group // 8
            g0 = (self.n_q - m) // self.group
            part = QTensor(
                q.codes[..., g0 * per :],
                q.scale[..., g0:],
                q.zero[..., g0:],
                q.bits,
                q.group_size,
                m,
                q.float_zero,
            )
            out = dequantize(part).permute(2, 0, 1).reshape(m * b, self.width)
        else:
            cls, slot = (x.reshape(-1) for x in self.table_slots(self.n_q - m, self.n_q))
            out = torch.empty(m * b, self.width, dtype=torch.float32, device=self.tail.device)
            for c, q in self.tables.items():
                sel = (cls == c).nonzero().squeeze(1)
                if sel.numel():
                    i = slot[sel]
                    part = QTensor(q.codes[i], q.scale[i], q.zero[i], q.bits, q.group_size, q.n, q.float_zero)
                    out[sel] = dequantize(part)
        out = self._inverse(out)
        if self.hp_rows is not None:
            if self.plan.axis == "channel":
                keep = self.hp_pos >= start
                pos, rows = self.hp_pos[keep].long() - start, self.hp_rows[keep]
            else:
                pos = (cls == FULL).nonzero().squeeze(1)
                rows = self.hp_rows[slot[pos]]
            out[pos] = rows.float()
        return out.view(m, b, self.num_heads, self.head_dim).permute(1, 2, 0, 3).to(dtype)

    def nbytes(self) -> StoreBytes:
        r = StoreBytes()
        if self.tail is not None and self.plan.window_bits == 8:  # int8 codes, then fp16 scales
            r.codes += self.tail[..., : self.head_dim].numel()
            r.meta += self.tail[..., self.head_dim :].numel()
        elif self.tail is not None:
            r.hp += self.tail.nbytes
        if self.hp_rows is not None:
            r.hp += self.hp_rows.nbytes
        for qt in [*self.tables.values(), *([self.chan] if self.chan is not None else [])]:
            r.codes += qt.codes.nbytes
            r.meta += qt.scale.nbytes + qt.zero.nbytes
        if self.smooth is not None:
            r.meta += self.smooth.nbytes
        if self.perm is not None:
            r.index += self.perm.nbytes
        for t in (self.cls, self.hp_pos, self._lookup_cls, self._lookup_slot, *(self._hp_at or ())):
            if t is not None:
                r.index += t.nbytes
        return r

    def seal(self, start: int) -> None:
        """Reorder the rows of tokens [start, sealed) from token-major (as flushes append them) to sealed blocks
        (`token_rows`). They are one stretch of storage rows, and each class's of them one stretch of its table:
        each is permuted in place. Also reads a cache saved before the blocked order (`start` 0)."""
        end = self.sealed
        if end <= start:
            return
        b, r0, r1 = self.batch, start * self.batch, end * self.batch
        old = token_rows(start, end, b, start, self.cls.device).reshape(-1) - r0
        new = token_rows(start, end, b, end, self.cls.device).reshape(-1) - r0
        src = torch.empty_like(old).index_copy_(0, new, old)  # new position -> old position
        cls = self.cls[r0:r1]
        cls_new = cls[src]
        rank = _class_ranks(cls)  # among its class's rows
        after = self.cls[r1:]
        for c in (LOW, TEXT, FULL):
            pick = rank[src[cls_new == c]]
            if pick.numel():
                parts = (
                    [self.hp_rows]
                    if c == FULL
                    else [getattr(self.tables[c], f) for f in ("codes", "scale", "zero")]
                )
                hi = parts[0].shape[0] - int((after == c).sum())
                for x in parts:
                    x[hi - pick.numel() : hi] = x[hi - pick.numel() : hi][pick]
        self.cls[r0:r1] = cls_new
        self._hp_at = None  # 16-bit rows of the block were reordered with it
        if self._lookup_slot is not None:  # the Triton lookup of the tokens from `start` on is stale
            keep = min(start * b, self._lookup_slot.shape[0])
            self._lookup_cls = _drop_back(self._lookup_cls, keep)
            self._lookup_slot = _drop_back(self._lookup_slot, keep)

    def table_slots(self, t0: int, t1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Where tokens [t0, t1) of every sequence are kept (token axis): (class uint8, slot int64), each
        [t1 - t0, B]; the slot is the row's index in its class table (FULL: in `hp_rows`). Counts only the
        storage rows from the first of them on (the rows before, per class, are the table's length less the rest),
        so a suffix of tokens costs its own size."""
        rows = token_rows(t0, t1, self.batch, self.sealed, self.cls.device)
        if not rows.numel():
            return self.cls.new_zeros(rows.shape), rows
        # the first of them in storage: token t0 of sequence 0 (computed here, not read back from the device)
        k = ROW_BLOCK
        lo = (t0 // k) * k * self.batch + t0 % k if t0 < self.sealed else t0 * self.batch
        rest = self.cls[lo:]
        slot = _class_ranks(rest, self._table_rows())
        return rest[rows - lo], slot[rows - lo]

    def high_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch index, token index) of each 16-bit row, in `hp_rows`' order (token axis). Kept until that order
        changes (a flush that adds 16-bit rows, `seal`, `select_batch`): pivots are few and fixed after the
        prompt, and finding them again from every token's class on each decode step (a pass over all rows and a
        host sync per store) was most of a GPU decode step (results/efficiency/gpu/README.md)."""
        if self._hp_at is None:
            cls, slot = self.table_slots(0, self.n_q)
            t, b = (cls == FULL).nonzero(as_tuple=True)
            order = slot[t, b].argsort()  # hp_rows' order (their slots)
            self._hp_at = (b[order], t[order])
        return self._hp_at

    def token_lookup(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`table_slots` of every packed token, flat in token order (t, b) -> t * B + b: (class uint8, slot int64),
        the Triton kernels' lookup, so that they need not know the storage order. Extended by the tokens flushed
        since the last call (tables are append-only), and counted in `nbytes` as index bytes."""
        if self.cls is None:
            return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
        done = 0 if self._lookup_slot is None else self._lookup_slot.shape[0] // self.batch
        if done < self.n_q:
            c, i = self.table_slots(done, self.n_q)
            self._lookup_cls = _append(self._lookup_cls, c.reshape(-1))
            self._lookup_slot = _append(self._lookup_slot, i.reshape(-1))
        return self._lookup_cls, self._lookup_slot

    def select_batch(self, idx: torch.Tensor) -> None:
        """Keep batch rows `idx` (with repeats, any order): beam search's reorder, and generate's expansion of
        each prompt into several sequences. Lossless: packed rows are gathered, never re-quantized."""
        idx = idx.long().to(self.tail.device if self.tail is not None else idx.device)
        b, n = self.batch, self.n_q
        if self.tail is not None:
            self.tail = self.tail.index_select(0, idx)
        if self.cls is not None:  # token axis: class tables hold their rows in storage order
            cls, slot = (x[:, idx] for x in self.table_slots(0, n))
            rows = token_rows(0, n, idx.numel(), self.sealed, cls.device).reshape(-1)
            new = self.cls.new_empty(rows.numel()).index_copy_(0, rows, cls.reshape(-1))
            at = torch.empty_like(rows).index_copy_(0, rows, slot.reshape(-1))
            for c in (LOW, TEXT, FULL):
                pos = at[new == c]
                if c == FULL:
                    if self.hp_rows is not None:
                        self.hp_rows = self.hp_rows.index_select(0, pos)
                elif c in self.tables:
                    qt = self.tables[c]
                    self.tables[c] = QTensor(
                        qt.codes[pos],
                        qt.scale[pos],
                        qt.zero[pos],
                        qt.bits,
                        qt.group_size,
                        qt.n,
                        qt.float_zero,
                    )
            self.cls = new
        if self.chan is not None:  # channel axis: batch-major codes; 16-bit rows at positions t * B + b
            q = self.chan
            self.chan = QTensor(
                q.codes.index_select(0, idx),
                q.scale.index_select(0, idx),
                q.zero.index_select(0, idx),
                q.bits,
                q.group_size,
                q.n,
                q.float_zero,
            )
            if self.hp_pos is not None:
                where = torch.full((n * b,), -1, dtype=torch.long, device=idx.device)
                where[self.hp_pos.long()] = torch.arange(self.hp_pos.numel(), device=idx.device)
                where = where.view(n, b)[:, idx].reshape(-1)
                keep = where >= 0
                self.hp_rows = self.hp_rows.index_select(0, where[keep])
                self.hp_pos = keep.nonzero().squeeze(1).to(torch.int32)
        if self.smooth is not None:
            self.smooth = self.smooth.index_select(0, idx)
        if self._deq is not None:
            self._deq = self._deq.index_select(0, idx)
        self._lookup_cls = self._lookup_slot = None
        self._hp_at = None
        self.batch = idx.numel()
