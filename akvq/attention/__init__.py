"""Decode paths over the quantized cache: reference (dequantize then attend), packed torch, packed C (CPU), packed
Triton (GPU), each declaring what it reads (`paths.py`), one selector from one setting.

`use_packed(model, cache, attention)` registers them with transformers and switches a model over; see
docs/efficiency.md."""

from akvq.attention.packed_torch import packed_decode
from akvq.attention.paths import ATTENTION, PATHS, select
from akvq.attention.reference import reference_decode
from akvq.attention.register import PACKED, REFERENCE, register_attention, use_packed

__all__ = [
    "ATTENTION",
    "PACKED",
    "PATHS",
    "REFERENCE",
    "packed_decode",
    "reference_decode",
    "register_attention",
    "select",
    "use_packed",
]
