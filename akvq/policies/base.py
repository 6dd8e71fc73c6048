"""What a policy decides: per layer, how K and V are stored once tokens leave the 16-bit window."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from akvq.errors import ConfigError
from akvq.quant.hadamard import is_power_of_two
from akvq.quant.uniform import check_bits, check_clip_mode

if TYPE_CHECKING:
    from transformers.cache_utils import Cache

HP_DTYPES = ("auto", "model", "float16", "bfloat16", "float32")
# Storage of the recent window: 16-bit, or 8-bit codes with an fp16 scale per 32 channels (`akvq.quant.q8`).
WINDOW_BITS = (16, 8)


def check_window_bits(window_bits: int, what: str) -> None:
    """The one window_bits check (every policy with a recent window): a ConfigError before any model loads."""
    if window_bits not in WINDOW_BITS or isinstance(window_bits, bool):
        raise ConfigError(
            f"{what}: window_bits={window_bits!r} is not supported; choose one of {list(WINDOW_BITS)}"
        )


def default_clip(bits: int) -> float:
    """The paper's clipping ratios: 0.8 at 2-bit, 1.0 at 4-bit (and above)."""
    return 0.8 if bits <= 2 else 1.0


@dataclass(frozen=True)
class TensorPlan:
    """How one of K or V is stored. `axis="token"` groups channels of one token (per-token quantization);
    `axis="channel"` groups `group_size` consecutive tokens of one channel (KIVI's keys)."""

    bits: int = 2
    group_size: int = 128
    clip_ratio: float | None = None
    clip_search: bool = False
    axis: str = "token"
    window: int = 128
    hadamard: bool = False
    smooth_alpha: float | None = None
    group_across_heads: bool = False
    float_zero: bool = False  # store the group minimum instead of the paper's integer zero point
    reorder: bool = False  # SKVQ: permute channels by calibrated range before grouping (token axis only)
    reorder_by: str = "absmax"  # the statistic channels are sorted by: "absmax" or "center" (of [min, max])
    clip_mode: str = "center"  # how clip_ratio shrinks a group's range (`akvq.quant.uniform.CLIP_MODES`)
    # The recent window (and a per-channel store's unflushed tail): 16 = kept as is; 8 = int8 codes, symmetric
    # absmax, one fp16 scale per 32 channels of a token and head (llama.cpp's q8_0), dequantized on read.
    window_bits: int = 16
    # Token axis: tokens leave the window `flush_every` at a time (the window holds window .. window+flush_every-1
    # tokens), so the per-store work of quantizing and appending runs once per flush_every decode steps.
    flush_every: int = 1

    def __post_init__(self) -> None:
        check_window_bits(self.window_bits, "TensorPlan")

    @property
    def chunk(self) -> int:
        """Tokens leave the window in multiples of this: a channel group needs all its tokens at once."""
        return self.group_size if self.axis == "channel" else self.flush_every

    def row_group(self, num_heads: int, head_dim: int) -> int:
        """Channels per group. Within a head: min(group_size, head_dim). Across heads (SKVQ): the largest
        group up to group_size that divides heads*head_dim (gcd; e.g. 64 for 3 heads of 64 and group_size 128)."""
        if self.axis == "channel":
            return self.group_size
        if self.group_across_heads:
            width = num_heads * head_dim
            g = min(self.group_size, width)
            return g if width % g == 0 else math.gcd(g, width)
        return min(self.group_size, head_dim)

    def clip_for(self, bits: int) -> float:
        return self.clip_ratio if self.clip_ratio is not None else default_clip(bits)


@dataclass(frozen=True)
class LayerPlan:
    k: TensorPlan | None  # None: the layer keeps everything in 16-bit (fp16 policy)
    v: TensorPlan | None
    pattern: str = "uniform"  # "uniform" | "tsa" | "psa"
    text_bits: int | None = None  # TSA: text tokens outside the window
    protect_pivots: bool = False  # PSA: pivot tokens stay 16-bit
    sink: int = 0  # first non-pad tokens kept 16-bit (SKVQ)

    @property
    def full_precision(self) -> bool:
        return self.k is None


@dataclass
class Policy:
    """Base of every method. Subclasses are dataclasses whose fields are the method's knobs; they are values:
    nothing that uses a policy changes it (`akvq.api.resolve_policy` returns a resolved copy)."""

    name: ClassVar[str] = "base"
    needs_roles: ClassVar[bool] = False
    needs_pivots: ClassVar[bool] = False
    # Storage of the full-precision tokens: auto = the model's dtype if it is 16-bit, else float16 (honest
    # 16-bit accounting on CPU, where models compute in fp32); model = exactly the model's dtype.
    hp_dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.hp_dtype not in HP_DTYPES:
            raise ConfigError(f"hp_dtype must be one of {HP_DTYPES}, got {self.hp_dtype!r}")
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for impossible settings; runs at construction, before any model loads."""

    def unavailable(self) -> str | None:
        """Why this method cannot run here (an optional package it needs is absent), else None."""
        return None

    def layer_plan(self, layer_idx: int, num_layers: int) -> LayerPlan:
        raise NotImplementedError

    def check_model(self, num_kv_heads: int, head_dim: int, num_layers: int) -> None:
        """Shape checks that need the model's config (still before weights load)."""
        for i in range(num_layers):
            plan = self.layer_plan(i, num_layers)
            for t in (plan.k, plan.v):
                if t is None:
                    continue
                if t.hadamard:
                    if not is_power_of_two(head_dim):
                        raise ConfigError(
                            f"{self.name}: the Walsh-Hadamard transform needs a power-of-two head_dim, "
                            f"this model has {head_dim}; set hadamard=false"
                        )
                if (
                    t.axis == "token"
                    and head_dim % t.row_group(num_kv_heads, head_dim)
                    and not t.group_across_heads
                ):
                    raise ConfigError(
                        f"{self.name}: group_size {t.group_size} does not divide head_dim={head_dim}"
                    )
                if t.axis == "channel" and (t.group_size * t.bits) % 8:
                    raise ConfigError(
                        f"{self.name}: a channel group of {t.group_size} {t.bits}-bit codes is not byte-aligned"
                    )

    def resolve(self, model_name: str, num_layers: int) -> Policy:
        """This policy with what it leaves to the model filled in (a new object; `self` is unchanged)."""
        return self

    def new_cache(self, num_layers: int, read_path: str = "dequantize") -> Cache:
        """The transformers Cache this method runs in: akvq's own by default. A method that is another library's
        cache (transformers' QuantizedCache, ...) overrides this, `layer_plan` and `check_model`, and returns a
        Cache with a `memory_report()` (docs/architecture.md, "add a method")."""
        from akvq.cache import AKVQCache

        return AKVQCache(self, num_layers, read_path=read_path)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.name, **dataclasses.asdict(self)}


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a method known under its `name` (the `policy:` key of configs/quant/*.yaml)."""
    POLICIES[cls.name] = cls
    return cls


__all__ = [
    "POLICIES",
    "LayerPlan",
    "Policy",
    "TensorPlan",
    "WINDOW_BITS",
    "check_bits",
    "check_clip_mode",
    "check_window_bits",
    "default_clip",
    "register",
]
