"""The verdicts: pure functions from curves to claims, by the rules of `tfmeta.verdicts`.

Curves are the per-epoch arrays of `runner.curves` (index 0 is epoch 0 when it was measured), one
dict per seed. Nothing here reads a file or trains: the tests call these functions on synthetic
curves whose answer is known.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from tfmeta import power, stats, verdicts as V
from tfmeta.experiments.landscape_claims.plan import ClaimsConfig

CLAIMS = {
    "C1": "Flatness: MAML first finds sharper adapted solutions up to a peak, then flatter ones.",
    "C2": "Past meta-overfitting, flatness keeps improving: it does not track generalization.",
    "C3": "Meta-test support loss falls monotonically; flatness follows it more than accuracy.",
    "C4": "Trajectory coherence tracks accuracy, also past the peak; ~0 for finetune.",
    "C5": "Gradient coherence (T = 1) tracks accuracy, and -MSE on sine; very low for finetune.",
    "C6": "Representation coherence reflects meta-overfitting; across training sets it tracks "
          "the accuracy reached.",
    "C7": "Trajectory norm grows during MAML training, not during finetune, and keeps growing "
          "past the peak while accuracy falls: it does not reflect generalization.",
    "C8": "Sine, across k = 2..15: final gradient coherence correlates with final -MSE.",
    "R": "Angle-regularized MAML (Algorithm 1) raises held-out 20-way 1-shot accuracy.",
}


@dataclasses.dataclass
class Part:
    """One tested statement: its per-seed statistics, their intervals, and its verdict.
    `counts` False: reported beside the claim, not part of its verdict."""
    test: str
    spearman: Optional[stats.Interval] = None
    value: Optional[stats.Interval] = None
    tracking: Optional[V.Tracking] = None
    verdict: str = V.INCONCLUSIVE
    counts: bool = True
    lean: str = ""    # for an inconclusive verdict, which way the interval leans


def _judged(test: str, iv: stats.Interval, threshold: float, above: bool, key: str = "value",
            counts: bool = True) -> Part:
    """A statement whose per-seed interval `iv` must lie above (or below) `threshold`."""
    verdict = V.side(iv, threshold, above)
    return Part(test, verdict=verdict, counts=counts, **{key: iv},
                lean=V.lean(iv, threshold, above) if verdict == V.INCONCLUSIVE else "")


def falls_of(runs: Sequence[dict]) -> List[V.Fall]:
    """Each seed's peak and meta-overfitting, from its per-task values (`runner.curves`)."""
    return [V.meta_overfitting(c["per_task"], c["epoch"]) for c in runs]


def power_at(runs: Sequence[dict], trials: int = 200) -> Optional[dict]:
    """The rules' power (`power.power`) at a setting's own noise and shape: task_sd and epoch_sd
    measured on each seed's per-task values (the mean over seeds), its seeds and epochs, and the
    median peak epoch, rise and fall of its seeds. None without per-task records."""
    tables = [np.asarray(c["per_task"], dtype=np.float64) for c in runs]
    tables = [t[:, np.all(np.isfinite(t), axis=0)] for t in tables]
    if not tables or min(t.shape[1] for t in tables) < 4:
        return None
    measured = [power.noise_of(t) for t in tables]
    noise = power.Noise(int(np.median([m.tasks for m in measured])),
                        float(np.mean([m.task_sd for m in measured])),
                        float(np.mean([m.epoch_sd for m in measured])))
    falls = falls_of(runs)
    epochs = tables[0].shape[0] - 1
    peak = int(np.clip(np.median([f.index for f in falls]), 1, max(epochs - V.TAIL, 1)))
    rise = float(np.median([f.value - np.mean(t[0, 1::2]) for f, t in zip(falls, tables)]))
    drop = float(np.median([f.drop.mean for f in falls]))
    design = power.Design(seeds=len(runs), epochs=epochs, peak_epoch=peak,
                          rise=max(rise, 1e-3), fall=max(drop, 0.0))
    return {"noise": noise, "design": design, "trials": trials,
            "rates": power.power(noise, design, trials)}


def _trend(test: str, ys: Sequence[np.ndarray], threshold: float, above: bool,
           starts: Optional[Sequence[int]] = None, counts: bool = True) -> Part:
    """Spearman's rho of each seed's curve with the epoch from position `starts` on."""
    starts = starts or [0] * len(ys)
    rho = stats.correlation_interval([V.epoch_trend(np.asarray(y)[s:]) for y, s in zip(ys, starts)])
    return _judged(test, rho, threshold, above, "spearman", counts)


def _growth(test: str, ys: Sequence[np.ndarray], grows: bool) -> Part:
    """Each seed's relative growth, the mean of the last TAIL epochs over the first finite value,
    minus 1: above V.RISE (grows) or below it (does not)."""
    def growth(y):
        y = np.asarray(y, dtype=np.float64)
        finite = y[np.isfinite(y)]
        return float(np.mean(finite[-V.TAIL:]) / finite[0] - 1) if finite.size > V.TAIL else \
            math.nan
    iv = stats.interval([growth(y) for y in ys])
    return _judged(test, iv, V.RISE, grows)


def _tracks(test: str, xs, ys, falls: Sequence[V.Fall], counts: bool = True) -> Part:
    result = V.tracking(xs, ys, falls, V.CORRELATION)
    leans = [f"{name} {V.lean(iv, V.CORRELATION, True)}"
             for name, iv, verdict in (("rising phase", result.rise, result.rise_verdict),
                                       ("falling phase", result.fall, result.fall_verdict))
             if verdict == V.INCONCLUSIVE and np.isfinite(iv.mean)]
    return Part(test, tracking=result, verdict=result.verdict, counts=counts,
                lean="; ".join(leans) if result.verdict == V.INCONCLUSIVE else "")


def _ratio(test: str, baseline, maml, bound: float) -> Part:
    """mean |baseline metric| / mean |MAML metric| over epochs, per seed pair; below `bound`."""
    ratios = [np.nanmean(np.abs(b)) / np.nanmean(np.abs(m)) for b, m in zip(baseline, maml)]
    iv = stats.interval(ratios)
    return _judged(test, iv, bound, False)


def _across(test: str, per_seed: Sequence[Dict[str, np.ndarray]], metric: str,
            target: str = "generalization", counts: bool = True) -> Part:
    """Per seed, across conditions (k or pools): rho(metric, target); above 0.3."""
    rho = stats.correlation_interval([stats.spearman(s[metric], s[target]) for s in per_seed])
    return _judged(test, rho, V.CORRELATION, True, "spearman", counts)


def _within_k(test: str, per_seed: Sequence[Dict[str, np.ndarray]], metric: str) -> Part:
    """Per k, across seeds: rho(metric, -MSE), where k cannot decide it; the interval over the
    k's of these correlations; above 0.3."""
    values = np.array([s[metric] for s in per_seed], dtype=np.float64)        # [seeds, k]
    target = np.array([s["generalization"] for s in per_seed], dtype=np.float64)
    rho = stats.correlation_interval([stats.spearman(values[:, i], target[:, i])
                                      for i in range(values.shape[1])])
    return _judged(test, rho, V.CORRELATION, True, "spearman")


def _differences(x, y) -> float:
    return stats.spearman(np.diff(x), np.diff(y)) if len(x) > V.TAIL + 1 else math.nan


def pilot_table(runs: Dict[str, Dict[str, dict]], config: ClaimsConfig) -> List[dict]:
    """One row per pilot run ({algorithm: {pool name: curves}}): where its accuracy peaks, how far
    it falls, and which of the regime's three conditions it meets."""
    rows = []
    for algorithm, by_pool in runs.items():
        for name, c in by_pool.items():
            f = V.meta_overfitting(c["per_task"], c["epoch"])
            epochs = int(np.nanmax(c["epoch"]))
            rises = f.epoch >= config.rise_epochs
            middle = epochs / 3 <= f.epoch <= 2 * epochs / 3
            rows.append({"algorithm": algorithm, "pool": name, "peak_epoch": f.epoch,
                         "peak": f.value, "drop": f.drop.mean, "drop_low": f.drop.low,
                         "rises": rises, "middle_third": middle, "falls": f.overfits,
                         "regime": rises and middle and f.overfits})
    return rows


def select_pool(rows: Sequence[dict], algorithm: str, pools: Sequence[Sequence[int]]) -> dict:
    """The pool for the main settings: the largest (characters x drawings) whose run meets all
    three conditions; else the one that meets most of them, the larger fall first."""
    from tfmeta.experiments.landscape_claims.plan import pool_name
    sizes = {pool_name(p): p for p in pools}
    mine = [r for r in rows if r["algorithm"] == algorithm]
    met = lambda r: r["rises"] + r["middle_third"] + r["falls"]  # noqa: E731
    best = max(mine, key=lambda r: (r["regime"], met(r) if not r["regime"] else 0,
                                    np.prod(sizes[r["pool"]]) if r["regime"] else r["drop"]))
    return {"pool": sizes[best["pool"]], "name": best["pool"], "regime": best["regime"]}


def judge(main: Dict[str, list], pools: Optional[List[Dict[str, np.ndarray]]],
          sweep: Optional[List[Dict[str, np.ndarray]]],
          regularizer: Optional[Dict[str, list]]) -> List[dict]:
    """Verdicts for the claims.

    Args:
        main: {setting: [per-seed curves]} for "maml-t5", "maml-t1", "finetune", "sine" (any may
            be missing: its claims are then pending).
        pools: per seed, {"pool", "generalization", metric: [values at each pool's accuracy
            peak]}, or None.
        sweep: per seed, {"k", "generalization", metric: [finals per k]} of the sine sweep.
        regularizer: {"maml": [held-out accuracy after each epoch, per seed], "maml-reg": [...]},
            paired by seed; the verdict reads the last epoch.

    Returns:
        One dict per claim: id, claim, parts (list of Part), verdict, and `peaks` where the claim
        rests on MAML's accuracy peaks.
    """
    rows = []
    t5, t1, ft, sine = (main.get(k) for k in ("maml-t5", "maml-t1", "finetune", "sine"))

    def row(claim: str, parts: list, needs: Sequence, extra: Optional[dict] = None) -> None:
        missing = [name for name, data in needs if not data]
        if missing:
            rows.append({"id": claim, "claim": CLAIMS[claim], "parts": [],
                         "verdict": f"pending ({', '.join(missing)} not finished)"})
            return
        verdict = V.combine([p.verdict for p in parts if p.counts])
        rows.append({"id": claim, "claim": CLAIMS[claim], "parts": parts, "verdict": verdict,
                     **(extra or {})})

    def untestable(test: str) -> Part:
        return Part(test, verdict=V.UNTESTABLE)

    extra = {}
    if t5:
        acc = [c["generalization"] for c in t5]
        peaks = falls_of(t5)
        overfit = V.setting_overfits(peaks)
        post = [p.index for p in peaks]
        flat = [c["flatness"] for c in t5]
        sharpest = [int(np.nanargmax(f)) for f in flat]
        extra = {"peaks": f"accuracy peak: epoch {', '.join(str(p.epoch) for p in peaks)}; "
                          f"sharpest: {', '.join(str(int(c['epoch'][i])) for c, i in zip(t5, sharpest))}",
                 "overfitting": peaks}
        rise = stats.interval([f[i] / f[0] - 1 for f, i in zip(flat, sharpest)])
        losses = [c["support_loss"] for c in t5]
        follows = stats.interval([_differences(f, s) - abs(_differences(f, a))
                              for f, s, a in zip(flat, losses, acc)])
        c1 = [_judged("relative rise of flatness from epoch 0 to its maximum > 10%", rise,
                      V.RISE, True),
              _trend("flatness vs epoch after its maximum: rho < -0.3", flat, -V.CORRELATION,
                     False, sharpest)]
        c2 = [_trend("flatness vs epoch after the accuracy peak: rho < -0.3", flat,
                     -V.CORRELATION, False, post) if overfit else
              untestable("flatness vs epoch after the accuracy peak")]
        c3 = [_trend("support loss vs epoch: rho < -0.8 (monotone fall)", losses, -V.MONOTONE,
                     False),
              _judged("first differences: rho(flatness, support loss) - |rho(flatness, "
                      "accuracy)| > 0", follows, 0.0, True)]
    row("C1", c1 if t5 else [], [("maml-t5", t5)], extra)
    row("C2", c2 if t5 else [], [("maml-t5", t5)], extra)
    row("C3", c3 if t5 else [], [("maml-t5", t5)], extra)

    if t5 and ft:
        c4 = [_tracks("trajectory coherence tracks accuracy", [c["trajectory_coherence"]
                                                                for c in t5], acc, peaks),
              _ratio("finetune / MAML mean |trajectory coherence| < 0.25",
                     [c["trajectory_coherence"] for c in ft],
                     [c["trajectory_coherence"] for c in t5], V.LOW)]
    row("C4", c4 if t5 and ft else [], [("maml-t5", t5), ("finetune", ft)], extra)

    if t1 and sine and ft:
        t1_acc, t1_peaks = [c["generalization"] for c in t1], falls_of(t1)
        c5 = [_tracks("T = 1: gradient coherence tracks accuracy (pairs i != j)",
                      [c["gradient_coherence"] for c in t1], t1_acc, t1_peaks),
              _tracks("the same with the self-pairs i = j (reported, not judged)",
                      [c["gradient_coherence_self"] for c in t1], t1_acc, t1_peaks,
                      counts=False),
              _tracks("sine: gradient coherence tracks -MSE", [c["gradient_coherence"]
                                                               for c in sine],
                      [c["generalization"] for c in sine], falls_of(sine)),
              _ratio("finetune / MAML (T = 1) mean |gradient coherence| < 0.25",
                     [c["gradient_coherence"] for c in ft],
                     [c["gradient_coherence"] for c in t1], V.LOW)]
    row("C5", c5 if t1 and sine and ft else [], [("maml-t1", t1), ("sine", sine),
                                                   ("finetune", ft)])

    if t5 and pools:
        c6 = [_tracks("representation coherence before the last norm's gamma and beta tracks "
                      "accuracy", [c["representation_coherence_normalized"] for c in t5], acc,
                      peaks),
              _tracks("the paper's representation coherence, whose mean gamma and beta set "
                      "(reported, not judged)", [c["representation_coherence"] for c in t5], acc,
                      peaks, counts=False),
              _across("across pools: rho(representation coherence before gamma and beta at the "
                      "accuracy peak, peak accuracy) > 0.3", pools,
                      "representation_coherence_normalized")]
    row("C6", c6 if t5 and pools else [], [("maml-t5", t5), ("the pools", pools)], extra)

    if t5 and ft:
        norms = [c["trajectory_norm"] for c in t5]
        ft_norms = [c["trajectory_norm"] for c in ft]
        c7 = [_growth("MAML trajectory norm, last 3 epochs / first epoch - 1 > 10%", norms, True),
              _growth("finetune trajectory norm, last 3 epochs / first epoch - 1 < 10%",
                      ft_norms, False),
              _trend("MAML trajectory norm vs epoch: rho > 0.3 (reported, not judged)", norms,
                     V.CORRELATION, True, counts=False),
              _trend("finetune trajectory norm vs epoch: rho < 0.3 (reported, not judged)",
                     ft_norms, V.CORRELATION, False, counts=False),
              _trend("past the accuracy peak, MAML trajectory norm vs epoch: rho > 0.3", norms,
                     V.CORRELATION, True, post) if overfit else
              untestable("past the accuracy peak, MAML trajectory norm vs epoch")]
    row("C7", c7 if t5 and ft else [], [("maml-t5", t5), ("finetune", ft)], extra)

    c8 = [_within_k("within each k, across seeds: rho(final gradient coherence, final -MSE) "
                    "> 0.3", sweep, "gradient_coherence"),
          _across("across k: rho(final gradient coherence, final -MSE) > 0.3 (reported, not "
                  "judged: any metric monotone in k passes it)", sweep, "gradient_coherence",
                  counts=False)] if sweep else []
    row("C8", c8, [("the sine k-sweep", sweep)])

    if regularizer:
        finals = {m: [float(np.asarray(c)[-1]) for c in curves]
                  for m, curves in regularizer.items()}
        gain = stats.interval(np.subtract(finals["maml-reg"], finals["maml"]) * 100)
        r = [_judged("maml-reg - MAML held-out accuracy, paired by seed (points) > 0", gain,
                     0.0, True)]
    row("R", r if regularizer else [], [("the regularizer runs", regularizer)])
    return rows


def across_pools_at_steps(pools: List[dict], metrics: Sequence[str]
                          ) -> Dict[int, Dict[str, stats.Interval]]:
    """The same at each of the fixed meta-steps every pool was measured at ({steps: {metric:
    interval}}): every pool at the same point of training, so that a metric that only grows with
    training cannot rank the pools by when they peak."""
    steps = sorted(pools[0].get("at_steps", {})) if pools else []
    return {n: across_pools([s["at_steps"][n] for s in pools], metrics) for n in steps}


def across_pools(pools: List[Dict[str, np.ndarray]], metrics: Sequence[str]) -> Dict[str, stats.Interval]:
    """For every metric, the per-seed Spearman rho across pools of its value at the accuracy
    peak with the peak accuracy, as an interval over seeds."""
    return {m: stats.correlation_interval([stats.spearman(s[m], s["generalization"]) for s in pools])
            for m in metrics}
