"""Normalized fast Walsh-Hadamard transform: spreads channel outliers before quantization, (xH)(yH)^T = xy^T."""

from __future__ import annotations

import functools
import math

import torch

from akvq.quant import cpu


def is_power_of_two(n: int) -> bool:
    """The one power-of-two test (the Sylvester construction, hence every Hadamard head_dim, needs one)."""
    return n > 0 and not n & (n - 1)


def check_dim(d: int) -> None:
    """The Sylvester construction needs a power of two; anything else would be silently wrong."""
    if not is_power_of_two(d):
        raise ValueError(
            f"the Walsh-Hadamard transform needs a power-of-two head_dim, got {d}; "
            "disable it (quant.hadamard=false) for this model"
        )


def fwht(x: torch.Tensor) -> torch.Tensor:
    """x @ H / sqrt(d) along the last dim in O(d log d). H is symmetric, so the transform is its own inverse."""
    d = x.shape[-1]
    check_dim(d)
    fast = cpu.fwht(x)
    if fast is not None:
        return fast
    if x.is_cuda:
        # One matmul: the butterfly below is 3 log2(d) + 2 launches (23 at d = 128), each ~5-10 us of host time,
        # and a GPU decode step runs four transforms a layer (K and V flushed, q, the output). fp32 products unless
        # the user allowed TF32 for matmuls (torch's default does not).
        return (x.float() @ _dense(d, x.device)).to(x.dtype)
    return _butterfly(x)


def _butterfly(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    shape = x.shape
    y = x.reshape(-1, d)
    h = 1
    while h < d:
        y = y.view(-1, d // (2 * h), 2, h)
        a, b = y[:, :, 0, :], y[:, :, 1, :]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return (y.reshape(shape) / math.sqrt(d)).to(x.dtype)


@functools.lru_cache(maxsize=16)
def _dense(d: int, device: torch.device) -> torch.Tensor:
    """The normalized H in fp32 on `device`, built on the host (`hadamard_matrix` there never takes this branch)."""
    return hadamard_matrix(d).to(device)


def hadamard_matrix(d: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Dense normalized H (for kernels that fold H into a matmul and for tests)."""
    return fwht(torch.eye(d, dtype=dtype, device=device))
