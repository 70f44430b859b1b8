"""Verdict rules: does a curve statistic, repeated over seeds, support a claim?

Every claim test reduces to one number per seed (a correlation over epochs, a relative change, a
ratio). The seeds' numbers give a 95% interval; a claim's direction and threshold turn the interval
into a verdict:

    reproduced     the whole interval lies on the claim's side of the threshold;
    contradicted   the whole interval lies on the other side;
    inconclusive   the interval straddles the threshold, or a seed had no value;
    untestable     a statement about the falling phase of a setting that does not meta-overfit.

Correlations are averaged as Fisher z = atanh(r), whose spread is near-normal, and mapped back.
Intervals are Student t intervals (n - 1 degrees of freedom): with 3 seeds t = 4.30, so a verdict
needs seeds that agree. `tfmeta.power` gives each rule's power at a measured noise level.

Meta-overfitting (`meta_overfitting`) is decided per seed on the per-task values of the meta-test
tasks, which are the same tasks at every epoch: the peak epoch is chosen on one half of the tasks
(the even ones) and the fall from it to the mean of the last TAIL epochs is measured on the other
half, as paired per-task differences whose 95% interval must lie above 0. Choosing the peak on the
tasks that measure the fall would let the maximum of noise pass for a fall. A setting
meta-overfits when at least OVERFITTING_SEEDS of its seeds do (4 of 5).

"A metric tracks accuracy" is a conjunction over the rising phase (up to each seed's peak) and the
falling phase (from it on): reproduced when the per-seed rank correlations of both phases lie above
0.3, contradicted when either phase's lies wholly below it. A metric that keeps rising while
accuracy really falls does not track it. The falling phase is judged only in a setting that
meta-overfits; elsewhere it is untestable, and so is the claim unless its rising phase already
contradicts it. No verdict is drawn from first differences: two saturating curves share a
curvature that their differences correlate on.
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from tfmeta.stats import Interval, correlation_interval, interval, pearson, spearman

REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
UNTESTABLE = "untestable here (no meta-overfitting)"

CORRELATION = 0.3      # |rho| that counts as "correlates" (a moderate monotone association)
MONOTONE = 0.8         # |rho| with the epoch that counts as "falls/grows monotonically"
RISE = 0.10            # relative rise of flatness before its peak that counts as "sharper first"
LOW = 0.25             # a baseline's metric "near 0" / "very low": below this fraction of MAML's
TAIL = 3               # epochs averaged at the end of a curve, and needed after a peak
OVERFITTING_SEEDS = 0.8  # the share of a setting's seeds that must meta-overfit (4 of 5)


def side(iv: Interval, threshold: float, above: bool) -> str:
    """The verdict for a claim that the statistic lies above (or below) `threshold`."""
    if not (np.isfinite(iv.low) and np.isfinite(iv.high)):
        return INCONCLUSIVE
    if above:
        return REPRODUCED if iv.low > threshold else CONTRADICTED if iv.high < threshold \
            else INCONCLUSIVE
    return REPRODUCED if iv.high < threshold else CONTRADICTED if iv.low > threshold \
        else INCONCLUSIVE


def lean(iv: Interval, threshold: float, above: bool) -> str:
    """Which way an inconclusive interval leans: its mean on the claim's side of `threshold`, or
    on the other; "" when it has no mean."""
    if not np.isfinite(iv.mean):
        return ""
    return ("leans toward reproduced" if (iv.mean > threshold) == above
            else "leans toward contradicted")


def within(iv: Interval, bound: float) -> str:
    """Verdict for "no association": the interval inside (-bound, bound) reproduces it, an
    interval wholly outside contradicts it."""
    if not (np.isfinite(iv.low) and np.isfinite(iv.high)):
        return INCONCLUSIVE
    if -bound < iv.low and iv.high < bound:
        return REPRODUCED
    return CONTRADICTED if iv.low > bound or iv.high < -bound else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of parts: contradicted if any part is, reproduced if all are; untestable if
    the others are reproduced and some part is untestable."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if verdicts and all(v in (REPRODUCED, UNTESTABLE) for v in verdicts):
        return UNTESTABLE
    return INCONCLUSIVE


@dataclasses.dataclass
class Fall:
    """One seed's accuracy peak and whether it then meta-overfits (the split-half rule of the
    module docstring)."""
    index: int        # position of the peak in the curve, chosen on the even tasks
    epoch: int        # the epoch that position is
    value: float      # accuracy at the peak, on the odd tasks
    drop: Interval    # odd tasks: accuracy at the peak - mean of the last TAIL epochs, paired
    overfits: bool


def meta_overfitting(per_task, epochs: Optional[Sequence[int]] = None) -> Fall:
    """The split-half rule on one seed's per-task values [epochs, tasks] (higher = better;
    `epochs` default 1, 2, ...). Tasks with a non-finite value at any epoch are left out."""
    values = np.asarray(per_task, dtype=np.float64)
    values = values[:, np.all(np.isfinite(values), axis=0)]
    choose, measure = values[:, 0::2], values[:, 1::2]
    i = int(np.argmax(choose.mean(axis=1))) if choose.size else 0
    drop = interval(measure[i] - measure[-TAIL:].mean(axis=0)) if measure.size else \
        interval([])
    after = len(values) - 1 - i >= TAIL
    epoch = int(epochs[i]) if epochs is not None else i + 1
    value = float(measure[i].mean()) if measure.size else math.nan
    return Fall(i, epoch, value, drop, bool(after and drop.low > 0))


def setting_overfits(falls: Sequence[Fall]) -> bool:
    """Whether a setting meta-overfits: at least OVERFITTING_SEEDS of its seeds do."""
    return bool(falls) and sum(f.overfits for f in falls) >= math.ceil(
        OVERFITTING_SEEDS * len(falls) - 1e-9)


@dataclasses.dataclass
class Tracking:
    """The verdict on "x tracks y" over epochs: per-seed rank correlations in the rising phase (up
    to the peak of y) and the falling phase (from it on), each phase's verdict, and the claim's."""
    rise: Interval
    fall: Interval
    rise_verdict: str
    fall_verdict: str
    verdict: str


def tracking(xs: Sequence[Sequence[float]], ys: Sequence[Sequence[float]],
             falls: Sequence[Fall], threshold: float = CORRELATION) -> Tracking:
    """Whether metric curves xs follow target curves ys (one of each per seed) in both phases;
    `falls` are the targets' peaks (`meta_overfitting`). See the module docstring."""
    def phase(part):
        return correlation_interval([rank_correlation(part(np.asarray(x), f),
                                                      part(np.asarray(y), f))
                                     for x, y, f in zip(xs, ys, falls)])
    rise = phase(lambda c, f: c[:f.index + 1])
    fall = phase(lambda c, f: c[f.index:])
    rise_verdict = side(rise, threshold, True)
    fall_verdict = side(fall, threshold, True) if setting_overfits(falls) else UNTESTABLE
    return Tracking(rise, fall, rise_verdict, fall_verdict,
                    combine([rise_verdict, fall_verdict]))


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
