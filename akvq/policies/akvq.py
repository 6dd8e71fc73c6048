"""AKVQ-VL: WHT + 16-bit recent window + TSA layers (text 4-bit, vision 2-bit) + PSA layers (pivots 16-bit).

Each component is a switch, so the paper's ablation ladder RTN -> +WHT -> +TSA -> +PSA is four configs of this
one policy. The knobs past the paper (k_axis, clip_search, group_across_heads) are off in the paper recipe."""

from __future__ import annotations

import dataclasses
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

PIVOT_RULES = ("massive", "attention")


@register
@dataclass
class AKVQPolicy(Policy):
    name = "akvq"
    bits: int = 2
    text_bits: int = 4
    group_size: int = 128
    clip_ratio: float | None = None  # None: the paper's 0.8 at 2-bit, 1.0 at 4-bit
    window: int = 128
    hadamard: bool = True
    tsa: bool = True
    psa: bool = True
    num_pivots: int = 15
    pivot_rule: str = "massive"
    pivot_layer: int | None = None  # None: the detector's documented default
    pivot_score: str | None = None
    layer_pattern: list[str] | None = None  # "tsa"/"psa" per layer; None: read from the model's pattern file
    # TSA's per-role bits (vision `bits`, text `text_bits`) in every layer, no PSA layers: the paper's question of
    # how many bits vision and text tokens each need, asked of the whole cache (configs/quant/akvq_roles_*.yaml)
    roles_all_layers: bool = False
    k_axis: str = "token"
    k_bits: int | None = None  # None: same as bits
    k_window: int | None = (
        None  # per-channel keys only; None: same as window (0 behaves like KIVI's residual)
    )
    k_group_tokens: int = 128  # per-channel keys: tokens per group
    clip_search: bool = False
    group_across_heads: bool = False
    float_zero: bool = False
    clip_mode: str = "center"  # "minmax": the r*min, r*max rule used before (docs/design.md)
    window_bits: int = 16  # 8: the window in 8 bits (q8_0-style, TensorPlan.window_bits; docs/design.md)
    # Tokens leave the 16-bit window this many at a time (1 = the paper: each step quantizes the token that left).
    # The newest `window` tokens stay 16-bit either way; up to flush_every - 1 older ones wait in it for the next
    # flush (docs/design.md, "Flushing the window in chunks").
    flush_every: int = 1

    def validate(self) -> None:
        check_bits(self.bits)
        check_window_bits(self.window_bits, "akvq")
        check_clip_mode(self.clip_mode)
        check_bits(self.text_bits, "text_bits")
        if self.k_bits is not None:
            check_bits(self.k_bits, "k_bits")
        if self.k_axis not in ("token", "channel"):
            raise ConfigError(f"akvq: k_axis must be 'token' or 'channel', got {self.k_axis!r}")
        if self.pivot_rule not in PIVOT_RULES:
            raise ConfigError(f"akvq: pivot_rule must be one of {PIVOT_RULES}, got {self.pivot_rule!r}")
        if (
            isinstance(self.flush_every, bool)
            or not isinstance(self.flush_every, int)
            or self.flush_every < 1
        ):
            raise ConfigError(f"akvq: flush_every must be an integer >= 1, got {self.flush_every!r}")
        if (
            self.window < 0
            or (self.k_window or 0) < 0
            or self.num_pivots < 0
            or min(self.group_size, self.k_group_tokens) <= 0
        ):
            raise ConfigError("akvq: window and num_pivots must be >= 0, group_size > 0")
        if self.roles_all_layers and (not self.tsa or self.layer_pattern is not None):
            raise ConfigError(
                "akvq: roles_all_layers=true needs tsa=true and no layer_pattern (it sets every layer)"
            )
        if self.layer_pattern is not None:
            bad = set(self.layer_pattern) - {"tsa", "psa"}
            if bad:
                raise ConfigError(f"akvq: layer_pattern entries must be 'tsa' or 'psa', got {sorted(bad)}")

    @property
    def needs_roles(self) -> bool:  # type: ignore[override]
        return self.tsa

    @property
    def needs_pivots(self) -> bool:  # type: ignore[override]
        return self.psa and self.num_pivots > 0

    @property
    def needs_pattern(self) -> bool:
        return self.tsa and self.layer_pattern is None and not self.roles_all_layers

    def resolve(self, model_name: str, num_layers: int) -> AKVQPolicy:
        """A copy with the model's TSA/PSA layer pattern (configs/layer_patterns/) when none was given."""
        if not self.needs_pattern:
            return self
        from akvq.saliency.patterns import layer_pattern

        return dataclasses.replace(self, layer_pattern=list(layer_pattern(model_name, num_layers)))

    def pattern_of(self, layer_idx: int, num_layers: int) -> str:
        if not self.tsa:
            return "psa"
        if self.roles_all_layers:
            return "tsa"
        if self.layer_pattern is None:
            return "psa"
        if len(self.layer_pattern) != num_layers:
            raise ConfigError(
                f"akvq: layer_pattern has {len(self.layer_pattern)} entries, model has {num_layers} layers"
            )
        return self.layer_pattern[layer_idx]

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        common = dict(
            group_size=self.group_size,
            clip_ratio=self.clip_ratio,
            clip_search=self.clip_search,
            window=self.window,
            hadamard=self.hadamard,
            group_across_heads=self.group_across_heads,
            float_zero=self.float_zero,
            clip_mode=self.clip_mode,
            window_bits=self.window_bits,
            flush_every=self.flush_every,
        )
        pattern = self.pattern_of(layer_idx, num_layers)
        # TSA layers give text and vision tokens different bits, which per-channel key groups cannot: there
        # keys stay per token, as in the paper.
        if self.k_axis == "channel" and pattern != "tsa":
            k = TensorPlan(
                bits=self.k_bits or self.bits,
                axis="channel",
                **{
                    **common,
                    "group_size": self.k_group_tokens,
                    "group_across_heads": False,
                    "window": self.window if self.k_window is None else self.k_window,
                },
            )
        else:
            k = TensorPlan(bits=self.k_bits or self.bits, **common)
        v = TensorPlan(bits=self.bits, **common)
        if pattern == "tsa":
            return LayerPlan(k=k, v=v, pattern="tsa", text_bits=self.text_bits)
        return LayerPlan(k=k, v=v, pattern="psa", protect_pivots=self.psa and self.num_pivots > 0)
