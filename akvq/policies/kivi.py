"""KIVI: keys per channel (groups of `residual` tokens), values per token, full-precision residual.

KIVI's own quantizer stores each group's minimum and scale (x^ = s q + min, a float zero point) with no
clipping; `float_zero: false` gives the paper-style integer zero point instead (docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass

from akvq.errors import ConfigError
from akvq.policies.base import LayerPlan, Policy, TensorPlan, check_bits, check_window_bits, register


@register
@dataclass
class KIVIPolicy(Policy):
    name = "kivi"
    bits: int = 2
    group_size: int = 128  # value groups along channels (min(group_size, head_dim))
    residual: int = (
        128  # KIVI's R: keys flush in groups of R tokens, values keep the last R in full precision
    )
    float_zero: bool = True  # KIVI's min + scale; false: integer zero point z = -round(min / s)
    window_bits: int = 16  # 8: the window in 8 bits (q8_0-style, TensorPlan.window_bits; docs/design.md)

    def validate(self) -> None:
        check_bits(self.bits)
        check_window_bits(self.window_bits, "kivi")
        if self.residual <= 0 or self.group_size <= 0:
            raise ConfigError("kivi: residual and group_size must be > 0")

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        common = dict(
            bits=self.bits, clip_ratio=1.0, float_zero=self.float_zero, window_bits=self.window_bits
        )
        k = TensorPlan(group_size=self.residual, axis="channel", window=0, **common)
        v = TensorPlan(group_size=self.group_size, window=self.residual, **common)
        return LayerPlan(k=k, v=v)
