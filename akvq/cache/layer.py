"""One decoder layer's quantized cache, following transformers' CacheLayerMixin.

Quantization is deferred: `update` first moves the tokens that have left the recent window out of the 16-bit
tail (once each), then appends the new ones. So the prefill attends in full precision, and roles and pivots
detected during the prefill (possibly in later layers) are known before any prompt token is quantized."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import CacheLayerMixin

from akvq.cache.store import FULL, LOW, TEXT, StoreBytes, TensorStore
from akvq.policies.base import LayerPlan, TensorPlan

if TYPE_CHECKING:
    from akvq.cache.cache import AKVQCache


def storage_dtype(hp: torch.dtype | str | None, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the 16-bit tokens: `auto` keeps 16 bits even when the model computes in fp32."""
    if hp is None:
        return model_dtype
    if hp == "auto":
        return model_dtype if model_dtype.itemsize == 2 else torch.float16
    return hp  # type: ignore[return-value]


class AKVQLayer(CacheLayerMixin):
    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, plan: LayerPlan, owner: AKVQCache, layer_idx: int, hp_dtype: torch.dtype | str | None):
        super().__init__()
        self.plan = plan
        self._owner = weakref.ref(owner)
        self.layer_idx = layer_idx
        self.hp_dtype = hp_dtype
        self.k: TensorStore | None = None
        self.v: TensorStore | None = None
        self._nans: dict[torch.dtype, torch.Tensor] = {}  # `packed_views`' stand-in values

    def __repr__(self) -> str:
        return f"AKVQLayer({self.layer_idx}, {self.plan.pattern})"

    # The cache holds its layers and a layer asks its cache (masks, read path): a strong back-reference made every
    # cache a reference cycle that only Python's cyclic GC frees, which runs on object counts, not bytes. A long
    # run (one cache a prompt, ~100 MB each at 4K) then grew by the caches it had finished with (RSS 2 -> 12 GB
    # over 125 prompts at 4K, 2026-12-05); `tests/test_cache_lifetime.py`.
    @property
    def owner(self) -> AKVQCache:
        owner = self._owner()
        if owner is None:
            raise ReferenceError("this AKVQLayer's cache is gone: keep the AKVQCache, not only its layers")
        return owner

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle: the owner as a plain reference
        state = dict(self.__dict__)
        state["_owner"] = self.owner
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["_owner"] = weakref.ref(state["_owner"])
        self.__dict__.update(state)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self._nans = {}
        b, h, _, d = key_states.shape
        self.owner.match_batch(b)
        hp = storage_dtype(self.hp_dtype, key_states.dtype)
        kplan, vplan = self.store_plans()
        keep = self.owner.read_path == "cached"
        self.k = TensorStore(kplan, self.plan.text_bits, hp, h, d, b, keep_dequantized=keep)
        self.v = TensorStore(
            vplan, self.plan.text_bits, hp, h, value_states.shape[-1], b, keep_dequantized=keep
        )
        self.is_initialized = True

    def store_plans(self) -> tuple[TensorPlan, TensorPlan]:
        """The K and V stores' plans (a full-precision layer: a window that never flushes)."""
        if self.plan.full_precision:
            return _no_flush(), _no_flush()
        return self.plan.k, self.plan.v

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n_new = key_states.shape[-2]
        if self.owner.replay_steps and n_new > 1:
            return self.replay_views(key_states, value_states)
        self._flush(n_new)
        self.k.append(key_states)
        self.v.append(value_states)
        if n_new == 1 and self.owner.packed_reads and self.k.packable and self.v.packable:
            return self.packed_views(key_states.dtype)
        return self.k.materialize(key_states.dtype), self.v.materialize(value_states.dtype)

    def _flush(self, n_new: int) -> None:
        """Move out of the 16-bit tail what must leave it before n_new tokens arrive (quantized once, here)."""
        done: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        for store in (self.k, self.v):
            m = store.flushable(n_new)
            if m > 0:
                at = (store.n_q, m)  # K and V usually flush the same positions: classes and pads once
                if at not in done:
                    done[at] = self.classes(*at), self.pads(*at)
                store.flush(m, *done[at])

    def settle(self) -> None:
        """Quantize the tokens that have already left the window (`AKVQCache.settle`)."""
        self._flush(0)

    def replay_views(
        self, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n tokens as if fed one per step, in one call: the stores end exactly as after n single-token updates,
        and the stand-ins returned carry what each step's query saw (`akvq.attention.replay` attends with it).

        Why exact: a token's K/V are quantized once, from its own values, when it leaves the window; so which
        version of position p the query at step t reads (dequantized if p was flushed by step t, else the 16-bit
        tail) follows from the flush schedule alone. The flushes run at the same sizes in the same order, except
        that per-token flushes after the first (which calibrates) are merged: per-token rows quantize alone."""
        out = []
        for store, x in ((self.k, key_states), (self.v, value_states)):
            n, start = x.shape[-2], store.n_q
            sizes, bounds, tail, nq = [], [], store.tail_len, store.n_q
            for _ in range(n):
                m = store.flushable(1, tail)
                sizes.append(m)
                nq += m
                bounds.append(nq)
                tail += 1 - m
            store.append(x)
            # The window's rows, positions [start, start + tail): what a step reads before a flush (16-bit, or
            # 8-bit dequantized: a token is quantized to 8 bits once, on entry, so every step reads the same).
            fresh = store.window()
            todo = [m for m in sizes if m]
            if store.plan.axis == "token" and len(todo) > 1:
                todo = todo[:1] + [sum(todo[1:])] if start == 0 else [sum(todo)]
            for m in todo:
                store.flush(m, self.classes(store.n_q, m))
            deq = store.history(x.dtype) if store.n_q else None
            stand_in = torch.full((1, 1, 1, 1), float("nan"), dtype=x.dtype, device=self.device)
            stand_in = stand_in.expand(store.batch, store.num_heads, start + fresh.shape[-2], store.head_dim)
            stand_in.akvq_replay = Replay(
                deq, fresh.to(x.dtype), start, torch.tensor(bounds, device=self.device)
            )
            out.append(stand_in)
        return out[0], out[1]

    def packed_views(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Stand-ins for K/V on a decode step when an attention function reads the packed stores itself
        (`akvq.attention`): the right shape [B, H, T, D] at no memory (one NaN, expanded), with the store at
        `.akvq_store`. NaN, so that an attention function that does not know them fails loudly, not silently."""
        out = []
        nan = self._nans.get(dtype)
        if nan is None:  # one per dtype: a fill per store and step is a launch on a GPU
            nan = self._nans[dtype] = torch.full((1, 1, 1, 1), float("nan"), dtype=dtype, device=self.device)
        for store in (self.k, self.v):
            t = store.n_q + store.tail_len
            x = nan.expand(store.batch, store.num_heads, t, store.head_dim)
            x.akvq_store = store
            x.akvq_attention = self.owner.attention
            out.append(x)
        return out[0], out[1]

    def classes(self, start: int, m: int) -> torch.Tensor:
        """Semantic precision class of positions [start, start + m) for each batch row, as uint8 [m, B] on the host
        (from the cache's host masks: the flush counts and selects rows by class without reading the device)."""
        owner, plan = self.owner, self.plan
        b = self.k.batch
        owner.match_batch(b)
        cls = torch.full((m, b), LOW, dtype=torch.uint8)
        if plan.pattern == "tsa":
            cls.masked_fill_(~owner.window_of(owner.vision_mask, start, m, b), TEXT)
        if plan.protect_pivots and owner.pivot_mask is not None:
            cls.masked_fill_(owner.window_of(owner.pivot_mask, start, m, b), FULL)
        if plan.sink:
            cls.masked_fill_(owner.window_of(owner.sink_mask(plan.sink, b), start, m, b), FULL)
        return cls

    def pads(self, start: int, m: int) -> torch.Tensor | None:
        """Left padding of positions [start, start + m) as bool [m, B] on the host (None: none there). Only the
        window is read: a decode step flushes one token, and `mask.all()` over the whole [B, T] prompt on each of
        them cost ~0.4 ms a layer at batch 79 and 8K (issue #14)."""
        mask = self.owner.attention_mask
        if mask is None:
            return None
        stop = min(start + m, mask.shape[1])
        if stop <= start or mask[:, start:stop].numpy().all():
            return None
        return self.owner.window_of(~mask, start, m, self.k.batch)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        return self.k.n_q + self.k.tail_len

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.k = self.v = None
        self.is_initialized = False

    def select_batch(self, idx: torch.Tensor) -> None:
        """This layer's stores only; `AKVQCache.select_batch` also gathers the prompt masks."""
        if self.is_initialized:
            self.k.select_batch(idx)
            self.v.select_batch(idx)

    def nbytes(self) -> StoreBytes:
        r = StoreBytes()
        if self.is_initialized:
            r += self.k.nbytes()
            r += self.v.nbytes()
        return r

    def elements(self) -> int:
        if not self.is_initialized:
            return 0
        t = self.get_seq_length()
        return self.k.batch * t * (self.k.width + self.v.width)


@dataclass
class Replay:
    """One of K or V over a replayed multi-token update: `deq` the dequantized positions [0, n_q_end), `fresh`
    the 16-bit ones [start, T), and `bounds[t]` = positions the query of step t reads dequantized."""

    deq: torch.Tensor | None
    fresh: torch.Tensor
    start: int
    bounds: torch.Tensor


def _no_flush() -> TensorPlan:
    return TensorPlan(window=1 << 62)
