"""Methods: one file per method in this package (a `Policy` subclass under `@register`), found at import; one YAML
per public name in configs/quant/. `make_policy(name, **overrides)` is how everything else gets one."""

from __future__ import annotations

import importlib
import pkgutil

from akvq.policies.base import POLICIES, LayerPlan, Policy, TensorPlan, register
from akvq.policies.loader import make_policy, policy_from_mapping, quant_config, quant_names

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "loader") and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "POLICIES",
    "LayerPlan",
    "Policy",
    "TensorPlan",
    "make_policy",
    "policy_from_mapping",
    "quant_config",
    "quant_names",
    "register",
]
