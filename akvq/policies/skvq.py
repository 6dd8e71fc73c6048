"""SKVQ: sink tokens and a sliding window in full precision, clipped per-token groups spanning heads."""

from __future__ import annotations

from dataclasses import dataclass

from akvq.errors import ConfigError
from akvq.policies.base import LayerPlan, Policy, TensorPlan, check_bits, register


@register
@dataclass
class SKVQPolicy(Policy):
    name = "skvq"
    bits: int = 2
    group_size: int = 128
    window: int = 128
    sink: int = 5
    clip_ratio: float | None = None
    clip_search: bool = True  # stands in for SKVQ's offline-calibrated clipping ratios
    reorder: bool = True  # channel reordering, calibrated on the prompt instead of offline
    float_zero: bool = False

    def validate(self) -> None:
        check_bits(self.bits)
        if self.window < 0 or self.sink < 0 or self.group_size <= 0:
            raise ConfigError("skvq: window and sink must be >= 0, group_size > 0")

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        t = TensorPlan(
            bits=self.bits,
            group_size=self.group_size,
            clip_ratio=self.clip_ratio,
            clip_search=self.clip_search,
            window=self.window,
            group_across_heads=True,
            reorder=self.reorder,
            float_zero=self.float_zero,
        )
        return LayerPlan(k=t, v=t, sink=self.sink)
