"""One decoder layer's quantized cache, following transformers' CacheLayerMixin.

Quantization is deferred: `update` first moves the tokens that have left the recent window out of the 16-bit
tail (once each), then appends the new ones. So the prefill attends in full precision, and roles and pivots
detected during the prefill (possibly in later layers) are known before any prompt token is quantized."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import CacheLayerMixin

from akvq.cache.store import HIGH, LOW, TEXT, StoreBytes, TensorStore
from akvq.policies.base import LayerPlan

if TYPE_CHECKING:
    from akvq.cache.cache import AKVQCache


class AKVQLayer(CacheLayerMixin):
    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self, plan: LayerPlan, owner: AKVQCache, layer_idx: int, hp_dtype: torch.dtype | str | None):
        super().__init__()
        self.plan = plan
        self.owner = owner
        self.layer_idx = layer_idx
        self.hp_dtype = hp_dtype
        self.k: TensorStore | None = None
        self.v: TensorStore | None = None

    def __repr__(self) -> str:
        return f"AKVQLayer({self.layer_idx}, {self.plan.pattern})"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        hp = self.hp_dtype or key_states.dtype
        if hp == "auto":  # 16-bit storage even when the model computes in fp32
            hp = key_states.dtype if key_states.element_size() == 2 else torch.float16
        full = self.plan.full_precision
        inf = _no_flush()
        keep = self.owner.read_path == "cached"
        self.k = TensorStore(inf if full else self.plan.k, self.plan.text_bits, hp, h, d, b, keep_dequantized=keep)
        self.v = TensorStore(
            inf if full else self.plan.v, self.plan.text_bits, hp, h, value_states.shape[-1], b, keep_dequantized=keep
        )
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n_new = key_states.shape[-2]
        for store, x in ((self.k, key_states), (self.v, value_states)):
            m = store.flushable(n_new)
            if m > 0:
                store.flush(m, self.classes(store.n_q, m))
            store.append(x)
        if n_new == 1 and self.owner.packed_reads and self.k.packable and self.v.packable:
            return self.packed_views(key_states.dtype)
        return self.k.materialize(key_states.dtype), self.v.materialize(value_states.dtype)

    def packed_views(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Stand-ins for K/V on a decode step when an attention function reads the packed stores itself
        (`akvq.attention`): the right shape [B, H, T, D] at no memory (one NaN, expanded), with the store at
        `.akvq_store`. NaN, so that an attention function that does not know them fails loudly, not silently."""
        out = []
        for store in (self.k, self.v):
            t = store.n_q + store.tail_len
            x = torch.full((1, 1, 1, 1), float("nan"), dtype=dtype, device=self.device)
            x = x.expand(store.batch, store.num_heads, t, store.head_dim)
            x.akvq_store = store
            x.akvq_attention = self.owner.attention
            out.append(x)
        return out[0], out[1]

    def classes(self, start: int, m: int) -> torch.Tensor:
        """Semantic precision class of positions [start, start + m) for each batch row, as uint8 [m, B]."""
        owner, plan = self.owner, self.plan
        b = self.k.batch
        cls = torch.full((m, b), LOW, dtype=torch.uint8, device=self.device)
        if plan.pattern == "tsa":
            vision = owner.window_of(owner.vision_mask, start, m, b, self.device)
            cls[~vision] = TEXT
        if plan.protect_pivots and owner.pivot_mask is not None:
            cls[owner.window_of(owner.pivot_mask, start, m, b, self.device)] = HIGH
        if plan.sink:
            cls[owner.window_of(owner.sink_mask(plan.sink, b), start, m, b, self.device)] = HIGH
        return cls

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

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self.k.select_batch(beam_idx)
            self.v.select_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

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


def _no_flush():
    from akvq.policies.base import TensorPlan

    return TensorPlan(window=1 << 62)
