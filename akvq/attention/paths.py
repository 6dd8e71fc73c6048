"""The decode paths, what each can read, and the one selector.

Every path declares, for every field of `TensorPlan` (how K or V is stored), which values it reads: a positive
set, or `ANY` for fields that change what is stored but not how it is read (clipping, window). The selector checks
each store's plan against the declaration; a field a path does not declare (a new plan field) fails closed to the
reference path, with one log line, instead of computing wrong attention. `tests/test_attention.py` enumerates the
plan fields so a new field without a declaration in every path fails the suite.

One setting picks the path: `attention = auto | reference | packed_torch | packed_c | packed_c_twopass |
packed_c_fp32 | triton` (the cache's
`attention`, set by `akvq.attention.use_packed`). `auto`: Triton on CUDA, else the C kernel on CPU, else torch."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from akvq.cache.store import TensorStore
from akvq.policies.base import TensorPlan

log = logging.getLogger(__name__)

ATTENTION = ("auto", "reference", "packed_torch", "packed_c", "packed_c_twopass", "packed_c_fp32", "triton")
ANY: frozenset[Any] = frozenset({"<any>"})  # the field does not change how stored rows are read
PLAN_FIELDS = tuple(f.name for f in dataclasses.fields(TensorPlan))

# Fields that decide what gets stored (and when) but not the stored layout a reader sees.
_STORAGE_ONLY = {
    "clip_ratio": ANY,
    "clip_search": ANY,
    "clip_mode": ANY,
    "window": ANY,
    "flush_every": ANY,  # when tokens leave the window: readers see a longer or shorter 16-bit tail, nothing else
    "group_size": ANY,
    "reorder_by": ANY,
}


@dataclass(frozen=True)
class DecodePath:
    """`reads`: TensorPlan field -> accepted values (or ANY). `fits`: what the plan cannot say (shapes, devices,
    whether the kernel built): None when it can run, else why not. `decode(query, kstore, vstore, mask, scaling)`
    returns [B, Hq, 1, D]."""

    name: str
    reads: Mapping[str, frozenset[Any]]
    fits: Callable[[TensorStore, TensorStore, bool], str | None]
    decode: Callable[..., Any] | None

    def why_not(self, kstore: TensorStore, vstore: TensorStore, cuda: bool) -> str | None:
        """None when this path reads both stores, else the first reason (an undeclared field is a reason)."""
        for role, st in (("k", kstore), ("v", vstore)):
            for f in PLAN_FIELDS:
                ok = self.reads.get(f)
                if ok is None:
                    return f"plan field {f!r} is not declared by {self.name}"
                value = getattr(st.plan, f)
                if ok is not ANY and value not in ok:
                    return f"{role}.{f}={value!r}"
        return self.fits(kstore, vstore, cuda)


def _group_fits(st: TensorStore) -> bool:
    g, d = st.group, st.head_dim
    return st.plan.axis != "token" or not (d % g and g % d)


def _torch_fits(k: TensorStore, v: TensorStore, cuda: bool) -> str | None:
    if k.perm is not None or v.perm is not None:
        return "permuted channels"
    return None if _group_fits(k) and _group_fits(v) else "groups neither within nor of whole heads"


def _c_fits(k: TensorStore, v: TensorStore, cuda: bool) -> str | None:
    from akvq.attention import packed_cpu

    if cuda:
        return "CUDA tensors"
    if v.plan.axis == "channel":
        return "per-channel values"
    if k.perm is not None or v.perm is not None:
        return "permuted channels"
    if not (k.half_meta and v.half_meta):
        return "fp32 scale/zero (groups that overflow fp16)"
    return None if packed_cpu.available() else f"kernel unavailable ({packed_cpu.status()})"


def _triton_fits(k: TensorStore, v: TensorStore, cuda: bool) -> str | None:
    from akvq.attention import packed_triton

    if not cuda:
        return "CPU tensors"
    if not packed_triton.available():
        return "triton unavailable"
    if k.perm is not None or v.perm is not None:
        return "permuted channels"
    for st in (k, v):
        if st.plan.axis == "channel" and st.group % (8 // st.plan.bits):
            return "channel groups that are not whole bytes"
    if v.plan.axis == "channel" and v.plan.float_zero:  # channel values are read by the torch fold
        return "float zero points on channel-axis values"
    return None


def _torch_decode(*args: Any) -> Any:
    from akvq.attention.packed_torch import packed_decode

    return packed_decode(*args)


def _c_decode(*args: Any) -> Any:
    from akvq.attention import packed_cpu

    return packed_cpu.packed_decode(*args)


def _c_twopass_decode(*args: Any) -> Any:
    """The C kernel's two-kernel form (scores to memory, torch softmax, outputs): the fused kernel's control."""
    from akvq.attention import packed_cpu

    return packed_cpu.packed_decode(*args, fused=False)


def _c_fp32_decode(*args: Any) -> Any:
    """The C kernel with q kept in fp32 (the integer path's control: same layouts, no int8 query)."""
    from akvq.attention import packed_cpu

    return packed_cpu.packed_decode(*args, int8=False)


def _triton_decode(*args: Any) -> Any:
    from akvq.attention import packed_triton

    return packed_triton.packed_decode(*args)


_ALL = {f: ANY for f in PLAN_FIELDS}
_FOLDED = {"hadamard": ANY, "smooth_alpha": ANY, "group_across_heads": ANY}  # undone on q and the output
# Every packed path reads the recent window through `TensorStore.window()` (`packed_torch.exact_*`; the C kernel
# takes a 16-bit tail itself, an 8-bit one falls to that torch code), so both storages of it are read.
_WINDOW = {"window_bits": frozenset({16, 8})}

_C_CAPS = {
    **_STORAGE_ONLY,
    **_FOLDED,
    **_WINDOW,
    "bits": frozenset({1, 2, 3, 4, 8}),
    "axis": frozenset({"token", "channel"}),
    "float_zero": frozenset({False, True}),
    "reorder": frozenset({False}),
}

PATHS: dict[str, DecodePath] = {
    "reference": DecodePath("reference", _ALL, lambda k, v, cuda: None, None),
    "packed_torch": DecodePath(
        "packed_torch",
        {
            **_STORAGE_ONLY,
            **_FOLDED,
            **_WINDOW,
            "bits": frozenset({1, 2, 3, 4, 8}),
            "axis": frozenset({"token", "channel"}),
            "float_zero": frozenset({False}),
            "reorder": frozenset({False}),
        },
        _torch_fits,
        _torch_decode,
    ),
    "packed_c": DecodePath(
        "packed_c",
        _C_CAPS,
        _c_fits,
        _c_decode,
    ),
    "packed_c_twopass": DecodePath(
        "packed_c_twopass",
        _C_CAPS,
        _c_fits,
        _c_twopass_decode,
    ),
    "packed_c_fp32": DecodePath(
        "packed_c_fp32",
        _C_CAPS,
        _c_fits,
        _c_fp32_decode,
    ),
    "triton": DecodePath(
        "triton",
        {
            **_STORAGE_ONLY,
            **_FOLDED,
            **_WINDOW,
            "bits": frozenset({1, 2, 4, 8}),
            "axis": frozenset({"token", "channel"}),
            "float_zero": frozenset({False, True}),  # KIVI's and akvq_plus's group minimum as zero point
            "reorder": frozenset({False}),
        },
        _triton_fits,
        _triton_decode,
    ),
}


def check_setting(attention: str) -> str:
    if attention not in ATTENTION:
        from akvq.errors import ConfigError

        raise ConfigError(f"attention={attention!r}; choose one of {', '.join(ATTENTION)}")
    return attention


def select(attention: str, kstore: TensorStore, vstore: TensorStore, cuda: bool) -> DecodePath:
    """The path for one decode step: the one asked for, or for `auto` the fastest that reads these stores;
    the reference when none does (logged once per reason)."""
    wanted = ["triton", "packed_c", "packed_torch"] if attention == "auto" else [attention]
    reason = ""
    for name in wanted:
        path = PATHS[name]
        why = path.why_not(kstore, vstore, cuda)
        if why is None:
            return path
        reason = reason or f"{name}: {why}"
    if attention != "reference":
        _fallback(attention, reason)
    return PATHS["reference"]


@functools.cache
def _fallback(attention: str, reason: str) -> None:
    log.info("attention=%s falls back to the reference path (%s)", attention, reason)


__all__ = ["ANY", "ATTENTION", "PATHS", "PLAN_FIELDS", "DecodePath", "check_setting", "select"]
