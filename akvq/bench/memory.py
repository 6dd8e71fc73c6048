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
from akvq.quant.uniform import QTensor

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


def _rows(x: torch.Tensor, b: int, n: int) -> torch.Tensor:
    """Token-major rows (t * b + i) -> the same rows for batch b * n, each sequence copied n times."""
    return x.reshape(-1, b, *x.shape[1:]).repeat_interleave(n, dim=1).reshape(-1, *x.shape[1:]).contiguous()


def _q(qt: QTensor, f) -> QTensor:
    return QTensor(f(qt.codes), f(qt.scale), f(qt.zero), qt.bits, qt.group_size, qt.n, qt.float_zero)


def repeat_store(st: TensorStore, n: int) -> None:
    """Copy every sequence of one store n times along the batch, in place, keeping the storage layout."""
    b = st.batch
    if st.tail is not None:
        st.tail = st.tail.repeat_interleave(n, dim=0).contiguous()
    if st.cls is not None:
        st.cls = _rows(st.cls, b, n)
    st.tables = {c: _q(qt, lambda x: _rows(x, b, n)) for c, qt in st.tables.items()}
    if st.hp_rows is not None:
        if st.hp_pos is not None:  # channel axis: positions t * b + i of the 16-bit rows
            pos = st.hp_pos.long()
            t, i = pos // b, pos % b
            new = (t * b * n + i * n).unsqueeze(1) + torch.arange(n, device=pos.device)
            st.hp_pos = new.reshape(-1).to(torch.int32)
            st.hp_rows = st.hp_rows.repeat_interleave(n, dim=0).contiguous()
        else:
            st.hp_rows = st.hp_rows.repeat_interleave(n, dim=0).contiguous()
    if st.chan is not None:
        st.chan = _q(st.chan, lambda x: x.repeat_interleave(n, dim=0).contiguous())
    if st.smooth is not None:
        st.smooth = st.smooth.repeat_interleave(n, dim=0).contiguous()
    if getattr(st, "_deq", None) is not None:  # read_path="cached": the dequantized copy [B, H, n_q, D]
        st._deq = st._deq.repeat_interleave(n, dim=0).contiguous()
    st.batch = b * n


def repeat_cache(cache: AKVQCache, n: int) -> AKVQCache:
    """Every layer and every prompt mask copied n times along the batch (in place; returns the cache)."""
    if n == 1:
        return cache
    if hasattr(cache, "repeat_batch"):  # a peer's cache (transformers' QuantizedCache) copies itself
        cache.repeat_batch(n)
        return cache
    for layer in cache.layers:
        if layer.is_initialized:
            repeat_store(layer.k, n)
            repeat_store(layer.v, n)
    for name in ("vision_mask", "pivot_mask", "attention_mask"):
        m = getattr(cache, name)
        if m is not None:
            setattr(cache, name, m.repeat_interleave(n, dim=0))
    return cache


def save_cache(cache: AKVQCache, path: str | Path, extra: dict[str, Any]) -> None:
    """The stores of every layer plus the prompt masks and `extra` (next token, sequence length)."""
    if hasattr(cache, "state"):  # a peer's cache
        torch.save({"peer_state": cache.state(), "extra": extra}, str(path))
        return
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
    if "peer_state" in state:
        return _load_peer(policy, state, device), state["extra"]
    cache = AKVQCache(policy, len(state["stores"]))
    for layer, (k, v) in zip(cache.layers, state["stores"]):
        layer.k, layer.v = k, v
        layer.dtype, layer.device = state["dtype"], torch.device(device)
        layer.is_initialized = True
    for n, m in state["masks"].items():
        setattr(cache, n, m)
    return cache, state["extra"]


def _load_peer(policy: Any, state: dict[str, Any], device: str) -> Any:
    layers = state["peer_state"]
    cache = policy.new_cache(len(layers))
    cache.load_state(layers, device)
    return cache


def kv_bytes_per_token(cache: AKVQCache) -> float:
    """Bytes the cache holds per (sequence, token), everything counted (codes, scales, 16-bit rows, indices)."""
    layer = cache.layers[0]
    batch = layer.kv_shape[0] if hasattr(layer, "kv_shape") else layer.k.batch
    tokens = batch * layer.get_seq_length()
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
