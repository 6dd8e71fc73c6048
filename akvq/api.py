"""The one place that wires a model, a policy and the saliency signals into a cache.

Tasks and benchmarks call `build_cache` / `generate` / `prefill`; they never touch roles or pivots."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers.cache_utils import Cache

from akvq.cache import AKVQCache
from akvq.policies import Policy

log = logging.getLogger(__name__)
_NEW_CACHE_KWARG = Version(transformers.__version__.split("+")[0]) >= Version("5.24.0")


def cache_kwarg() -> str:
    """transformers 5.24 renamed `past_key_values` to `cache`; older releases only know the old name."""
    return "cache" if _NEW_CACHE_KWARG else "past_key_values"


def text_dims(model: Any) -> tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim) of the language model."""
    cfg = model.config.get_text_config(decoder=True)
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv, head_dim


def model_name(model: Any) -> str:
    return str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", ""))


def resolve_policy(model: Any, policy: Policy) -> Policy:
    """The policy for this model: what it leaves to the model (the TSA/PSA layer pattern) filled in, in a new
    object (the caller's policy is unchanged, so one policy serves many models), and shapes checked."""
    num_layers, kv, head_dim = text_dims(model)
    name = getattr(model, "_akvq_model_name", None) or model_name(model)
    resolved = policy.resolve(name, num_layers)
    resolved.check_model(kv, head_dim, num_layers)
    return resolved


def build_cache(
    model: Any, policy: Policy, inputs: Mapping[str, Any] | None = None, read_path: str = "dequantize"
) -> Cache:
    """The method's cache for this model, told the prompt's padding, token roles (and, through
    `pivot_detection`, its pivots) when the method uses them."""
    policy = resolve_policy(model, policy)
    cache = policy.new_cache(text_dims(model)[0], read_path=read_path)
    if inputs is None or not isinstance(cache, AKVQCache):
        return cache
    if inputs.get("attention_mask") is not None:
        cache.set_attention_mask(inputs["attention_mask"])
    if policy.needs_roles:
        from akvq.saliency.roles import vision_mask

        cache.set_token_roles(vision_mask(model, inputs))
    return cache


def prefill_into(cache: Cache, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Cache:
    """Hand a 16-bit prefill's K/V (one (keys, values) per layer) to a cache, layer by layer, as the prefill
    forward would have (the cache quantizes what leaves its window, as on any update)."""
    for layer, (k, v) in zip(cache.layers, kv):
        layer.update(k, v)
    return cache


def cache_from_prefill(
    model: Any,
    policy: Policy,
    inputs: Mapping[str, Any],
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
    pivots: torch.Tensor | None = None,
    read_path: str = "dequantize",
) -> Cache:
    """The one way to build a policy's cache from a prefill computed elsewhere (once, full precision, shared by
    every policy): `build_cache` for the prompt, the prefill's pivot mask when the method uses pivots, then its
    K/V, exactly as if this policy had run the prefill."""
    cache = build_cache(model, policy, inputs, read_path=read_path)
    if pivots is not None:
        cache.set_pivots(pivots)
    return prefill_into(cache, kv)


@contextlib.contextmanager
def pivot_detection(model: Any, cache: Cache) -> Iterator[None]:
    """Hooks that find the pivots during the prefill and hand them to the cache."""
    policy = getattr(cache, "policy", None)
    if policy is None or not policy.needs_pivots:
        yield
        return
    from akvq.saliency.pivots import PivotDetector

    kwargs: dict[str, Any] = {"k": policy.num_pivots, "rule": policy.pivot_rule}
    if policy.pivot_layer is not None:
        kwargs["layer"] = policy.pivot_layer
    if policy.pivot_score is not None:
        kwargs["score"] = policy.pivot_score
    with PivotDetector(model, cache, **kwargs):
        yield


def generate(
    model: Any, inputs: Mapping[str, Any], policy: Policy, read_path: str = "dequantize", **gen_kwargs: Any
) -> tuple[torch.Tensor, Cache]:
    """`model.generate` through a fresh quantized cache; returns (sequences, cache)."""
    cache = build_cache(model, policy, inputs, read_path=read_path)
    with pivot_detection(model, cache), torch.inference_mode():
        out = model.generate(**inputs, **{cache_kwarg(): cache}, **gen_kwargs)
    return out, cache


def final_report(cache: Any) -> Any:
    """A cache's memory report once every token that has left its window is quantized: AKVQ defers that to the
    next update, which a generation ending on its prefill token (EOS first) never runs. Changes no output."""
    if isinstance(cache, AKVQCache):
        with torch.inference_mode():  # as `generate` filled it: its stores may be inference tensors
            cache.settle()
    return cache.memory_report()


def forward(model: Any, cache: Cache, inputs: Mapping[str, Any], prefill: bool = False) -> Any:
    """One forward through the cache (teacher forcing); `prefill=True` runs pivot detection on it."""
    ctx = pivot_detection(model, cache) if prefill else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        return model(**inputs, **{cache_kwarg(): cache}, use_cache=True)
