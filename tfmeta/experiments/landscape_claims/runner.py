"""Training the experiment's runs and reading their curves.

Each run is an ordinary tfmeta run directory under OUT/runs, trained in a worker process (`jobs`
at a time, one thread each, so that thread settings apply before TensorFlow starts). A finished run is reused and an
unfinished one resumed from its last checkpoint; a directory made with other settings is refused.
"""

import json
import math
import multiprocessing
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Sequence

import numpy as np

from tfmeta import config as config_lib, rundir, workers
from tfmeta.errors import ConfigError, TfmetaError
from tfmeta.experiments.landscape_claims.plan import RunSpec
from tfmeta.files import atomic_open
from tfmeta.landscape import METRICS, VARIANTS
from tfmeta.record_keys import ACCURACY, CI95, LANDSCAPE, MSE
from tfmeta.report import column, load_records

MEASURED = METRICS + VARIANTS
RUNS_PER_WORKER = 8
PEAK = "peak_landscape.json"


def epoch_file(epoch: int) -> str:
    """The file that keeps a run's landscape measured at the checkpoint of `epoch`."""
    return f"landscape-epoch-{epoch}.json"


def run_config(spec: RunSpec, run_dir: Path):
    """The tfmeta Config of `spec`, with absolute paths, written to run in `run_dir`."""
    from tfmeta.training import with_absolute_paths
    return with_absolute_paths(config_lib.load(spec.preset, [*spec.overrides,
                                                             f"run_dir={run_dir}"]))


def finished(run_dir: Path, epochs: int) -> bool:
    """Whether `run_dir` holds a record of its last epoch."""
    try:
        return any(int(r.get("epoch", 0)) >= epochs for r in load_records(run_dir))
    except TfmetaError:  # no records yet
        return False


def check_same(spec: RunSpec, run_dir: Path) -> None:
    """A run directory made with other settings must not be continued as if it were this run."""
    if not rundir.is_run(run_dir):
        return
    want = config_lib.flat_dict(run_config(spec, run_dir))
    have = config_lib.flat_dict(rundir.read_config(run_dir))
    for key, value in want.items():
        if have.get(key) != value:
            raise ConfigError(f"{rundir.config_path(run_dir)} was made with other settings ({key}: {have.get(key)!r} "
                              f"there, {value!r} now); choose another --out or delete {run_dir}")


def train_one(spec: RunSpec, run_dir: str) -> str:
    """Trains (or resumes) one run in a worker process, then measures its landscape at its
    accuracy peak if `spec.at_peak`. Its epoch lines go to RUN_DIR.log."""
    from tfmeta import training
    run_dir = Path(run_dir)
    config = run_config(spec, run_dir)
    resume = rundir.has_checkpoint(run_dir)
    with open(str(run_dir) + ".log", "a") as log:
        if not finished(run_dir, spec.epochs):
            training.train(config, run_dir, resume=resume, progress=False,
                           log=lambda line: print(line, file=log, flush=True))
    wanted = {run_dir / epoch_file(epoch): epoch for epoch in spec.at_epochs}
    if spec.at_peak and not (run_dir / PEAK).is_file():
        wanted[run_dir / PEAK] = peak_epoch(run_dir)
    measure_at(run_dir, wanted)
    return spec.name


def measured(spec: RunSpec, run_dir: Path) -> bool:
    """Whether a trained run's landscape measurements (`at_peak`, `at_epochs`) are on disk."""
    files = (([PEAK] if spec.at_peak else [])
             + [epoch_file(e) for e in spec.at_epochs])
    return all((run_dir / name).is_file() for name in files)


def train(specs: Sequence[RunSpec], runs_dir: Path, jobs: int, log: Callable[[str], None],
          after_each: Callable[[], None] = lambda: None) -> None:
    """Trains every run of `specs` that has not finished, `jobs` at a time; `after_each` runs
    after each one (to rewrite the tables)."""
    for spec in specs:
        check_same(spec, runs_dir / spec.name)
    todo = [s for s in specs if not finished(runs_dir / s.name, s.epochs) or not measured(
        s, runs_dir / s.name)]
    log(f"{len(specs) - len(todo)} of {len(specs)} runs already finished in {runs_dir}; "
        f"training {len(todo)}, {jobs} at a time (each run's epochs: RUN.log)")
    if not todo:
        return
    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    # A worker trains several runs: every run has the same thread settings, and starting
    # TensorFlow anew costs seconds; a fresh worker every RUNS_PER_WORKER bounds its memory.
    with context.Pool(jobs, initializer=workers.start, maxtasksperchild=RUNS_PER_WORKER) as pool:
        pending = [pool.apply_async(train_one, (s, str(runs_dir / s.name))) for s in todo]
        for i, result in enumerate(_as_completed(pending), 1):
            log(f"[{i}/{len(todo)}] {result.get()} finished "
                f"({time.perf_counter() - began:.0f} s)")
            after_each()


def _as_completed(results: list):
    """AsyncResults in the order they finish (re-raising a run's error in this process)."""
    waiting = list(results)
    while waiting:
        ready = [r for r in waiting if r.ready()]
        for r in ready:
            waiting.remove(r)
            yield r
        if not ready:
            time.sleep(0.5)


def curves(run_dir: Path) -> Dict[str, np.ndarray]:
    """A run's per-epoch curves: `epoch` (0 first when measured before training),
    `generalization` (accuracy, or -MSE for regression), its 95% half-width, and the landscape
    metrics and variants."""
    records = load_records(run_dir)
    out = {m: column(records, LANDSCAPE + m) for m in MEASURED}
    accuracy = column(records, ACCURACY)
    if np.isfinite(accuracy).any():
        out["generalization"] = accuracy
        out["generalization_ci95"] = column(records, ACCURACY + CI95)
    else:
        out["generalization"] = -column(records, MSE)
        out["generalization_ci95"] = column(records, MSE + CI95)
    out["epoch"] = column(records, "epoch")
    out["per_task"] = per_task(run_dir, out["epoch"])
    return out


def per_task(run_dir: Path, epochs: np.ndarray) -> np.ndarray:
    """The per-task generalization [epochs, tasks] at each of `epochs` (accuracy, or -MSE), NaN
    where an epoch has no per-task record."""
    rows = {row["epoch"]: row for row in rundir.read_per_task(run_dir)}
    key = "accuracy" if any("accuracy" in row for row in rows.values()) else "mse"
    sign = 1.0 if key == "accuracy" else -1.0
    tasks = max((len(row[key]) for row in rows.values()), default=0)
    out = np.full((len(epochs), tasks), np.nan)
    for i, epoch in enumerate(epochs):
        if np.isfinite(epoch) and int(epoch) in rows:
            out[i] = sign * np.asarray(rows[int(epoch)][key], dtype=np.float64)
    return out


def final(run_dir: Path) -> Dict[str, float]:
    """The last measured value of each curve."""
    values = {}
    for name, curve in curves(run_dir).items():
        finite = curve[np.isfinite(curve)]
        values[name] = float(finite[-1]) if finite.size else math.nan
    return values


def peak_epoch(run_dir: Path) -> int:
    """The trained epoch of the run's accuracy peak (epoch 0 has no checkpoint)."""
    c = curves(run_dir)
    trained = c["epoch"] >= 1
    return int(c["epoch"][int(np.nanargmax(np.where(trained, c["generalization"], -np.inf)))])


def at_peak(run_dir: Path) -> Dict[str, float]:
    """Every landscape metric at the checkpoint of the run's accuracy peak, with the peak's
    epoch and accuracy; measured once and kept in RUN/peak_landscape.json."""
    path = run_dir / PEAK
    if path.is_file():   # read on every rewrite of claims.md: no need for the curves
        return json.loads(path.read_text())
    return measure_at(run_dir, {path: peak_epoch(run_dir)})[path]


def at_epoch(run_dir: Path, epoch: int) -> Dict[str, float]:
    """Every landscape metric at the checkpoint of `epoch`, with that epoch's accuracy; measured
    once and kept in RUN/landscape-epoch-N.json."""
    path = run_dir / epoch_file(epoch)
    return measure_at(run_dir, {path: epoch})[path]


def measure_at(run_dir: Path, epochs: Dict[Path, int]) -> Dict[Path, Dict[str, float]]:
    """{path: every landscape metric at the checkpoint of epoch `epochs[path]`, with that epoch's
    accuracy}, each measured once and kept in its JSON `path` (an epoch asked for twice, the peak
    among the fixed ones, is measured once). One Landscape measures every checkpoint: restoring
    assigns the same variables, so its functions are traced once (a fresh one per checkpoint
    would trace for seconds each time)."""
    from tfmeta.run import Run
    out = {path: json.loads(path.read_text()) for path in epochs if path.is_file()}
    todo = {path: epoch for path, epoch in epochs.items() if path not in out}
    if not todo:
        return out
    c = curves(run_dir)
    run, landscape, measured = Run.open(run_dir), None, {}
    for path, epoch in todo.items():
        if epoch not in measured:
            run.restore(str(rundir.checkpoints(run_dir) / f"ckpt-{epoch}"))
            if landscape is None:
                landscape = run.landscape()
            measured[epoch] = landscape.measure(progress=False)
        out[path] = {"epoch": epoch,
                     "generalization": float(c["generalization"][list(c["epoch"]).index(epoch)]),
                     **{m: float(measured[epoch][m]) for m in MEASURED}}
        with atomic_open(path) as f:
            json.dump(out[path], f, indent=1)
    return out


def metric_noise(run_dir: Path, draws: int) -> dict:
    """Each landscape metric at the run's last checkpoint, measured on `draws` re-drawn meta-test
    task sets (landscape.seed = 101, 102, ...).

    Returns:
        {metric: {"mean", "half", "values"}}: `half` is the 95% prediction half-width of one
        measurement, t * sd * sqrt(1 + 1/draws), i.e. how far one epoch's value can move by the
        draw of its tasks alone.
    """
    from tfmeta import stats
    from tfmeta.run import Run
    values: Dict[str, list] = {m: [] for m in MEASURED}
    for draw in range(draws):
        run = Run.open(run_dir, [f"landscape.seed={101 + draw}"])
        run.restore()
        measured = run.landscape().measure(progress=False)
        for m in MEASURED:
            values[m].append(measured[m])
    half = lambda v: stats.t975(len(v) - 1) * float(np.std(v, ddof=1)) * math.sqrt(1 + 1 / len(v))  # noqa: E731
    return {m: {"mean": float(np.mean(v)), "half": half(v), "values": v}
            for m, v in values.items()}


def parameter_count(run_dir: Path) -> int:
    """Trainable parameters of the run's model (the dimension D of the trajectory directions)."""
    from tfmeta.run import Run
    return int(sum(np.prod(p.shape) for p in Run.open(run_dir).model.trainable_variables))


def cached(path: Path, compute: Callable[[], dict]) -> dict:
    """compute()'s result, kept in `path` (JSON) so that a continued experiment reuses it."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    with atomic_open(path) as f:
        json.dump(value, f, indent=1, default=float)
    return value


def done(specs: Iterable[RunSpec], runs_dir: Path) -> Dict[str, Path]:
    """{name: run directory} of the finished runs among `specs`."""
    return {s.name: runs_dir / s.name for s in specs if finished(runs_dir / s.name, s.epochs)}
