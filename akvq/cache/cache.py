"""The transformers Cache that AKVQ and every baseline share: per-layer plans come from a policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers.cache_utils import Cache

from akvq.cache.layer import AKVQLayer, storage_dtype
from akvq.cache.store import StoreBytes
from akvq.policies.base import Policy

_DTYPES = {
    "auto": "auto",
    "model": None,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


@dataclass
class MemoryReport:
    """Bytes actually held, by category, and bits per cached K/V element with everything counted."""

    codes_bytes: int
    meta_bytes: int
    hp_bytes: int
    index_bytes: int
    elements: int

    @property
    def total_bytes(self) -> int:
        return self.codes_bytes + self.meta_bytes + self.hp_bytes + self.index_bytes

    @property
    def effective_bits(self) -> float:
        return 8.0 * self.total_bytes / self.elements if self.elements else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_bytes": self.total_bytes, "effective_bits": self.effective_bits}


READ_PATHS = ("dequantize", "cached")


class AKVQCache(Cache):
    """`read_path`: "dequantize" rebuilds K/V from the packed tables every step (the reference); "cached" keeps
    the dequantized history as well, for fast accuracy runs (same numbers, not for memory measurements)."""

    # True: decode steps return `AKVQLayer.packed_views` instead of dequantized K/V; set by
    # `akvq.attention.use_packed` together with an attention implementation that reads them.
    packed_reads: bool = False
    # True: a multi-token update stands for that many single-token decode steps (`AKVQLayer.replay_views`); set
    # by `akvq.attention.replay.replayed` together with the attention implementation that reads it.
    replay_steps: bool = False
    attention: str = "auto"  # which decode path reads the packed stores (`akvq.attention.paths`)

    def __init__(self, policy: Policy, num_layers: int, read_path: str = "dequantize"):
        if read_path not in READ_PATHS:
            raise ValueError(f"read_path must be one of {READ_PATHS}, got {read_path!r}")
        self.policy = policy
        self.read_path = read_path
        hp = _DTYPES[policy.hp_dtype]
        layers = [AKVQLayer(policy.layer_plan(i, num_layers), self, i, hp) for i in range(num_layers)]
        super().__init__(layers=layers)
        self.vision_mask: torch.Tensor | None = None
        self.pivot_mask: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None

    @staticmethod
    def prefill_reads(policy: Policy, num_layers: int, model_dtype: torch.dtype) -> tuple | None:
        """What the prefill's attention reads from this policy's cache: the prompt's K/V as its 16-bit tail stores
        them (nothing is quantized before the next update). Policies with equal answers see the same prefill, so
        one prefill serves them all (`akvq.api.generate_shared`); None (an 8-bit window, which the prefill reads
        quantized) shares with nobody."""
        for i in range(num_layers):
            plan = policy.layer_plan(i, num_layers)
            if any(t is not None and t.window_bits != 16 for t in (plan.k, plan.v)):
                return None
        return ("16-bit tail", storage_dtype(_DTYPES[policy.hp_dtype], model_dtype))

    def prompt_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the prompt's K/V per layer, as held after the prefill and before any flush, in the model's
        dtype: what `akvq.api.cache_from_prefill` hands a policy with the same `prefill_reads`."""
        out = []
        for layer in self.layers:
            if layer.k.n_q or layer.v.n_q or layer.k.plan.window_bits != 16 or layer.v.plan.window_bits != 16:
                raise RuntimeError("prompt_kv reads a cache right after its prefill, with 16-bit windows")
            out.append((layer.k.window(layer.dtype).clone(), layer.v.window(layer.dtype).clone()))
        return out

    # --- what the policy needs to know about the prompt's tokens ---
    # The prompt masks are kept on the host (CPU), whatever the model's device: every flush decides from them which
    # rows go to which table, and reading that from a GPU would stop the host for the device's queue in every layer
    # of every step (`akvq.bench.syncs`; results/efficiency/gpu/README.md). One copy per prompt.
    def set_token_roles(self, vision_mask: torch.Tensor) -> None:
        """True where the prompt token is a vision token; tokens past the prompt are text."""
        self.vision_mask = vision_mask.bool().cpu()

    def set_pivots(self, pivot_mask: torch.Tensor) -> None:
        self.pivot_mask = pivot_mask.bool().cpu()

    def set_attention_mask(self, attention_mask: torch.Tensor) -> None:
        """The prompt's padding (1 = real token), so sink tokens are the first real ones."""
        self.attention_mask = attention_mask.bool().cpu()

    MASKS = ("vision_mask", "pivot_mask", "attention_mask")

    def match_batch(self, batch: int) -> None:
        """`generate` repeats each prompt row (num_return_sequences, beams) after the cache got the prompt's
        masks: repeat them the same way (row i -> rows i*n .. i*n + n - 1)."""
        for name in self.MASKS:
            m = getattr(self, name)
            if m is not None and m.shape[0] != batch and batch % m.shape[0] == 0:
                setattr(self, name, m.repeat_interleave(batch // m.shape[0], dim=0))

    def select_batch(self, idx: torch.Tensor) -> None:
        """Keep batch rows `idx` (repeats allowed) in every layer and prompt mask; lossless (rows are gathered)."""
        for layer in self.layers:
            layer.select_batch(idx)
        for name in self.MASKS:
            m = getattr(self, name)
            if m is not None:
                setattr(self, name, m.index_select(0, idx.cpu()))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.select_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.select_batch(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        sizes = [lay.k.batch for lay in self.layers if lay.is_initialized]
        sizes += [getattr(self, n).shape[0] for n in self.MASKS if getattr(self, n) is not None]
        if sizes:
            self.select_batch(torch.arange(sizes[0]).repeat_interleave(repeats))

    def sink_mask(self, n: int, batch: int) -> torch.Tensor:
        if self.attention_mask is None:
            return torch.ones(batch, n, dtype=torch.bool)
        return (self.attention_mask.long().cumsum(-1) <= n) & self.attention_mask

    @staticmethod
    def window_of(mask: torch.Tensor | None, start: int, m: int, batch: int) -> torch.Tensor:
        """mask[B, T_prompt] cut to positions [start, start + m) as [m, B], on the host; outside the prompt: False."""
        out = torch.zeros(m, batch, dtype=torch.bool)
        if mask is None:
            return out
        if mask.shape[0] != batch:
            raise ValueError(f"token mask has batch {mask.shape[0]}, cache has {batch}")
        stop = min(start + m, mask.shape[1])
        if stop > start:
            out[: stop - start] = mask[:, start:stop].T.cpu()
        return out

    def settle(self) -> None:
        """Quantize what has left the window but waits for the next update (quantization is deferred to it):
        a generation that ends on its prefill token (EOS first) never runs one, and its memory report would
        count a method's cache as 16-bit (`akvq.api.final_report`). Changes no output."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.settle()

    def memory_report(self) -> MemoryReport:
        total = StoreBytes()
        elements = 0
        for layer in self.layers:
            total += layer.nbytes()
            elements += layer.elements()
        extra = sum(getattr(self, n).nbytes for n in self.MASKS if getattr(self, n) is not None)
        return MemoryReport(total.codes, total.meta, total.hp, total.index + extra, elements)
