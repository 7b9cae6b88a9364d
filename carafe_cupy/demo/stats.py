"""Means over seeds with Student-t confidence intervals (no SciPy needed).

Every seed trains every upsampler once, so a score has one value per seed; its interval
is mean ± t * sd / sqrt(n), with t the two-sided quantile of Student's t at n - 1 degrees
of freedom. Differences between two upsamplers are taken seed by seed (paired) first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def t_coverage(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (integer >= 1) degrees of freedom, from the
    closed forms of the integer-df distribution (Abramowitz and Stegun 26.7.3-4)."""
    if df < 1 or df != int(df):
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:  # odd
        term, series = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= cos2 * (2 * j) / (2 * j + 1)
            series += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    term, series = 1.0, 1.0
    for j in range(1, df // 2):
        term *= cos2 * (2 * j - 1) / (2 * j)
        series += term
    return math.sin(theta) * series


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = ``confidence`` (e.g. 2.776 for 0.95 and 4 df)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    low, high = 0.0, 1.0
    while t_coverage(high, df) < confidence:
        high *= 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_coverage(middle, df) < confidence else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values, their sample standard deviation and a t confidence interval."""

    mean: float
    sd: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The t interval of the mean of ``values`` (at least two, all finite)."""
    data = [float(value) for value in values]
    if len(data) < 2:
        raise ValueError(f"a confidence interval needs at least two values, got {len(data)}")
    if not all(math.isfinite(value) for value in data):
        raise ValueError(f"values must be finite, got {data}")
    n = len(data)
    mean = sum(data) / n
    sd = math.sqrt(sum((value - mean) ** 2 for value in data) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return Interval(mean, sd, mean - half, mean + half, n, confidence)


def paired_interval(
    first: Sequence[float], second: Sequence[float], confidence: float = CONFIDENCE
) -> Interval:
    """The t interval of the mean of ``first[i] - second[i]`` (the same seed i)."""
    if len(first) != len(second):
        raise ValueError(f"paired values differ in number: {len(first)} and {len(second)}")
    return mean_interval([a - b for a, b in zip(first, second)], confidence)
