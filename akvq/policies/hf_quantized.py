"""transformers' own `QuantizedCache` (optimum-quanto or HQQ backend) as a method of this harness.

It is what a Hugging Face user reaches for first, so it runs through the same tasks, records and tables as our
methods, with its real defaults (transformers' `QuantizedLayer`: axis 0 for keys and values, groups of 64,
a 128-token full-precision residual, the whole cache re-quantized each time the residual fills). Two things
are ours, and neither changes its numbers:
- storage in 16 bits on a float32 model (`hp_dtype: auto`, as our caches do): K/V are cast before they reach
  its layers, so its residual, scales and zero points are fp16 tensors, as for a 16-bit model;
- `read_path="cached"` (accuracy runs) memoizes the dequantized history until the next re-quantization:
  the same tensors, without dequantizing the whole cache at every token (tested bit-identical).
Its bytes are read from its own tensors (`memory_report`), so effective bits are counted as ours are.

What "axis 0, groups of 64" means on a KV cache (read from the backends, checked on tensors): quanto cuts the
flattened [B, H, T, D] tensor into runs of 64 consecutive values, i.e. per token and head when head_dim = 64;
HQQ reshapes it to [64, N/64] and groups columns, so group j holds one value from each 64th of the cache:
channel j mod D of 64 tokens N/64/D rows apart (every 192nd token-head row for SmolLM2 at batch 1), regrouped
at every re-quantization as the cache grows. Both key and value are grouped the same way.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from transformers.cache_utils import QuantizedCache

from akvq.errors import ConfigError
from akvq.policies.base import LayerPlan, Policy, register

# backend -> (module that must be importable, pip name, bits the backend accepts, its axes)
BACKENDS: dict[str, tuple[str, str, tuple[int, ...], tuple[int, ...]]] = {
    "quanto": ("optimum.quanto", "optimum-quanto", (2, 4), (0, -1)),
    "hqq": ("hqq", "hqq", (1, 2, 3, 4, 8), (0, 1)),
}
INSTALL_HINT = "pip install 'akvq[peers]'"


def missing_backend(backend: str) -> str | None:
    """One line naming the package to install when the backend's library is absent, else None."""
    module, pip_name, _, _ = BACKENDS[backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return (
        None
        if found
        else f"transformers' QuantizedCache backend {backend!r} needs {pip_name} ({INSTALL_HINT})"
    )


@register
@dataclass
class HFQuantizedPolicy(Policy):
    """The fields are `QuantizedCache`'s own arguments; the YAMLs spell out transformers' defaults."""

    name: ClassVar[str] = "hf_quantized"
    backend: str = "quanto"
    nbits: int = 4
    axis_key: int = 0
    axis_value: int = 0
    q_group_size: int = 64
    residual_length: int = 128

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r} is not supported; choose one of {sorted(BACKENDS)}")
        _, _, bits, axes = BACKENDS[self.backend]
        if self.nbits not in bits:
            raise ConfigError(
                f"nbits={self.nbits} is not supported by backend {self.backend!r}; choose one of {list(bits)}"
            )
        for key in ("axis_key", "axis_value"):
            if getattr(self, key) not in axes:
                raise ConfigError(
                    f"{key}={getattr(self, key)} is not supported by backend {self.backend!r}; choose one of {list(axes)}"
                )
        if self.q_group_size <= 0 or self.residual_length <= 0:
            raise ConfigError("q_group_size and residual_length must be positive")

    def unavailable(self) -> str | None:
        return missing_backend(self.backend)

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        raise TypeError("hf_quantized stores K/V in transformers' QuantizedCache, not in an AKVQ layer plan")

    def check_model(self, num_kv_heads: int, head_dim: int, num_layers: int) -> None:
        # Along axis 0 both backends need q_group_size to divide the whole tensor's size; dividing one token's
        # K/V makes that hold at every length (else a cache of odd length fails mid-run).
        width = num_kv_heads * head_dim
        if 0 in (self.axis_key, self.axis_value) and width % self.q_group_size:
            raise ConfigError(
                f"hf_quantized: q_group_size={self.q_group_size} must divide num_kv_heads*head_dim={width} "
                f"(the backends group the flattened K/V); set quant.q_group_size"
            )

    def new_cache(self, num_layers: int, read_path: str = "dequantize") -> HFQuantizedCache:
        """Its cache (16-bit storage as `hp_dtype` says, fixed at the first update); ImportError naming the
        extra when the backend's package is absent."""
        reason = self.unavailable()
        if reason:
            raise ImportError(reason)
        return HFQuantizedCache(self, num_layers, read_path)


def _storage_dtype(hp_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    if hp_dtype == "model" or (hp_dtype == "auto" and model_dtype in (torch.float16, torch.bfloat16)):
        return model_dtype
    return torch.float16 if hp_dtype == "auto" else getattr(torch, hp_dtype)


class _Stored16:
    """Mixed into transformers' layer classes: cast to the storage dtype on the way in and back on the way
    out; optionally memoize `_dequantize` on the identity of the quantized states (new object = new states)."""

    hp_dtype: str
    memo: bool
    kv_shape: tuple[int, int, int]  # (batch, kv heads, head_dim) of what it holds

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        dtype, sd = key_states.dtype, _storage_dtype(self.hp_dtype, key_states.dtype)
        self.kv_shape = (key_states.shape[0], key_states.shape[1], key_states.shape[-1])
        k, v = super().update(key_states.to(sd), value_states.to(sd), *args, **kwargs)  # type: ignore[misc]
        return k.to(dtype), v.to(dtype)

    def _dequantize(self, qtensor: Any) -> torch.Tensor:
        if not self.memo:
            return super()._dequantize(qtensor)  # type: ignore[misc]
        memo = self.__dict__.setdefault("_memo", {})
        hit = memo.get(id(qtensor))
        if hit is not None and hit[0] is qtensor:
            return hit[1]
        out = super()._dequantize(qtensor)  # type: ignore[misc]
        live = (self._quantized_keys, self._quantized_values)  # type: ignore[attr-defined]
        for key in [k for k, (q, _) in memo.items() if not any(q is x for x in live)]:
            del memo[key]
        memo[id(qtensor)] = (qtensor, out)
        return out


_WRAPPED: dict[type, type] = {}


def _wrap(cls: type) -> type:
    if cls not in _WRAPPED:
        _WRAPPED[cls] = type(f"Stored16{cls.__name__}", (_Stored16, cls), {})
    return _WRAPPED[cls]


def _leaves(x: Any) -> list[torch.Tensor]:
    """The plain tensors inside a (possibly nested) tensor subclass such as quanto's packed QBitsTensor."""
    if isinstance(x, tuple):  # HQQ: (codes, meta dict)
        codes, meta = x
        return [codes, *(v for v in meta.values() if isinstance(v, torch.Tensor))]
    if hasattr(x, "__tensor_flatten__") and type(x) is not torch.Tensor:
        names, _ = x.__tensor_flatten__()
        return [t for n in names for t in _leaves(getattr(x, n))]
    return [x]


class HFQuantizedCache(QuantizedCache):
    """transformers' QuantizedCache with its real layers, 16-bit storage, and a byte count of its tensors."""

    def __init__(self, policy: HFQuantizedPolicy, num_layers: int, read_path: str = "dequantize"):
        # transformers' own layer classes with the policy's arguments; QuantizedCache.__init__ would only add
        # its check that every layer is full attention (true of every model this harness runs).
        from transformers.cache_utils import Cache, HQQQuantizedLayer, QuantoQuantizedLayer

        cls = {"quanto": QuantoQuantizedLayer, "hqq": HQQQuantizedLayer}[policy.backend]
        fields = {k: v for k, v in asdict(policy).items() if k not in ("hp_dtype", "backend")}
        Cache.__init__(self, layers=[_wrap(cls)(**fields) for _ in range(num_layers)])
        self.policy = policy
        for layer in self.layers:
            layer.hp_dtype = policy.hp_dtype
            layer.memo = read_path == "cached"

    def exact_chunks(self, n: int) -> list[int]:
        """Chunk sizes whose forwards give the same logits as feeding n tokens one at a time.

        Between two re-quantizations every decode step reads the same dequantized history plus the 16-bit
        residual, and a chunk's own tokens are that residual; a chunk that ends where the step loop would
        flush ends with the same flush. So chunks cut at the flush points are token-by-token decoding."""
        layer = self.layers[0]
        r = layer.keys.shape[-2] if layer.keys.dim() == 4 else 0
        sizes, left, first = [], n, max(1, self.policy.residual_length - r)
        while left > 0:
            sizes.append(min(first, left))
            left -= sizes[-1]
            first = self.policy.residual_length
        return sizes

    @property
    def replay_steps(self) -> bool:
        return False

    @replay_steps.setter
    def replay_steps(self, on: bool) -> None:
        # A many-token forward would reach its update as one chunk: not token-by-token decoding. Fail loudly
        # rather than score a biased proxy; the ppl task's step loop (task.replay=false) is exact.
        if on:
            raise NotImplementedError(
                "transformers' QuantizedCache cannot replay decoding; use task.replay=false"
            )

    def memory_report(self) -> Any:
        """Codes (integer tensors), scales and zero points (float tensors of the quantized states) and the
        16-bit residual, in bytes, from the tensors the layers hold; elements = every cached K/V value."""
        from akvq.cache.cache import MemoryReport

        codes = meta = hp = elements = 0
        for layer in self.layers:
            if not layer.is_initialized:
                continue
            for q in (layer._quantized_keys, layer._quantized_values):
                for t in _leaves(q):
                    if t.is_floating_point():
                        meta += t.nbytes
                    else:
                        codes += t.nbytes
            hp += layer.keys.nbytes + layer.values.nbytes
            b, h, d = layer.kv_shape
            elements += 2 * b * h * layer.cumulative_length * d
        return MemoryReport(codes_bytes=codes, meta_bytes=meta, hp_bytes=hp, index_bytes=0, elements=elements)

    # ---- for the efficiency benchmark: save a prefilled cache, load it, copy it along the batch

    def state(self) -> list[dict[str, Any]]:
        keep = ("_quantized_keys", "_quantized_values", "keys", "values", "cumulative_length", "kv_shape")
        return [{k: getattr(layer, k) for k in keep} for layer in self.layers]

    def load_state(self, state: list[dict[str, Any]], device: str | torch.device = "cpu") -> None:
        for layer, st in zip(self.layers, state):
            layer.lazy_initialization(st["keys"].to(device), st["values"].to(device))
            for k, v in st.items():
                setattr(layer, k, v.to(device) if isinstance(v, torch.Tensor) else v)

    def flush(self) -> None:
        """What each layer's update does when its residual fills: dequantize everything, append the residual,
        quantize it all again (the benchmark times it: it comes every `residual_length` steps)."""
        for layer in self.layers:
            for qname, rname, axis in (
                ("_quantized_keys", "keys", layer.axis_key),
                ("_quantized_values", "values", layer.axis_value),
            ):
                parts = [layer._dequantize(getattr(layer, qname)), getattr(layer, rname)]
                full = torch.cat([p for p in parts if p.dim() == 4], dim=-2)
                setattr(layer, qname, layer._quantize(full.contiguous(), axis=axis))
            layer.keys = layer.keys.new_empty(0)
            layer.values = layer.values.new_empty(0)

    def repeat_batch(self, n: int) -> None:
        """Every sequence copied n times, in place (as `bench.memory.repeat_cache` does for ours)."""
        if n == 1:
            return
        if self.policy.backend != "quanto" or (self.policy.axis_key, self.policy.axis_value) != (0, 0):
            raise NotImplementedError(
                "only quanto's axis-0 states can be copied along the batch; HQQ's axis-0 groups stride across "
                "the whole flattened cache, so a batch-n cache must be quantized from scratch"
            )
        for layer in self.layers:
            b = layer.kv_shape[0]
            layer._quantized_keys = _repeat_quantized(layer._quantized_keys, b, n)
            layer._quantized_values = _repeat_quantized(layer._quantized_values, b, n)
            if layer.keys.dim() == 4:
                layer.keys = layer.keys.repeat_interleave(n, dim=0)
                layer.values = layer.values.repeat_interleave(n, dim=0)
            layer.kv_shape = (b * n, *layer.kv_shape[1:])


def _repeat_quantized(q: Any, b: int, n: int) -> Any:
    """Quantized states of batch b with every sequence copied n times (quanto only: its axis-0 groups are
    contiguous runs of the flattened [B, H, T, D] tensor, so sequence i owns a block of whole groups)."""
    from optimum.quanto import WeightQBitsTensor

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, -1, *x.shape[1:]).repeat_interleave(n, dim=0).reshape(-1, *x.shape[1:])

    size = (q.shape[0] * n, *q.shape[1:])
    stride = torch.empty(size, device="meta").stride()
    return WeightQBitsTensor(
        q._qtype, q._axis, q._group_size, size, stride, rows(q._data.unpack()), rows(q._scale), rows(q._shift)
    )


__all__ = ["BACKENDS", "HFQuantizedCache", "HFQuantizedPolicy", "missing_backend"]
