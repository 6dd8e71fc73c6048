"""Largest batch under a memory budget: predict from measured points, bracket, then bisect to within 5%.

Why not bisection from 1: on CPU each point is a fresh process that decodes a long context; memory grows linearly
in the batch (the cache), so two points predict the answer; a final bisection between the largest batch that fit
and the smallest that did not bounds the error (`tolerance`), whatever the prediction did."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Point:
    batch: int
    peak_bytes: int | None  # None: the point failed to allocate (OOM)
    info: dict[str, Any] = field(default_factory=dict)

    def fits(self, budget: int) -> bool:
        return self.peak_bytes is not None and self.peak_bytes <= budget


@dataclass
class SearchResult:
    batch: int | None  # largest measured batch that fits (None: not even batch 1)
    capped: bool  # the search stopped at the cap, the true largest batch may be larger
    points: list[Point]
    above: int | None = None  # smallest measured batch that did not fit: the answer lies in [batch, above)
    reason: str = ""  # why `batch` is None, in words


def _line(points: list[Point]) -> tuple[float, float] | None:
    """(base, bytes per sequence) from the two fitting points farthest apart."""
    ok = sorted((p for p in points if p.peak_bytes is not None), key=lambda p: p.batch)
    if len(ok) < 2 or ok[-1].batch == ok[0].batch:
        return None
    a, b = ok[0], ok[-1]
    slope = (b.peak_bytes - a.peak_bytes) / (b.batch - a.batch)
    return a.peak_bytes - slope * a.batch, slope


def resolved(lo: int, hi: int | None, tolerance: float) -> bool:
    """[lo, hi) pins the largest batch to within `tolerance` of lo (or to one batch)."""
    return hi is not None and hi - lo <= max(1, math.floor(lo * tolerance))


def largest_batch(
    measure: Callable[[int], Point],
    budget: int,
    first: Point,
    per_seq_bytes: float,
    cap: int,
    max_points: int = 4,
    margin: float = 0.97,
    tolerance: float = 0.05,
    max_total: int = 24,
) -> SearchResult:
    """Search the largest batch whose measured peak stays within `budget`.

    `first` is a measured point; `per_seq_bytes` the cache bytes of one sequence (the first guess of the slope).
    Up to `max_points` guesses solve base + slope * B = margin * budget on the points so far; then, while no
    batch above the largest fitting one has been measured, the search steps up; then it bisects until the
    answer is known to within `tolerance` (at most `max_total` points in all). An OOM (no peak measured)
    counts as not fitting."""
    points = [first]
    lo = first.batch if first.fits(budget) else 0
    hi = None if first.fits(budget) else first.batch  # smallest batch known not to fit

    def probe(b: int) -> None:
        nonlocal lo, hi
        p = measure(b)
        points.append(p)
        if p.fits(budget):
            lo = max(lo, b)
        else:
            hi = b if hi is None else min(hi, b)

    base, slope = (first.peak_bytes or budget) - per_seq_bytes * first.batch, max(per_seq_bytes, 1.0)
    for _ in range(max_points):  # 1. predict from the line through the points
        if resolved(lo, hi, tolerance) or lo >= cap or points[-1].peak_bytes is None:
            break  # (an OOM says nothing about the slope)
        line = _line(points)
        if line is not None and line[1] > 0:
            base, slope = line
        guess = min(math.floor((margin * budget - base) / slope), cap)
        if guess <= lo or (hi is not None and guess >= hi):
            break
        probe(guess)
    step = max(1, math.ceil(lo * 2 * tolerance))
    while hi is None and lo < cap and len(points) < max_total:  # 2. bracket: find a batch that does not fit
        probe(min(cap, lo + step))
        step *= 2
    while (
        hi is not None and not resolved(lo, hi, tolerance) and len(points) < max_total
    ):  # 3. bisect [lo, hi)
        probe((lo + hi) // 2)
    reason = "" if lo else f"batch {hi} does not fit in the budget ({budget / 2**30:.2f} GiB)"
    return SearchResult(lo or None, lo >= cap, points, hi, reason)


def available_memory(device: str = "cpu") -> int:
    """Bytes this process may still allocate without pushing the machine into swap (CUDA: free device memory)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 0))
    except OSError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_budget(budget: int, base_bytes: int | None, available: int) -> str | None:
    """One line saying why no batch can be searched under `budget`, or None when it can."""
    gib = 2**30
    if budget > available:
        return (
            f"budget_gib={budget / gib:.2f} is more than this machine's available memory "
            f"({available / gib:.2f} GiB): lower budget_gib"
        )
    if base_bytes is not None and base_bytes >= budget:
        return (
            f"budget_gib={budget / gib:.2f} is below the base footprint ({base_bytes / gib:.2f} GiB: model and "
            "runtime before any cache): raise budget_gib"
        )
    return None


__all__ = ["Point", "SearchResult", "available_memory", "check_budget", "largest_batch", "resolved"]
