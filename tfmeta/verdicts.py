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

"A metric tracks generalization" cannot be read off a correlation over all epochs: when accuracy
rises and then falls, that correlation is mostly the metric's trend against the epoch, so any
rising metric would look "contradicted" and any falling one "reproduced". `tracking` therefore
tests the rising phase (up to each seed's peak) and the falling phase (from it on) separately:
reproduced only when the metric follows accuracy in both, contradicted only when it fails to in
both. A metric that merely trends follows accuracy in one phase and opposes it in the other, and
is neither. Where the target never falls in most seeds (no meta-overfitting), the rule falls back
to first differences, the correlation of the epoch-to-epoch changes, which a linear trend cannot
fake; there "contradicted" needs the changes to oppose each other (rho < -threshold).
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from tfmeta.stats import Interval, correlation_interval, pearson, spearman

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"

CORRELATION = 0.3      # |rho| that counts as "correlates" (a moderate monotone association)
MONOTONE = 0.8         # |rho| with the epoch that counts as "falls/grows monotonically"
RISE = 0.10            # relative rise of flatness before its peak that counts as "sharper first"
LOW = 0.25             # a baseline's metric "near 0" / "very low": below this fraction of MAML's
TAIL = 3               # epochs averaged at the end of a curve, and needed after a peak


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

    `overfits`: the peak has at least TAIL points after it, and the mean of the last TAIL points
    lies below the peak by more than `fall` times `margin` (the peak's 95% evaluation half-width).
    """
    index: int        # position in the curve
    epoch: int        # the epoch that position is
    value: float
    drop: float       # peak - mean of the last TAIL points
    margin: float
    overfits: bool


def peak(curve: Sequence[float], ci95: Optional[Sequence[float]] = None,
         epochs: Optional[Sequence[int]] = None, fall: float = 1.0) -> Peak:
    """The peak of a curve over epochs (`epochs`, default 1, 2, ...), higher = better."""
    y = np.asarray(curve, dtype=np.float64)
    i = int(np.nanargmax(y))
    margin = float(ci95[i]) if ci95 is not None else 0.0
    drop = float(y[i] - np.mean(y[-TAIL:]))
    overfits = (len(y) - 1 - i >= TAIL) and drop > fall * margin
    epoch = int(epochs[i]) if epochs is not None else i + 1
    return Peak(i, epoch, float(y[i]), drop, margin, bool(overfits))


PHASES, DIFFERENCES = "rising and falling phases", "first differences"


@dataclasses.dataclass
class Tracking:
    """The verdict on "x tracks y" over epochs: per-seed correlations in the rising phase (up to
    the peak of y) and the falling phase (from it on), or of first differences."""
    rule: str
    rise: Optional[Interval]
    fall: Optional[Interval]
    differences: Optional[Interval]
    verdict: str


def tracking(xs: Sequence[Sequence[float]], ys: Sequence[Sequence[float]],
             peaks: Sequence[Peak], threshold: float = 0.3) -> Tracking:
    """Whether metric curves xs follow target curves ys (one of each per seed), judged so that a
    shared trend with the epoch cannot decide it (see the module docstring). `peaks` are the
    targets' peaks; with most seeds meta-overfitting the phases are tested, else first
    differences."""
    if sum(p.overfits for p in peaks) * 2 > len(peaks):
        rise = correlation_interval([rank_correlation(np.asarray(x)[:p.index + 1],
                                                      np.asarray(y)[:p.index + 1])
                                     for x, y, p in zip(xs, ys, peaks)])
        fall = correlation_interval([rank_correlation(np.asarray(x)[p.index:],
                                                      np.asarray(y)[p.index:])
                                     for x, y, p in zip(xs, ys, peaks)])
        verdicts = {side(rise, threshold, True), side(fall, threshold, True)}
        verdict = verdicts.pop() if len(verdicts) == 1 else INCONCLUSIVE
        return Tracking(PHASES, rise, fall, None, verdict)
    changes = correlation_interval([rank_correlation(np.diff(x), np.diff(y))
                                    for x, y in zip(xs, ys)])
    verdict = (REPRODUCED if side(changes, threshold, True) == REPRODUCED else
               CONTRADICTED if side(changes, -threshold, False) == REPRODUCED else INCONCLUSIVE)
    return Tracking(DIFFERENCES, None, None, changes, verdict)


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
