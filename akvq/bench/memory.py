"""Memory side of the benchmark: peak memory of this process, a cache copied along the batch, saving a prefilled cache.

Why repeat a cache: a CPU prefill of 8K tokens takes about a minute, so one prefill (batch 1) is quantized once and
copied to the batch being measured; decode cost and cache bytes are those of a real batch of that size."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from akvq.cache import AKVQCache
from akvq.cache.store import ROW_BLOCK, TensorStore
from akvq.quant.uniform import QTensor

GiB = 1 << 30


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
    if n > 1 and hasattr(
        cache, "repeat_batch"
    ):  # a peer's cache (transformers' QuantizedCache) copies itself
        cache.repeat_batch(n)
    elif n > 1:
        cache.batch_repeat_interleave(n)
    return cache


_STORE_TENSORS = ("tail", "cls", "hp_rows", "hp_pos", "smooth", "perm", "_deq")
_STORE_INTS = ("num_heads", "head_dim", "batch", "n_q")


def _q_state(qt: QTensor) -> dict[str, Any]:
    return {
        "codes": qt.codes,
        "scale": qt.scale,
        "zero": qt.zero,
        "bits": qt.bits,
        "group_size": qt.group_size,
        "n": qt.n,
        "float_zero": qt.float_zero,
    }


def _store_state(st: TensorStore) -> dict[str, Any]:
    """Tensors and plain values only, so loading needs no pickled classes (`weights_only=True`)."""
    return {
        **{k: getattr(st, k) for k in _STORE_TENSORS},
        **{k: getattr(st, k) for k in _STORE_INTS},
        "text_bits": st.text_bits,
        "hp_dtype": str(st.hp_dtype).removeprefix("torch."),
        "keep_dequantized": st.keep_dequantized,
        "tables": {str(c): _q_state(q) for c, q in st.tables.items()},
        "chan": None if st.chan is None else _q_state(st.chan),
        "row_block": ROW_BLOCK,  # the rows' order (`token_rows`): tokens before `sealed` in blocks of row_block
        "sealed": st.sealed,
    }


def _store_from(state: dict[str, Any], plan: Any) -> TensorStore:
    st = TensorStore(
        plan,
        state["text_bits"],
        getattr(torch, state["hp_dtype"]),
        state["num_heads"],
        state["head_dim"],
        state["batch"],
        keep_dequantized=state["keep_dequantized"],
    )
    for k in (*_STORE_TENSORS, "n_q"):
        setattr(st, k, state[k])
    st.tables = {int(c): QTensor(**q) for c, q in state["tables"].items()}
    st.chan = None if state["chan"] is None else QTensor(**state["chan"])
    if st.cls is not None:  # a cache saved token-major (before the blocked order) is sealed here
        if state.get("row_block", ROW_BLOCK) != ROW_BLOCK:
            raise ValueError(
                f"cache saved with rows in blocks of {state['row_block']}, this build takes {ROW_BLOCK}"
            )
        st.seal(state.get("sealed", 0))
    return st


def save_cache(cache: AKVQCache, path: str | Path, extra: dict[str, Any]) -> None:
    """The stores of every layer plus the prompt masks and `extra` (next token, sequence length)."""
    if hasattr(cache, "state"):  # a peer's cache
        torch.save({"peer_state": cache.state(), "extra": extra}, str(path))
        Path(path).with_suffix(".peer").touch()
        return
    state = {
        "stores": [(_store_state(lay.k), _store_state(lay.v)) for lay in cache.layers],
        "dtype": str(cache.layers[0].dtype).removeprefix("torch."),
        "masks": {n: getattr(cache, n) for n in cache.MASKS},
        "extra": extra,
    }
    torch.save(state, str(path))


def load_cache(policy: Any, path: str | Path, device: str = "cpu") -> tuple[AKVQCache, dict[str, Any]]:
    """Rebuild an AKVQCache saved by `save_cache` (same policy) on `device`; plans come from the policy."""
    if Path(path).with_suffix(".peer").exists():
        # A peer's cache holds its backend's own tensor classes (quanto's QTensor), which weights-only loading
        # refuses; the file is one this benchmark wrote itself a moment ago (`save_cache`), never a download.
        state = torch.load(str(path), weights_only=False, map_location=device)
        return _load_peer(policy, state, device), state["extra"]
    state = torch.load(str(path), weights_only=True, map_location=device)
    cache = AKVQCache(policy, len(state["stores"]))
    for layer, (k, v) in zip(cache.layers, state["stores"]):
        kplan, vplan = layer.store_plans()
        layer.k, layer.v = _store_from(k, kplan), _store_from(v, vplan)
        layer.dtype, layer.device = getattr(torch, state["dtype"]), torch.device(device)
        layer.is_initialized = True
    for n, m in state["masks"].items():  # on the host, as `AKVQCache.set_*` keeps them
        setattr(cache, n, None if m is None else m.cpu())
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
    "repeat_cache",
    "repeat_store",
    "save_cache",
]


def copy_bandwidth(mib: int = 256, reps: int = 3) -> float:
    """Bytes/s of a large tensor copy (read + write counted, as STREAM's copy), best of `reps`, in torch's
    current threads: the machine's memory bandwidth, measured in the same run as a kernel's bytes/s."""
    a = torch.ones(mib << 18)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best


def copy_bandwidths(threads: Iterable[int], mib: int = 256, reps: int = 3) -> dict[int, float]:
    """`copy_bandwidth` at each thread count (torch's count restored after): a kernel on n threads is compared
    with the copy on n threads, since one core does not saturate the memory bus (here 1 thread ~14 GB/s, 2 ~26)."""
    before = torch.get_num_threads()
    try:
        out = {}
        for nt in sorted(set(threads)):
            torch.set_num_threads(nt)
            out[nt] = copy_bandwidth(mib, reps)
        return out
    finally:
        torch.set_num_threads(before)
