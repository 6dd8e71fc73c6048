"""One small file per method; `make_policy(name, **overrides)` is how everything else gets one."""

from __future__ import annotations

import dataclasses
from typing import Any

from akvq.errors import ConfigError
from akvq.policies.akvq import AKVQPolicy
from akvq.policies.base import HP, LayerPlan, Policy, TensorPlan
from akvq.policies.fp16 import FP16Policy
from akvq.policies.hf_quantized import HFQuantizedPolicy
from akvq.policies.kivi import KIVIPolicy
from akvq.policies.rtn import RTNPolicy
from akvq.policies.skvq import SKVQPolicy
from akvq.policies.smoothquant import SmoothQuantPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (FP16Policy, RTNPolicy, KIVIPolicy, SKVQPolicy, SmoothQuantPolicy, AKVQPolicy)
}
# Methods whose cache is not ours (`policy.make_cache`): transformers' QuantizedCache.
PEER_POLICIES: dict[str, type[Policy]] = {HFQuantizedPolicy.name: HFQuantizedPolicy}


def make_policy(name: str, **overrides: Any) -> Policy:
    """Build a policy by name; unknown names or fields raise ConfigError listing what exists."""
    known_policies = {**POLICIES, **PEER_POLICIES}
    if name not in known_policies:
        raise ConfigError(f"unknown quant policy {name!r}; known: {sorted(known_policies)}")
    cls = known_policies[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"policy {name!r} has no field(s) {sorted(unknown)}; its fields: {sorted(known)}")
    if "layer_pattern" in overrides and overrides["layer_pattern"] is not None:
        overrides["layer_pattern"] = list(overrides["layer_pattern"])
    try:
        return cls(**overrides)
    except TypeError as e:  # wrong value types from a YAML
        raise ConfigError(f"policy {name!r}: {e}") from e


def validate(name: str, **overrides: Any) -> None:
    make_policy(name, **overrides)


__all__ = ["HP", "PEER_POLICIES", "POLICIES", "LayerPlan", "Policy", "TensorPlan", "make_policy", "validate"]
