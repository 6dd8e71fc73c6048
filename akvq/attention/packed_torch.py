"""Decode attention (one query token) straight from the packed cache, in vectorized torch (CPU, any device).

Why: `TensorStore.materialize` rebuilds the whole history in full precision every step, which moves more bytes than
a 16-bit cache. Here the packed codes are read in chunks of tokens, turned into float codes through a byte lookup
table, and scale/zero are folded into the reductions instead of being applied to every element:

    scores:  q . (s (c - z))       = s (q_g . c_g) - s z sum(q_g)        per group g of channels (per-token groups)
    output:  sum_t p_t s_t (c_t - z_t) = sum_t (p_t s_t) c_t - sum_t p_t s_t z_t

The Walsh-Hadamard transform and the SmoothQuant scales are applied once to q (scores) and once to the output
(values), never to the cache: (qH)(kH)^T = qk^T and sum_t p_t H(x_t) = H(sum_t p_t x_t). 16-bit rows (pivots, sink)
and the recent-window tail are exact. No tensor larger than one chunk of tokens is ever built in full precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from akvq.cache.store import LOW, TensorStore
from akvq.quant.hadamard import fwht
from akvq.quant.packing import unpack

_LUTS: dict[tuple[int, str], torch.Tensor] = {}
CHUNK_ELEMENTS = 1 << 21  # float elements of one dequantized chunk (8 MiB in fp32: inside the L3 cache)


def _lut(bits: int, device: torch.device) -> torch.Tensor:
    """byte -> its 8/bits codes as floats, lowest bits first (the packing order of `akvq.quant.packing`)."""
    key = (bits, str(device))
    if key not in _LUTS:
        per = 8 // bits
        b = torch.arange(256, dtype=torch.int32)
        shifts = torch.arange(0, 8, bits, dtype=torch.int32)
        _LUTS[key] = ((b[:, None] >> shifts) & ((1 << bits) - 1)).float().to(device).reshape(256, per)
    return _LUTS[key]


def unpack_float(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Packed uint8 codes -> float32 codes, last dim n; one table lookup per byte. Kept beside
    `akvq.quant.packing.unpack` (the reference, uint8 out, which it falls back to for 3 bits): a float-valued LUT
    path for the decode reads, where unpack-then-convert costs two passes; tests check both agree."""
    if bits not in (1, 2, 4, 8):
        return unpack(packed, bits, n).float()
    lut = _lut(bits, packed.device)
    out = lut.index_select(0, packed.reshape(-1).int()).view(*packed.shape[:-1], -1)
    return out if out.shape[-1] == n else out[..., :n]


def _chunk_tokens(store: TensorStore, multiple: int = 1) -> int:
    t = max(1, CHUNK_ELEMENTS // max(1, store.batch * store.width))
    return max(multiple, t // multiple * multiple)


def planes(packed: torch.Tensor, bits: int) -> list[torch.Tensor]:
    """Packed bytes -> 8/bits float tensors of the same shape: plane i holds the code of channel per*j + i.

    One shift, one mask and one conversion per plane, all vectorized; the caller splits q (or the weights) the
    same way instead of interleaving the codes back, so no per-element gather is ever needed."""
    per, m = 8 // bits, (1 << bits) - 1
    out = []
    for i in range(per):
        x = packed >> (bits * i) if i else packed
        out.append((x & m if i < per - 1 else x).float())
    return out


def planes_into(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Packed bytes [..., NB] -> float codes [..., per, NB] in plane-major order (plane i = channels per*j + i),
    one contiguous tensor so a single matmul over all D channels follows."""
    if bits not in (1, 2, 4, 8):  # 3-bit codes straddle bytes: unpack them in channel order (one plane)
        return unpack(packed, bits, packed.shape[-1] * 8 // bits).float().unsqueeze(-2)
    per, m = 8 // bits, (1 << bits) - 1
    if per == 1:
        return packed.float().unsqueeze(-2)
    # planes stacked as bytes first (1 byte per code), then one contiguous conversion to float
    u = torch.stack(
        [(packed >> (bits * i) if i else packed) & m for i in range(per - 1)] + [packed >> (8 - bits)], -2
    )
    return u.float()


def _segment_planes(by: torch.Tensor, bits: int, ns: int) -> torch.Tensor:
    """One head's packed row [..., D*bits/8] -> float codes [..., ns, per, seg/per] per segment, plane-major.

    3-bit codes straddle bytes, and a segment of `seg` codes need not end on a byte (4 codes = 1.5 bytes):
    such rows are unpacked whole, then cut into segments (one plane, channel order)."""
    if bits in (1, 2, 4, 8):
        return planes_into(by.unflatten(-1, (ns, -1)), bits)
    return unpack(by, bits, by.shape[-1] * 8 // bits).float().unflatten(-1, (ns, 1, -1))


def _per(bits: int) -> int:
    """Planes per byte in `planes_into`: 8/bits, or 1 for widths that straddle bytes."""
    return 8 // bits if bits in (1, 2, 4, 8) else 1


def plane_major(x: torch.Tensor, per: int) -> torch.Tensor:
    """Channels d = per*j + i of the last dim reordered to (i, j): the order of `planes_into`."""
    return x.unflatten(-1, (-1, per)).transpose(-1, -2).flatten(-2)


# --- token axis: one class table per precision, rows where `TensorStore.table_slots` says --
def _token_chunks(
    store: TensorStore,
) -> Iterator[tuple[int, int, int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per chunk of tokens and per class present in it: (t0, t1, bits, bytes [B, H, ct, D*bits/8] uint8,
    scale [B, H, ct, D/seg], zero [B, H, ct, D/seg]) in float32. Rows of other classes are zero codes with zero
    scale, so they add nothing; 16-bit rows are handled exactly elsewhere."""
    b, h, d = store.batch, store.num_heads, store.head_dim
    seg, rep = _segments(store)
    ns = d // seg
    step = _chunk_tokens(store)
    dev = store.cls.device
    cls_all, slot_all = store.table_slots(0, store.n_q)  # [n_q, B], the rows in token order
    for t0 in range(0, store.n_q, step):
        t1 = min(store.n_q, t0 + step)
        ct = t1 - t0
        rows = ct * b
        local, slots = cls_all[t0:t1].reshape(-1), slot_all[t0:t1].reshape(-1)
        counts = torch.bincount(local, minlength=3).tolist()
        for c, qt in store.tables.items():
            k = counts[c]
            if k == 0:
                continue
            idx = None if k == rows else (local == c).nonzero().squeeze(1)
            at = slots if idx is None else slots[idx]
            codes, scale, zero = qt.codes[at], qt.scale[at], qt.zero[at]
            if idx is not None:
                codes = torch.zeros(rows, codes.shape[1], dtype=codes.dtype, device=dev).index_copy_(
                    0, idx, codes
                )
                scale = torch.zeros(rows, scale.shape[1], dtype=scale.dtype, device=dev).index_copy_(
                    0, idx, scale
                )
                zero = torch.zeros(rows, zero.shape[1], dtype=zero.dtype, device=dev).index_copy_(
                    0, idx, zero
                )
            by = codes.view(ct, b, h, -1).permute(1, 2, 0, 3).contiguous()
            scale, zero = scale.float(), zero.float()
            if rep > 1:
                scale, zero = scale.repeat_interleave(rep, -1), zero.repeat_interleave(rep, -1)
            s = scale.view(ct, b, h, ns).permute(1, 2, 0, 3).contiguous()
            z = zero.view(ct, b, h, ns).permute(1, 2, 0, 3).contiguous()
            yield t0, t1, qt.bits, by, s, z


def _segments(store: TensorStore) -> tuple[int, int]:
    """(segment length, groups' repeat): a segment is a group cut to one head, so every dot stays inside a head."""
    seg = min(store.group, store.head_dim)
    return seg, store.group // seg


def _token_scores(store: TensorStore, qt: torch.Tensor, out: torch.Tensor) -> None:
    """out[B, H, G, n_q] = qt . k for the packed rows; qt [B, H, G, D] is already in the stored space."""
    b, h, g, d = qt.shape
    seg, _ = _segments(store)
    ns = d // seg
    qsum = qt.reshape(b, h, g, ns, seg).sum(-1).unsqueeze(3)  # [B, H, G, 1, ns]
    qseg = qt.reshape(b, h, g, ns, seg)
    qplanes: dict[int, torch.Tensor] = {}
    out[...] = 0
    for t0, t1, bits, by, s, z in _token_chunks(store):
        per, ct = _per(bits), t1 - t0
        if bits not in qplanes:  # q in the codes' plane-major order, per segment
            qplanes[bits] = plane_major(qseg, per).contiguous()
        qp = qplanes[bits]
        f = _segment_planes(by, bits, ns)  # [B, H, ct, ns, per, seg/per]
        if ns == 1:
            dots = (qp[:, :, :, 0] @ f.view(b, h, ct, seg).transpose(-1, -2)).unsqueeze(-1)
        else:
            dots = torch.einsum("bhgks,bhtks->bhgtk", qp, f.view(b, h, ct, ns, seg))
        s, z = s.unsqueeze(2), z.unsqueeze(2)  # [B, H, 1, ct, ns]
        out[..., t0:t1] += (dots * s).sum(-1) - (s * z * qsum).sum(-1)


def _token_output(store: TensorStore, p: torch.Tensor) -> torch.Tensor:
    """sum_t p_t (x_t before the inverse transform) over packed rows: [B, H, G, D]; p is [B, H, G, n_q]."""
    b, h, g, _ = p.shape
    d = store.head_dim
    seg, _ = _segments(store)
    ns = d // seg
    acc: dict[int, torch.Tensor] = {}  # per bit width, in that width's plane-major order
    zterm = torch.zeros(b, h, g, ns, 1, device=p.device)
    for t0, t1, bits, by, s, z in _token_chunks(store):
        ct = t1 - t0
        w = p[..., t0:t1].unsqueeze(-1) * s.unsqueeze(2)  # [B, H, G, ct, ns]
        f = _segment_planes(by, bits, ns).reshape(b, h, ct, ns, seg)
        if ns == 1:
            part = (w[..., 0].contiguous() @ f.view(b, h, ct, seg)).unsqueeze(3)
        else:
            part = torch.einsum("bhgtk,bhtks->bhgks", w, f)
        acc[bits] = part if bits not in acc else acc[bits] + part
        zterm += (w * z.unsqueeze(2)).sum(3).unsqueeze(-1)
    out = -zterm.expand(b, h, g, ns, seg)
    for bits, a in acc.items():  # back from plane-major to channel order
        per = _per(bits)
        out = out + a.unflatten(-1, (per, -1)).transpose(-1, -2).flatten(-2)
    return out.reshape(b, h, g, d)


# --- channel axis (KIVI keys): codes [B, W, n_q] packed along tokens, groups of `group` tokens --------------------
def _channel_chunks(
    store: TensorStore,
) -> Iterator[tuple[int, int, list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """(t0, t1, planes of codes [B, W, ct/per] each, scale [B, W, ct/group], zero) per chunk of whole groups.

    Plane i holds tokens per*j + i; bit widths that do not divide a byte use one plane of unpacked codes."""
    qt, gs = store.chan, store.group
    per = 8 // qt.bits if qt.bits in (1, 2, 4, 8) and gs % (8 // qt.bits) == 0 else 1
    step = _chunk_tokens(store, gs)
    for t0 in range(0, store.n_q, step):
        t1 = min(store.n_q, t0 + step)
        if per > 1 or qt.bits == 8:
            pl = planes(qt.codes[..., t0 // per : t1 // per], qt.bits)
        else:
            pl = [unpack(qt.codes, qt.bits, qt.n)[..., t0:t1].float()]
        yield (
            t0,
            t1,
            pl,
            qt.scale[..., t0 // gs : t1 // gs].float(),
            qt.zero[..., t0 // gs : t1 // gs].float(),
        )


def _channel_scores(store: TensorStore, qt: torch.Tensor, out: torch.Tensor) -> None:
    b, h, g, d = qt.shape
    gs = store.group
    for t0, t1, pl, scale, zero in _channel_chunks(store):
        n, per = (t1 - t0) // gs, len(pl)
        s = scale.view(b, h, 1, d, n)
        qs = qt.unsqueeze(-1) * s  # [B, H, G, D, n]: the scale varies per channel, so it folds into q
        sc = torch.stack(
            [torch.einsum("bhgdn,bhdnj->bhgnj", qs, f.view(b, h, d, n, gs // per)) for f in pl], -1
        )  # [B, H, G, n, gs/per, per]: token per*j + i
        sc = sc.flatten(-2) - (qs * zero.view(b, h, 1, d, n)).sum(3).unsqueeze(-1)
        out[..., t0:t1] = sc.reshape(b, h, g, n * gs)


def _channel_output(store: TensorStore, p: torch.Tensor) -> torch.Tensor:
    b, h, g, _ = p.shape
    d, gs = store.head_dim, store.group
    acc = torch.zeros(b, h, g, d, device=p.device)
    for t0, t1, pl, scale, zero in _channel_chunks(store):
        n, per = (t1 - t0) // gs, len(pl)
        pc = p[..., t0:t1].reshape(b, h, g, n, gs // per, per)
        r = sum(
            torch.einsum("bhgnj,bhdnj->bhgdn", pc[..., i], f.view(b, h, d, n, gs // per))
            for i, f in enumerate(pl)
        )
        s = scale.view(b, h, 1, d, n)
        acc += (r * s).sum(-1)
        acc -= (s * zero.view(b, h, 1, d, n) * pc.sum((-1, -2)).unsqueeze(3)).sum(-1)
    return acc


# --- exact parts ----------------------------------------------------------------------------------------------------
def _high_positions(store: TensorStore) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(batch index, token index) of each 16-bit row, in the order of `hp_rows`."""
    if store.hp_rows is None:
        return None
    if store.plan.axis == "channel":
        pos = store.hp_pos.long()
        return pos % store.batch, pos // store.batch
    return store.high_positions()


def _prepare_q(store: TensorStore, q: torch.Tensor) -> torch.Tensor:
    """q in the space the codes live in: WHT per head, then times the SmoothQuant scales."""
    if store.plan.hadamard:
        q = fwht(q)
    if store.smooth is not None:
        q = q * store.smooth.float().view(store.batch, store.num_heads, 1, store.head_dim)
    return q


def _finish_out(store: TensorStore, o: torch.Tensor) -> torch.Tensor:
    """Back from the stored space: times the SmoothQuant scales, then WHT (self-inverse)."""
    if store.smooth is not None:
        o = o * store.smooth.float().view(store.batch, store.num_heads, 1, store.head_dim)
    if store.plan.hadamard:
        o = fwht(o)
    return o


def store_scores(store: TensorStore, q: torch.Tensor) -> torch.Tensor:
    """q . k for every cached token of one K store, in token order: [B, H, G, n_q + tail]; q is [B, H, G, D]."""
    b, h, g, _ = q.shape
    nt = store.tail_len
    out = torch.empty(b, h, g, store.n_q + nt, device=q.device)
    if store.n_q:
        qt = _prepare_q(store, q)
        if store.plan.axis == "channel":
            _channel_scores(store, qt, out)
        else:
            _token_scores(store, qt, out)
    return exact_scores(store, q, out)


def exact_scores(store: TensorStore, q: torch.Tensor, out: torch.Tensor, tail: bool = True) -> torch.Tensor:
    """Write the scores of the 16-bit rows and (unless a kernel did) the tail, computed exactly, into `out`."""
    h = q.shape[1]
    hi = _high_positions(store) if store.n_q else None
    if hi is not None:
        bi, ti = hi
        rows = store.hp_rows.float().view(-1, h, store.head_dim)
        out.permute(0, 3, 1, 2)[bi, ti] = torch.einsum("nhgd,nhd->nhg", q[bi], rows)
    if tail and store.tail_len:
        out[..., store.n_q :] = torch.einsum("bhgd,bhtd->bhgt", q, store.window(torch.float32))
    return out


def store_output(store: TensorStore, p: torch.Tensor) -> torch.Tensor:
    """sum_t p_t v_t over one V store: [B, H, G, D]; p is [B, H, G, n_q + tail] (already normalized)."""
    b, h, g, _ = p.shape
    n = store.n_q
    out = torch.zeros(b, h, g, store.head_dim, device=p.device)
    if n:
        pq = p[..., :n]
        hi = _high_positions(store)
        if store.plan.axis == "channel":
            if hi is not None:  # the codes there hold a stand-in, not the token
                pq = pq.clone()
                pq.permute(0, 3, 1, 2)[hi[0], hi[1]] = 0
            out = _finish_out(store, _channel_output(store, pq))
        else:
            out = _finish_out(store, _token_output(store, pq))
    return exact_output(store, p, out)


def exact_output(store: TensorStore, p: torch.Tensor, out: torch.Tensor, tail: bool = True) -> torch.Tensor:
    """Add the 16-bit rows' and (unless a kernel did) the tail's share of sum_t p_t v_t, exactly, to `out`."""
    h = p.shape[1]
    hi = _high_positions(store) if store.n_q else None
    if hi is not None:
        bi, ti = hi
        w = p.permute(0, 3, 1, 2)[bi, ti]  # [N, H, G]
        rows = store.hp_rows.float().view(-1, h, store.head_dim)
        out.index_add_(0, bi, w.unsqueeze(-1) * rows.unsqueeze(2))
    if tail and store.tail_len:
        out += torch.einsum("bhgt,bhtd->bhgd", p[..., store.n_q :], store.window(torch.float32))
    return out


def apply_mask(scores: torch.Tensor, mask: torch.Tensor | None, inplace: bool = False) -> torch.Tensor:
    """scores [B, H, G, T]; mask [B, 1, 1, T] (bool: True = attend, or additive float) or None. `inplace` writes
    into `scores` (the caller owns it)."""
    if mask is None:
        return scores
    b, h, g, t = scores.shape
    m = mask[..., -t:].reshape(mask.shape[0], 1, 1, t)
    if m.dtype == torch.bool:
        return scores.masked_fill_(~m, float("-inf")) if inplace else scores.masked_fill(~m, float("-inf"))
    return scores.add_(m.float()) if inplace else scores + m.float()


def softmax_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, written into x (torch's own kernel, its `out=` form: the same values as
    torch.softmax without a second [B, H, G, T] tensor)."""
    return torch._softmax(x, -1, False, out=x)


def packed_decode(
    query: torch.Tensor,
    kstore: TensorStore,
    vstore: TensorStore,
    attention_mask: torch.Tensor | None,
    scaling: float,
    scores: Callable[[TensorStore, torch.Tensor], torch.Tensor] | None = None,
    output: Callable[[TensorStore, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """softmax(q K^T * scaling + mask) V for one query token over the packed stores: [B, Hq, 1, D] (query's dtype).

    GQA: the Hq query heads are grouped G = Hq / H per KV head, so K/V are never repeated. `scores`/`output`
    default to this module's torch path; the Triton path passes its kernels."""
    b, hq, lq, d = query.shape
    if lq != 1:
        raise ValueError(f"the packed path is for decode steps (one query token), got {lq}")
    h = kstore.num_heads
    # the scaling goes into q (B * Hq * D multiplies, not a pass over [B, H, G, T]); every scores function returns a
    # fresh [B, H, G, T] tensor, so it is masked and softmaxed in place: at batch 79 and 8K each copy would be 23 MB
    # of page faults and one more pass per layer and step
    q = query.float().reshape(b, h, hq // h, d) * scaling
    s = apply_mask((scores or store_scores)(kstore, q), attention_mask, inplace=True)
    o = (output or store_output)(vstore, softmax_(s))
    return o.reshape(b, hq, 1, vstore.head_dim).to(query.dtype)


__all__ = ["LOW", "apply_mask", "packed_decode", "softmax_", "store_output", "store_scores", "unpack_float"]
