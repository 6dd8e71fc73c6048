"""Memory side of the benchmark: peak memory of this process, a cache copied along the batch, saving a prefilled cache.

Why repeat a cache: a CPU prefill of 8K tokens takes about a minute, so one prefill (batch 1) is quantized once and
copied to the batch being measured; decode cost and cache bytes are those of a real batch of that size."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import torch

from akvq.cache import AKVQCache
from akvq.cache.store import TensorStore

GiB = 1 << 30


def peak_memory_bytes(device: str = "cpu") -> int:
    """CUDA: max_memory_allocated; CPU: this process's peak resident set (a fresh process per point)."""
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def limit_data(nbytes: int | None) -> None:
    """Cap this process's data segment (heap and anonymous mappings) so an over-budget point fails with an
    allocation error instead of pushing a shared machine into swap."""
    if nbytes:
        resource.setrlimit(resource.RLIMIT_DATA, (int(nbytes), int(nbytes)))


def repeat_store(st: TensorStore, n: int) -> None:
    """Copy every sequence of one store n times along the batch, in place, keeping the storage layout."""
    st.select_batch(torch.arange(st.batch).repeat_interleave(n))


def repeat_cache(cache: AKVQCache, n: int) -> AKVQCache:
    """Every layer and every prompt mask copied n times along the batch (in place; returns the cache)."""
    if n > 1:
        cache.batch_repeat_interleave(n)
    return cache


def save_cache(cache: AKVQCache, path: str | Path, extra: dict[str, Any]) -> None:
    """The stores of every layer plus the prompt masks and `extra` (next token, sequence length)."""
    state = {
        "stores": [(lay.k, lay.v) for lay in cache.layers],
        "dtype": cache.layers[0].dtype,
        "masks": {n: getattr(cache, n) for n in ("vision_mask", "pivot_mask", "attention_mask")},
        "extra": extra,
    }
    torch.save(state, str(path))


def load_cache(policy: Any, path: str | Path, device: str = "cpu") -> tuple[AKVQCache, dict[str, Any]]:
    """Rebuild an AKVQCache saved by `save_cache` (same policy) on `device`."""
    state = torch.load(str(path), weights_only=False, map_location=device)
    cache = AKVQCache(policy, len(state["stores"]))
    for layer, (k, v) in zip(cache.layers, state["stores"]):
        layer.k, layer.v = k, v
        layer.dtype, layer.device = state["dtype"], torch.device(device)
        layer.is_initialized = True
    for n, m in state["masks"].items():
        setattr(cache, n, m)
    return cache, state["extra"]


def kv_bytes_per_token(cache: AKVQCache) -> float:
    """Bytes the cache holds per (sequence, token), everything counted (codes, scales, 16-bit rows, indices)."""
    layer = cache.layers[0]
    tokens = layer.k.batch * layer.get_seq_length()
    return cache.memory_report().total_bytes / max(1, tokens)


__all__ = [
    "GiB",
    "kv_bytes_per_token",
    "limit_data",
    "load_cache",
    "peak_memory_bytes",
    "repeat_cache",
    "repeat_store",
    "save_cache",
]
