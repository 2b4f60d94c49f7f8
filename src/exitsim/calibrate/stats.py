"""The arithmetic of a measurement: medians, spreads and straight-line fits.

A benchmark is run many times and its samples are skewed (a timer interrupt, another
process, a cold cache only ever make a run slower), so a figure is the median, with
the spread around it given as the 10th to 90th percentile and the interquartile range.
A cost per page is the slope of a straight line through (pages, time) points, fitted by
least squares; fitted once per repeat, its median and spread come from the repeats like
any other figure's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation between the closest ranks (the
    "linear" method: the median of an even count is the mean of the middle two)."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is outside 0..1")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return quantile(values, 0.5)


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure: the median of ``n`` values and their spread."""

    median: float
    p10: float
    p90: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, Any]:
        """Plain data, each number rounded to 0.1 so the JSON is stable to read."""
        return {
            "median": round(self.median, 1),
            "p10": round(self.p10, 1),
            "p90": round(self.p90, 1),
            "q1": round(self.q1, 1),
            "q3": round(self.q3, 1),
            "min": round(self.min, 1),
            "max": round(self.max, 1),
            "n": self.n,
        }


def figure(values: Sequence[float]) -> Figure:
    """The median and spread of ``values`` (at least one)."""
    if not values:
        raise ValueError("a figure needs at least one value")
    return Figure(
        median=median(values),
        p10=quantile(values, 0.1),
        p90=quantile(values, 0.9),
        q1=quantile(values, 0.25),
        q3=quantile(values, 0.75),
        min=float(min(values)),
        max=float(max(values)),
        n=len(values),
    )


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """The least-squares line through the points: ``(slope, intercept)``. Needs at
    least two distinct x."""
    if len(xs) != len(ys):
        raise ValueError(f"line_fit: {len(xs)} x and {len(ys)} y")
    if len(set(xs)) < 2:
        raise ValueError("line_fit needs at least two distinct x")
    n = len(xs)
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    return slope, my - slope * mx


def slopes_by_repeat(
    xs: Sequence[float], runs: Sequence[Sequence[float]]
) -> tuple[list[float], list[float]]:
    """For each repeat (``runs[r][i]`` is the y at ``xs[i]`` in repeat ``r``), the
    slope and the intercept of its own line."""
    fits = [line_fit(xs, ys) for ys in runs]
    return [s for s, _ in fits], [b for _, b in fits]


def relative_error(predicted: float, measured: float) -> float | None:
    """``(predicted - measured) / measured``; None when nothing was measured."""
    if measured == 0:
        return None
    return (predicted - measured) / measured
