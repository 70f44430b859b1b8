"""What an epoch leaves behind: meta-test and landscape scalars, history.jsonl lines, a log line.

Training writes these after every epoch and `tfmeta analyze` after every saved checkpoint, with the
same functions, so the two agree number for number.
"""

import os
import resource
from pathlib import Path
from typing import Tuple

import numpy as np

from tfmeta import evaluation, landscape as landscape_lib, rundir, summaries
from tfmeta.record_keys import CI95, LANDSCAPE, META_TEST, META_TRAIN, prefixed


def meta_test_scalars(results: dict, steps: int) -> dict:
    """{metric, metric_ci95, diverged_tasks} after `steps` steps, from `evaluation.summarize`."""
    test = {}
    for metric, per_step in results.items():
        test[metric], test[metric + CI95] = per_step[steps].mean, per_step[steps].ci95
        test["diverged_tasks"] = per_step[steps].diverged
    return test


def evaluate(evaluator, writer, steps: int, iteration: int) -> Tuple[dict, dict]:
    """Runs a per-epoch evaluation; writes meta_test/ scalars. Returns them, prefixed, and each
    metric's per-task values after `steps` steps ({metric: [tasks] list}, rounded to 1e-6)."""
    per_task = evaluator()
    test = meta_test_scalars(evaluation.summarize(per_task, [steps]), steps)
    summaries.scalars(writer, "meta_test", test, iteration)
    return (prefixed(META_TEST, test),
            {k: np.round(np.asarray(v)[:, steps], 6).tolist() for k, v in per_task.items()})


def measure_landscape(landscape: landscape_lib.Landscape, writer, density_path: Path,
                      iteration: int, progress: bool) -> dict:
    """Measures the landscape at the current weights; writes TensorBoard scalars under landscape/
    and the eigenvalue density (when configured) to `density_path`. Returns the scalars, prefixed."""
    values = landscape.measure(progress)
    density = values.pop("density", None)
    if density is not None:
        rundir.append_jsonl(density_path, {"iteration": iteration, **density})
    summaries.scalars(writer, "landscape", values, iteration)
    return prefixed(LANDSCAPE, values)


def resident_mb() -> float:
    """This process's resident memory now, in MiB (peak resident memory where /proc is absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def epoch_line(record: dict, total: int) -> str:
    """The one-line summary of an epoch for the console."""
    parts = [f"epoch {record['epoch']} (it {record['iteration']}/{total})"]
    for key in (META_TRAIN + "loss", META_TRAIN + "accuracy", META_TEST + "loss",
                META_TEST + "accuracy", META_TEST + "mse"):
        if key in record:
            ci = record.get(key + CI95)
            value = f"{record[key]:.4f}" + (f" ± {ci:.4f}" if ci is not None else "")
            parts.append(f"{key} {value}")
    for key in (LANDSCAPE + "flatness", LANDSCAPE + "trajectory_coherence"):
        if key in record:
            parts.append(f"{key.split('/')[1]} {record[key]:.4g}")
    if META_TRAIN + "seconds_per_iteration" in record:  # none at epoch 0, before training
        parts.append(f"{record[META_TRAIN + 'seconds_per_iteration'] * 1e3:.0f} ms/it")
    return "  ".join(parts)
