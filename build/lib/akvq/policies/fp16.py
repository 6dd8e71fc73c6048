"""The exact baseline: every token in the model's dtype (or 16-bit with hp_dtype), as DynamicCache."""

from __future__ import annotations

from dataclasses import dataclass

from akvq.policies.base import LayerPlan, Policy, register


@register
@dataclass
class FP16Policy(Policy):
    name = "fp16"

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        return LayerPlan(k=None, v=None)
