"""Statistics of tfmeta's numbers: correlations across epochs, intervals across tasks and seeds.

Pure NumPy: reports, verdicts and evaluation share them, and the command line reads results
without starting TensorFlow.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def finite_pairs(x, y) -> tuple:
    """(x [m], y [m]): the pairs of equal-length x and y where both are finite."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _pearson_finite(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denominator == 0:
        return math.nan
    return float(np.clip(float(dx @ dy) / denominator, -1.0, 1.0))


def pearson(x, y) -> float:
    """Pearson's r over the pairs where both are finite; NaN for < 3 pairs or a constant side."""
    return _pearson_finite(*finite_pairs(x, y))


def average_ranks(x) -> np.ndarray:
    """1-based ranks of x; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)                 # rank of each distinct value's last occurrence
    return (ends - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(x, y) -> float:
    """Spearman's ρ: Pearson's r of the average ranks, over the pairs where both are finite."""
    x, y = finite_pairs(x, y)
    return _pearson_finite(average_ranks(x), average_ranks(y))


def t975(df: int) -> float:
    """The two-sided 95% Student t quantile for `df` degrees of freedom (normal beyond 30)."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


@dataclasses.dataclass
class Interval:
    """A mean over seeds with its 95% interval; `values` are the per-seed numbers."""
    mean: float
    low: float
    high: float
    values: list

    def text(self, digits: int = 2) -> str:
        if not np.isfinite(self.mean):
            return "n/a"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def interval(values: Sequence[float]) -> Interval:
    """Mean and Student t 95% interval of per-seed values; NaN bounds if any value is missing
    or fewer than 2 are given."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2 or not np.all(np.isfinite(x)):
        mean = float(x.mean()) if x.size and np.all(np.isfinite(x)) else math.nan
        return Interval(mean, math.nan, math.nan, x.tolist())
    half = t975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half), x.tolist())


def correlation_interval(rs: Sequence[float]) -> Interval:
    """The t interval of per-seed correlations, taken on Fisher z and mapped back to r.

    |r| is capped at 0.999 first: z is unbounded at +-1, so one seed at rho = -1 and another at
    -0.997 would otherwise look as far apart as -0.99 and 0."""
    r = np.clip(np.asarray(rs, dtype=np.float64), -0.999, 0.999)
    z = interval(np.arctanh(r))
    back = lambda v: float(np.tanh(v)) if np.isfinite(v) else math.nan  # noqa: E731
    return Interval(back(z.mean), back(z.low), back(z.high), np.asarray(rs, float).tolist())


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over tasks with its 95% normal confidence half-width, 1.96 * std / sqrt(n).

    Tasks whose adaptation diverged (NaN or Inf) are counted in `diverged` and left out of the
    mean, which would otherwise be NaN.
    """
    mean: float
    ci95: float
    diverged: int = 0


def estimate(values: np.ndarray) -> Estimate:
    """Mean and 95% CI half-width of the finite per-task values [n]."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return Estimate(float("nan"), float("nan"), int(values.size))
    spread = finite.std(ddof=1) if finite.size > 1 else 0.0
    return Estimate(float(finite.mean()), float(1.96 * spread / np.sqrt(finite.size)),
                    int(values.size - finite.size))
