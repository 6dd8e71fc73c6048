"""The C fast path of `quantize` and `fwht` on CPU (`csrc/quant_cpu.c`), bit-identical to their torch code.

Why: a decode step quantizes one token per store, and in torch that is ~80 operator calls (~1 ms) per store. The
callers (`uniform.quantize`, `hadamard.fwht`) use this path when the library builds and the case is one it covers
(CPU, fp32, no autograd, all finite, fp16 metadata suffices), else their torch code (a clip search's near-tie:
torch for that row only); `tests/test_quant_cpu.py`
checks both agree bit for bit. `AKVQ_QUANT_C=0` turns it off."""

from __future__ import annotations

import ctypes
import functools
import math
import os
from pathlib import Path

import torch

from akvq import native

SOURCE = Path(__file__).with_name("csrc") / "quant_cpu.c"
# IEEE fp32 exactly as torch computes it: no contraction into FMAs, no reassociation, no fast-math.
FLAGS = ("-O2", "-ffp-contract=off", "-fPIC", "-shared", "-std=c11")
_i64, _ptr = ctypes.c_int64, ctypes.c_void_p
_state: dict[str, str] = {}


@functools.cache
def _lib() -> ctypes.CDLL | None:
    if os.environ.get("AKVQ_QUANT_C", "1") == "0":
        _state["reason"] = "off (AKVQ_QUANT_C=0)"
        return None
    lib, _state["reason"] = load_build()
    return lib


def load_build(switches: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """The library with extra `-D` switches (tests: `-DAKVQ_SEARCH_SCALAR`), bound, and the loader's message."""
    tag = "-".join(["c", *(f.removeprefix("-DAKVQ_").lower() for f in switches)])
    lib, why = native.load(SOURCE, (*FLAGS, *switches), tag, openmp=True)
    if lib is None:
        return None, why
    lib.akvq_fwht.argtypes = [_ptr, _ptr, _i64, _i64, ctypes.c_float, _i64]
    lib.akvq_quantize.argtypes = [
        _ptr,
        _i64,
        _i64,
        _i64,
        _i64,
        ctypes.c_float,
        _ptr,
        _i64,
        _i64,
        _i64,
        _ptr,
        _ptr,
        _ptr,
        _ptr,
        _i64,
    ]
    lib.akvq_fwht.restype = lib.akvq_quantize.restype = ctypes.c_int
    return lib, why


def status() -> str:
    _lib()
    return _state.get("reason", "")


@functools.cache
def _grid(grid: tuple[float, ...]) -> torch.Tensor:
    """The clip-search ratios as fp32 (torch rounds each Python float to fp32 the same way)."""
    return torch.tensor(grid, dtype=torch.float32)


def _eligible(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad and x.numel() > 0


def fwht(x: torch.Tensor) -> torch.Tensor | None:
    """`hadamard.fwht` of an fp32 CPU tensor (a new tensor), or None when this path does not apply."""
    if not _eligible(x):
        return None
    lib = _lib()
    if lib is None:
        return None
    d = x.shape[-1]
    x = x.contiguous()
    y = torch.empty_like(x)
    lib.akvq_fwht(x.data_ptr(), y.data_ptr(), y.numel() // d, d, math.sqrt(d), torch.get_num_threads())
    return y


def quantize(
    g: torch.Tensor,
    bits: int,
    group_size: int,
    ratio: float,
    float_zero: bool,
    clip_mode: str,
    grid: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """Codes, fp16 scale and fp16 zero of `uniform.quantize` for fp32 `g` [..., n] (`grid`: its clip search over
    these ratios), and the rows (indices into g viewed as [-1, n]) whose clip search hit a near-tie, whose winner
    depends on torch's summation order: the caller settles those rows in torch (None: no such row). None for the
    whole call when this path does not apply: the torch path then decides (fp32 metadata, non-finite elements)."""
    if not _eligible(g) or bits not in (1, 2, 4, 8) or clip_mode not in ("center", "minmax"):
        return None  # checked first: a CUDA tensor never builds the C library
    lib = _lib()
    if lib is None:
        return None
    g = g.contiguous()
    n = g.shape[-1]
    rows = g.numel() // n
    codes = torch.empty(*g.shape[:-1], (n * bits + 7) // 8, dtype=torch.uint8)
    scale = torch.empty(*g.shape[:-1], n // group_size, dtype=torch.float16)
    zero = torch.empty_like(scale)
    ratios = _grid(grid) if grid else None
    row_rc = torch.zeros(rows, dtype=torch.int8) if grid else None
    rc = lib.akvq_quantize(
        g.data_ptr(), rows, n, group_size, bits, ratio, ratios.data_ptr() if ratios is not None else None, len(grid),
        int(float_zero), int(clip_mode == "center"), codes.data_ptr(), scale.data_ptr(), zero.data_ptr(),
        row_rc.data_ptr() if row_rc is not None else None, torch.get_num_threads(),
    )  # fmt: skip
    if rc == 0:
        return codes, scale, zero, None
    if rc == 4 and row_rc is not None:
        return codes, scale, zero, (row_rc == 4).nonzero().flatten()
    return None
