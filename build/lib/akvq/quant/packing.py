"""Bit codes <-> uint8 along the last dim, so a 2-bit cache really holds four codes per byte."""

from __future__ import annotations

import torch

PACKABLE_BITS = (1, 2, 4, 8)


def codes_per_byte(bits: int) -> int:
    if bits not in PACKABLE_BITS and bits != 3:
        raise ValueError(f"cannot pack {bits}-bit codes; supported: 1, 2, 3, 4, 8")
    return 8 // bits if bits != 3 else 0


def packed_len(n: int, bits: int) -> int:
    """Bytes needed for n codes of `bits` bits (3-bit codes take 3 bytes per 8 codes)."""
    return (n * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2^bits) along the last dim; the first code sits in the lowest bits."""
    codes = codes.to(torch.uint8)
    n = codes.shape[-1]
    if bits == 8:
        return codes.contiguous()
    if bits == 3:
        # 8 codes -> 24 bits -> 3 bytes, via a bit-plane free int32 word.
        pad = (-n) % 8
        c = torch.nn.functional.pad(codes, (0, pad)).to(torch.int32).unflatten(-1, (-1, 8))
        shifts = torch.arange(0, 24, 3, device=codes.device, dtype=torch.int32)
        word = (c << shifts).sum(-1)
        out = torch.stack([(word >> s) & 0xFF for s in (0, 8, 16)], dim=-1).to(torch.uint8).flatten(-2)
        return out[..., : packed_len(n, 3)].contiguous()
    per = codes_per_byte(bits)
    pad = (-n) % per
    c = torch.nn.functional.pad(codes, (0, pad)).unflatten(-1, (-1, per))
    shifts = torch.arange(0, 8, bits, device=codes.device, dtype=torch.uint8)
    return (c << shifts).sum(-1, dtype=torch.uint8).contiguous()


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack`: uint8 codes, last dim n."""
    if bits == 8:
        return packed[..., :n]
    if bits == 3:
        pad = (-packed.shape[-1]) % 3
        b = torch.nn.functional.pad(packed, (0, pad)).to(torch.int32).unflatten(-1, (-1, 3))
        word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        shifts = torch.arange(0, 24, 3, device=packed.device, dtype=torch.int32)
        codes = ((word.unsqueeze(-1) >> shifts) & 0x7).to(torch.uint8).flatten(-2)
        return codes[..., :n]
    codes_per_byte(bits)  # validates bits
    shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
    mask = (1 << bits) - 1
    codes = ((packed.unsqueeze(-1) >> shifts) & mask).flatten(-2)
    return codes[..., :n]
