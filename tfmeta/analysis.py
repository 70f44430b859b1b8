"""`tfmeta analyze`: the per-epoch measurements, recomputed afterwards for every saved checkpoint.

For each checkpoint of a run (keep them all with `train.keep_checkpoints: 0`), in training order, it
evaluates meta-test accuracy (or MSE) and the landscape metrics exactly as training does after an
epoch, and writes them to TensorBoard under RUN/logs/analyze and to RUN/landscape.csv, rewritten
atomically after each checkpoint so that a killed analysis keeps what it finished.
"""

from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from tfmeta import landscape as landscape_lib, records, rundir, summaries
from tfmeta.errors import ConfigError
from tfmeta.run import Run


def analyze(run_dir: Path, overrides: Sequence[str] = (), progress: bool = True,
            log: Callable[[str], None] = print, other_data: bool = False) -> Path:
    """Measures every complete checkpoint of `run_dir`, holding its lock; returns the path of
    the CSV it wrote.

    Args:
        overrides: "key=value" changes to the run's config, e.g. "landscape.trace_probes=10".
        other_data: measure on data other than the run's (`rundir.check_data`).
    """
    run_dir = Path(run_dir)
    with rundir.lock(run_dir, "analyzed"):
        return _analyze(run_dir, overrides, progress, log, other_data)


def _analyze(run_dir: Path, overrides: Sequence[str], progress: bool,
             log: Callable[[str], None], other_data: bool) -> Path:
    run = Run.open(run_dir, overrides)
    run.check_data(other_data, log)
    config = run.config
    checkpoints = rundir.complete_checkpoints(run_dir)
    if not checkpoints:
        raise ConfigError(f"{run_dir}: no checkpoints in {rundir.checkpoints(run_dir)}")
    steps = config.adapt.eval_steps
    evaluate = run.evaluator(steps, config.train.eval_tasks)
    landscape = run.landscape()
    writer = summaries.writer(rundir.logs(run_dir, analyze=True))
    summaries.landscape_layout(writer, landscape_lib.METRICS, run.target)
    rows = []
    for path in tqdm(checkpoints, desc="checkpoints", disable=not progress):
        run.restore(path, log)
        iteration = int(run.iteration.numpy())
        scalars, _ = records.evaluate(evaluate, writer, steps, iteration)
        row = {"checkpoint": Path(path).name, "epoch": iteration // config.train.iterations,
               "iteration": iteration, **scalars}
        row.update(records.measure_landscape(landscape, writer, rundir.density_path(run_dir, analyze=True),
                                             iteration, progress))
        rows.append(row)
        out = rundir.write_landscape(run_dir, rows)
        log(f"{row['checkpoint']}: " + "  ".join(
            f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
    return out
