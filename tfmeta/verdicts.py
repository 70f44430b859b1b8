"""Verdict rules: does a curve statistic, repeated over seeds, support a claim?

Every claim test reduces to one number per seed (a correlation over epochs, a relative change, a
ratio). The seeds' numbers give a 95% interval; a claim's direction and threshold turn the interval
into a verdict:

    reproduced     the whole interval lies on the claim's side of the threshold;
    contradicted   the whole interval lies on the other side;
    inconclusive   the interval straddles the threshold, or a seed had no value.

Correlations are averaged as Fisher z = atanh(r), whose spread is near-normal, and mapped back.
Intervals are Student t intervals (n - 1 degrees of freedom): with 3 seeds t = 4.30, so a verdict
needs seeds that agree.
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from tfmeta.report import pearson, spearman

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

CORRELATION = 0.3      # |rho| that counts as "correlates" (a moderate monotone association)
MONOTONE = 0.8         # |rho| with the epoch that counts as "falls/grows monotonically"
RISE = 0.10            # relative rise of flatness before its peak that counts as "sharper first"
LOW = 0.25             # a baseline's metric "near 0" / "very low": below this fraction of MAML's
TAIL = 3               # epochs averaged at the end of a curve, and needed after a peak


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


def side(iv: Interval, threshold: float, above: bool) -> str:
    """The verdict for a claim that the statistic lies above (or below) `threshold`."""
    if not (np.isfinite(iv.low) and np.isfinite(iv.high)):
        return INCONCLUSIVE
    if above:
        return REPRODUCED if iv.low > threshold else CONTRADICTED if iv.high < threshold \
            else INCONCLUSIVE
    return REPRODUCED if iv.high < threshold else CONTRADICTED if iv.low > threshold \
        else INCONCLUSIVE


def within(iv: Interval, bound: float) -> str:
    """Verdict for "no association": the interval inside (-bound, bound) reproduces it, an
    interval wholly outside contradicts it."""
    if not (np.isfinite(iv.low) and np.isfinite(iv.high)):
        return INCONCLUSIVE
    if -bound < iv.low and iv.high < bound:
        return REPRODUCED
    return CONTRADICTED if iv.low > bound or iv.high < -bound else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of parts: contradicted if any part is, reproduced if all are."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


@dataclasses.dataclass
class Peak:
    """Where a generalization curve peaks, and whether it then meta-overfits.

    `overfits`: the peak has at least TAIL epochs after it, and the mean of the last TAIL epochs
    lies below the peak by more than `margin` (the peak's 95% evaluation half-width).
    """
    epoch: int        # 1-based
    value: float
    drop: float       # peak - mean of the last TAIL epochs
    margin: float
    overfits: bool


def peak(curve: Sequence[float], ci95: Optional[Sequence[float]] = None) -> Peak:
    """The peak of a curve indexed by epoch (index 0 = epoch 1), higher = better."""
    y = np.asarray(curve, dtype=np.float64)
    i = int(np.nanargmax(y))
    margin = float(ci95[i]) if ci95 is not None else 0.0
    drop = float(y[i] - np.mean(y[-TAIL:]))
    overfits = (len(y) - 1 - i >= TAIL) and drop > margin
    return Peak(i + 1, float(y[i]), drop, margin, bool(overfits))


def epoch_trend(curve: Sequence[float], start: int = 1) -> float:
    """Spearman's rho of a curve with the epoch, from 1-based epoch `start` on; NaN for fewer
    than TAIL + 1 epochs."""
    y = np.asarray(curve, dtype=np.float64)[start - 1:]
    if y.size < TAIL + 1:
        return math.nan
    return spearman(np.arange(y.size), y)


def rank_correlation(x: Sequence[float], y: Sequence[float], start: int = 1) -> float:
    """Spearman's rho of two epoch curves from 1-based epoch `start` on (NaN if too short)."""
    x, y = np.asarray(x, np.float64)[start - 1:], np.asarray(y, np.float64)[start - 1:]
    return spearman(x, y) if x.size >= TAIL + 1 else math.nan


def linear_correlation(x: Sequence[float], y: Sequence[float], start: int = 1) -> float:
    """Pearson's r of two epoch curves from 1-based epoch `start` on (NaN if too short)."""
    x, y = np.asarray(x, np.float64)[start - 1:], np.asarray(y, np.float64)[start - 1:]
    return pearson(x, y) if x.size >= TAIL + 1 else math.nan
