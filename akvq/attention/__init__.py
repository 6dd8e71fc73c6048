"""Decode paths over the quantized cache: reference (dequantize then attend), packed torch, packed C (CPU), packed
Triton (GPU).

`use_packed(model, cache)` registers them with transformers and switches a model over; see docs/efficiency.md."""

from akvq.attention.packed_torch import packed_decode
from akvq.attention.reference import reference_decode
from akvq.attention.register import (
           PACKED,
           REFERENCE,
           register_attention,
           use_cpu_kernel,
           use_packed,
           use_triton,
)

__all__ = ["PACKED", "REFERENCE", "packed_decode", "reference_decode", "register_attention", "use_cpu_kernel", "use_packed",
           "use_triton"]
