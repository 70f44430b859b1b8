"""The power of the verdict rules (`tfmeta.verdicts`) at a measured noise level, by simulation.

A simulated setting is `seeds` runs, each evaluated at epochs 0..`epochs` on the same `tasks`
meta-test tasks, as training evaluates. Task i's accuracy at epoch e is

    a(e) + u_i + eps_ie,    u_i ~ N(0, task_sd^2),  eps_ie ~ N(0, epoch_sd^2)

u_i is the task's difficulty, the same at every epoch; eps_ie is what changes from epoch to epoch.
The true curve a(e) rises by `rise` up to `peak_epoch` and then falls linearly by `fall` to the
last epoch (0: a plateau). `noise_of` measures task_sd and epoch_sd from a real run's per-task
values, so that the rules are judged at the experiment's own noise.

The metrics whose verdicts are counted, each with independent noise of `metric_noise` times its
own range across epochs:
    tracker      the true curve a(e)
    noise        nothing but noise
    linear       the epoch
    saturating   1 - exp(-e / (epochs / 6)), which rises and flattens
"""

import dataclasses
from typing import Dict, List

import numpy as np

from tfmeta import verdicts as V

METRICS = ("tracker", "noise", "linear", "saturating")


@dataclasses.dataclass(frozen=True)
class Noise:
    """Per-task noise of one epoch's evaluation: `tasks` tasks, the spread of their difficulty
    (`task_sd`, shared by every epoch) and of a task's value from epoch to epoch (`epoch_sd`)."""
    tasks: int = 300
    task_sd: float = 0.12
    epoch_sd: float = 0.057

    @property
    def standard_error(self) -> float:
        """The standard error of one epoch's mean accuracy."""
        return float(np.hypot(self.task_sd, self.epoch_sd) / np.sqrt(self.tasks))


@dataclasses.dataclass(frozen=True)
class Design:
    """The experiment's shape: seeds per setting, epochs after epoch 0, the true curve."""
    seeds: int = 5
    epochs: int = 30
    peak_epoch: int = 15
    rise: float = 0.2
    fall: float = 0.015
    metric_noise: float = 0.02


def noise_of(per_task) -> Noise:
    """task_sd and epoch_sd of a run's per-task values [epochs, tasks], by the two-way
    decomposition: a task's departures from its own mean after each epoch's mean is removed give
    epoch_sd; the spread of the tasks' means, less what epoch_sd puts in it, gives task_sd."""
    x = np.asarray(per_task, dtype=np.float64)
    x = x[:, np.all(np.isfinite(x), axis=0)]
    epochs, tasks = x.shape
    residual = x - x.mean(axis=0) - x.mean(axis=1, keepdims=True) + x.mean()
    epoch_var = float((residual ** 2).sum() / ((epochs - 1) * (tasks - 1)))
    task_var = max(float(x.mean(axis=0).var(ddof=1)) - epoch_var / epochs, 0.0)
    return Noise(tasks, float(np.sqrt(task_var)), float(np.sqrt(epoch_var)))


def true_curve(design: Design, fall: float) -> np.ndarray:
    """a(e) for e = 0..epochs."""
    e = np.arange(design.epochs + 1, dtype=np.float64)
    up = 0.5 + design.rise * np.minimum(e, design.peak_epoch) / design.peak_epoch
    down = fall * np.clip((e - design.peak_epoch) / (design.epochs - design.peak_epoch), 0, 1)
    return up - down


def metric_curves(rng: np.random.Generator, design: Design, truth: np.ndarray) -> Dict[str, np.ndarray]:
    """Each of METRICS for one seed, with its noise."""
    e = np.arange(design.epochs + 1, dtype=np.float64)
    clean = {"tracker": truth, "noise": np.zeros_like(e), "linear": e,
             "saturating": 1 - np.exp(-e / (design.epochs / 6))}
    out = {}
    for name, curve in clean.items():
        scale = float(np.ptp(curve)) or 1.0
        out[name] = curve + rng.normal(0, design.metric_noise * scale, e.size)
    return out


def setting(rng: np.random.Generator, noise: Noise, design: Design, fall: float) -> List[dict]:
    """One simulated setting: per seed, `per_task` [epochs + 1, tasks], its mean curve
    `accuracy`, and the METRICS."""
    truth = true_curve(design, fall)
    seeds = []
    for _ in range(design.seeds):
        difficulty = rng.normal(0, noise.task_sd, noise.tasks)
        per_task = (truth[:, None] + difficulty[None, :]
                    + rng.normal(0, noise.epoch_sd, (truth.size, noise.tasks)))
        seeds.append({"per_task": per_task, "accuracy": per_task.mean(axis=1),
                      **metric_curves(rng, design, truth)})
    return seeds


def power(noise: Noise, design: Design, trials: int = 200, seed: int = 0) -> Dict[str, float]:
    """How often each rule decides what, over `trials` simulated settings:
    `overfits`: a setting with the design's fall judged to meta-overfit; `plateau_overfits`: the
    same with no fall; and for each metric of METRICS, where the setting falls,
    `<metric>_reproduced` and `<metric>_contradicted` of "the metric tracks accuracy"."""
    rng = np.random.default_rng(seed)
    counts = {"overfits": 0, "plateau_overfits": 0,
              **{f"{m}_{v}": 0 for m in METRICS for v in ("reproduced", "contradicted")}}
    for _ in range(trials):
        plateau = setting(rng, noise, design, 0.0)
        counts["plateau_overfits"] += V.setting_overfits(
            [V.meta_overfitting(s["per_task"]) for s in plateau])
        falling = setting(rng, noise, design, design.fall)
        falls = [V.meta_overfitting(s["per_task"]) for s in falling]
        counts["overfits"] += V.setting_overfits(falls)
        for metric in METRICS:
            verdict = V.tracking([s[metric] for s in falling], [s["accuracy"] for s in falling],
                                 falls).verdict
            counts[f"{metric}_reproduced"] += verdict == V.REPRODUCED
            counts[f"{metric}_contradicted"] += verdict == V.CONTRADICTED
    return {k: v / trials for k, v in counts.items()}
