"""Largest batch under a memory budget: predict from measured points, verify, back off on OOM or overshoot.

Why not bisection from 1: on CPU each point is a fresh process that decodes a long context; memory grows linearly
in the batch (the cache), so two points predict the answer and one or two more confirm it."""

from __future__ import annotations

import math
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
    batch: int | None  # largest measured batch that fits (None: not even the smallest)
    capped: bool  # the search stopped at the cap, the true largest batch may be larger
    points: list[Point]


def _line(points: list[Point]) -> tuple[float, float] | None:
    """(base, bytes per sequence) from the two fitting points farthest apart."""
    ok = sorted((p for p in points if p.peak_bytes is not None), key=lambda p: p.batch)
    if len(ok) < 2 or ok[-1].batch == ok[0].batch:
        return None
    a, b = ok[0], ok[-1]
    slope = (b.peak_bytes - a.peak_bytes) / (b.batch - a.batch)
    return a.peak_bytes - slope * a.batch, slope


def largest_batch(
    measure: Callable[[int], Point],
    budget: int,
    first: Point,
    per_seq_bytes: float,
    cap: int,
    max_points: int = 4,
    margin: float = 0.97,
) -> SearchResult:
    """Search the largest batch whose measured peak stays within `budget`.

    `first` is a measured point; `per_seq_bytes` the cache bytes of one sequence (the first guess of the slope).
    Each next guess solves base + slope * B = margin * budget on the points so far; a point over the budget
    caps the search below it, an OOM (no peak measured) makes the next guess the midpoint."""
    points = [first]
    lo = first.batch if first.fits(budget) else 0
    hi = None if first.fits(budget) else first.batch  # smallest batch known not to fit
    base, slope = (first.peak_bytes or budget) - per_seq_bytes * first.batch, max(per_seq_bytes, 1.0)
    for _ in range(max_points):
        line = _line(points)
        if line is not None and line[1] > 0:
            base, slope = line
        guess = math.floor((margin * budget - base) / slope)
        guess = min(guess, cap, (hi - 1) if hi else cap)
        if points[-1].peak_bytes is None and hi is not None:  # OOM says nothing about the slope: bisect
            guess = (lo + hi) // 2
        if hi is not None and guess <= lo:
            guess = (lo + hi) // 2 if hi - lo > 1 else lo
        if guess <= lo or guess < 1:
            break
        p = measure(guess)
        points.append(p)
        if p.fits(budget):
            lo = guess
            if guess >= cap:
                break
        else:
            hi = guess
        if hi is not None and hi - lo <= max(1, lo // 50):
            break
    return SearchResult(lo or None, lo >= cap, points)


__all__ = ["Point", "SearchResult", "largest_batch"]
