"""SmoothQuant applied to K and V: per-channel scales max|x_j|^alpha calibrated on the prompt, then per-token RTN.

There is no weight to migrate the scale into, so the cache divides on write and multiplies back on read,
which is exact for attention ((Q s)(K/s)^T = QK^T, P (V/s) s = PV)."""

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
class SmoothQuantPolicy(Policy):
    name = "smoothquant"
    bits: int = 2
    group_size: int = 128
    alpha: float = 0.5
    clip_ratio: float | None = 1.0
    window: int = 0
    clip_mode: str = "center"  # "minmax": the r*min, r*max rule used before (docs/design.md)
    window_bits: int = 16  # 8: the window in 8 bits (q8_0-style, TensorPlan.window_bits; docs/design.md)

    def validate(self) -> None:
        check_bits(self.bits)
        check_window_bits(self.window_bits, "smoothquant")
        check_clip_mode(self.clip_mode)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"smoothquant: alpha must be in [0, 1], got {self.alpha}")
        if self.window < 0 or self.group_size <= 0:
            raise ConfigError("smoothquant: window must be >= 0, group_size > 0")

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        t = TensorPlan(
            bits=self.bits,
            group_size=self.group_size,
            clip_ratio=self.clip_ratio,
            window=self.window,
            smooth_alpha=self.alpha,
            clip_mode=self.clip_mode,
            window_bits=self.window_bits,
        )
        return LayerPlan(k=t, v=t)
