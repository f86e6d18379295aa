"""Rates with 95 % confidence intervals (Wilson score interval)."""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; ``(0, 1)`` when ``n == 0``."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    k: int
    n: int

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.k + other.k, self.n + other.n)

    def to_dict(self) -> dict:
        lo, hi = self.ci95
        return {"rate": self.rate, "ci95": [lo, hi], "n": self.n, "k": self.k}


def clustered_interval(k: int, n: int, clusters: int) -> tuple[float, float]:
    """95 % interval of ``k`` of ``n`` samples drawn from only ``clusters`` distinct prompts (``n``
    cycles over them): the Wilson interval at the effective sample size ``clusters`` (the same
    rate, repeated samples of one prompt counted once). Conservative: samples of one prompt are
    treated as fully correlated. With ``clusters >= n`` (or unknown, 0) the plain Wilson interval."""
    if clusters <= 0 or clusters >= n:
        return wilson_interval(k, n)
    return wilson_interval(k * clusters / n, clusters)
