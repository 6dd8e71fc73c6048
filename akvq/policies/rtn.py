"""Round-to-nearest, per token, same bits for K and V: the paper's RTN baseline (no window by default)."""

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


@register
@dataclass
class RTNPolicy(Policy):
    name = "rtn"
    bits: int = 2
    group_size: int = 128
    clip_ratio: float | None = 1.0
    window: int = 0
    clip_mode: str = "center"  # "minmax": the r*min, r*max rule used before (docs/design.md)
    window_bits: int = 16  # 8: the window in 8 bits (q8_0-style, TensorPlan.window_bits; docs/design.md)

    def validate(self) -> None:
        check_bits(self.bits)
        check_window_bits(self.window_bits, "rtn")
        check_clip_mode(self.clip_mode)
        if self.group_size <= 0 or self.window < 0:
            raise ConfigError("group_size must be > 0 and window >= 0")

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        t = TensorPlan(
            bits=self.bits,
            group_size=self.group_size,
            clip_ratio=self.clip_ratio,
            window=self.window,
            clip_mode=self.clip_mode,
            window_bits=self.window_bits,
        )
        return LayerPlan(k=t, v=t)
