"""Pure tensor math: uniform quantization, bit packing, Walsh-Hadamard transform. Imports nothing from transformers."""

from akvq.quant.hadamard import check_dim, fwht, is_power_of_two
from akvq.quant.packing import pack, unpack
from akvq.quant.q8 import dequantize_q8, quantize_q8
from akvq.quant.uniform import SUPPORTED_BITS, QTensor, dequantize, quantize

__all__ = [
    "SUPPORTED_BITS",
    "QTensor",
    "check_dim",
    "dequantize",
    "dequantize_q8",
    "fwht",
    "is_power_of_two",
    "pack",
    "quantize",
    "quantize_q8",
    "unpack",
]
