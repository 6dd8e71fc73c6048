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
from akvq.errors import ConfigError
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


class PivotRecorder:
    """Stands in for a cache during a shared prefill: `pivot_detection` reads its (resolved) policy, and the
    detector's mask is kept here for `cache_from_prefill`."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.mask: torch.Tensor | None = None

    def set_pivots(self, mask: torch.Tensor) -> None:
        self.mask = mask


def pivot_key(policy: Policy) -> tuple | None:
    """What a policy's pivot detection depends on: policies with equal keys get the same pivots."""
    if not policy.needs_pivots:
        return None
    return (policy.num_pivots, policy.pivot_rule, policy.pivot_layer, policy.pivot_score)


@contextlib.contextmanager
def recording_pivots(model: Any, policies: Sequence[Policy]) -> Iterator[dict[tuple, torch.Tensor]]:
    """Pivot detection for every pivot rule among `policies` during one forward (a shared prefill): the dict it
    yields holds each rule's (`pivot_key`) mask once the block ends."""
    recorders = {k: PivotRecorder(p) for p in policies if (k := pivot_key(p)) is not None}
    masks: dict[tuple, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for rec in recorders.values():
            stack.enter_context(pivot_detection(model, rec))
        yield masks
    for key, rec in recorders.items():
        if rec.mask is None:
            raise RuntimeError("pivot detection ran but reported no pivots")
        masks[key] = rec.mask


def prefill_reads(model: Any, policy: Policy) -> tuple | None:
    """What the prefill's attention reads under this policy (`AKVQCache.prefill_reads`): policies with equal
    answers can share one prefill; None (another library's cache, an 8-bit window) shares with nobody."""
    if type(policy).new_cache is not Policy.new_cache:
        return None
    policy = resolve_policy(model, policy)
    return AKVQCache.prefill_reads(policy, text_dims(model)[0], model.dtype)


def generate_shared(
    model: Any,
    inputs: Mapping[str, Any],
    policies: Sequence[Policy],
    max_new_tokens: int,
    read_path: str = "dequantize",
    **gen_kwargs: Any,
) -> Iterator[tuple[torch.Tensor, Cache, float]]:
    """`generate` for several policies off one prefill: yields (sequences, cache, seconds) per policy, the same
    sequences and cache as `generate` alone (tests/test_generation.py), the prefill's seconds counted in each.

    Why: the prefill attends over the prompt's 16-bit K/V under every method (quantization starts at the next
    update; docs/design.md), and at long contexts it is nearly all of a sample's time. The first policy runs the
    prefill in its own cache; the others get its K/V through `cache_from_prefill`. Greedy only, and the policies
    must have one `prefill_reads` (else ValueError)."""
    import time

    if gen_kwargs.get("do_sample") or int(gen_kwargs.get("num_beams") or 1) != 1:
        raise ConfigError("a shared prefill is for greedy decoding (do_sample=false, num_beams=1)")
    reads = {prefill_reads(model, p) for p in policies}
    if len(reads) != 1 or None in reads:
        raise ValueError(f"these policies do not read one prefill alike: {sorted(map(str, reads))}")
    resolved = [resolve_policy(model, p) for p in policies]
    t0 = time.perf_counter()
    cache = build_cache(model, policies[0], inputs, read_path=read_path)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        stack.enter_context(pivot_detection(model, cache))
        masks = stack.enter_context(recording_pivots(model, resolved[1:]))
        # the first token as generate picks it (its logits processors included), from the prefill's logits
        first = model.generate(**inputs, **{cache_kwarg(): cache}, max_new_tokens=1, **gen_kwargs)
    kv = cache.prompt_kv() if len(policies) > 1 else []
    shared_s = time.perf_counter() - t0
    mask = inputs.get("attention_mask")
    if mask is not None:
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    for i, (policy, res) in enumerate(zip(policies, resolved, strict=True)):
        t0 = time.perf_counter()
        if i:
            key = pivot_key(res)
            pivots = masks[key] if key is not None else None
            cache = cache_from_prefill(model, policy, inputs, kv, pivots, read_path=read_path)
        out = first
        if max_new_tokens > 1:
            # the prompt and its first token: generate feeds only the token the cache lacks, as step 1 would
            with torch.inference_mode():
                out = model.generate(
                    input_ids=first,
                    attention_mask=mask,
                    **{cache_kwarg(): cache},
                    max_new_tokens=max_new_tokens - 1,
                    **gen_kwargs,
                )
        yield out, cache, shared_s + time.perf_counter() - t0


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
