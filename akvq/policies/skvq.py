"""SKVQ: sink tokens and a sliding window in full precision, clipped per-token groups spanning heads."""

from __future__ import annotations

from dataclasses import dataclass

from akvq.errors import ConfigError
from akvq.policies.base import (
    LayerPlan,
    Policy,
    TensorPlan,
    check_bits,
    check_clip_mode,
    check_window_bits,
    register,
)

REORDER_BY = ("absmax", "center")


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
    float_zero: bool = True  # SKVQ's quantizer stores the group minimum and the scale (as KIVI)
    reorder_by: str = "center"  # stands in for its KMeans clusters of channel (min, max); docs/skvq.md
    clip_mode: str = "center"  # "minmax": the r*min, r*max rule used before (docs/design.md)
    window_bits: int = 16  # 8: the window in 8 bits (q8_0-style, TensorPlan.window_bits; docs/design.md)

    def validate(self) -> None:
        check_bits(self.bits)
        check_window_bits(self.window_bits, "skvq")
        check_clip_mode(self.clip_mode)
        if self.window < 0 or self.sink < 0 or self.group_size <= 0:
            raise ConfigError("skvq: window and sink must be >= 0, group_size > 0")
        if self.reorder_by not in REORDER_BY:
            raise ConfigError(f"skvq: reorder_by must be one of {REORDER_BY}, got {self.reorder_by!r}")

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        t = TensorPlan(
            bits=self.bits,
            group_size=self.group_size,
            clip_ratio=self.clip_ratio,
            clip_search=self.clip_search,
            window=self.window,
            group_across_heads=True,
            reorder=self.reorder,
            reorder_by=self.reorder_by,
            float_zero=self.float_zero,
            clip_mode=self.clip_mode,
            window_bits=self.window_bits,
        )
        return LayerPlan(k=t, v=t, sink=self.sink)
