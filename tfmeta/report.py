"""Landscape metrics against meta-test performance: twin-axis figures and correlation tables.

Guiroy, Verma and Pal (2019) plot each objective-landscape metric of the meta-test tasks against
meta-test accuracy across meta-training epochs (their Figures 2, 3, 5, 7 and 9) and read the
relation off the curves. `write_report` draws the same plots for one or several runs and
quantifies the relation with Pearson and Spearman correlations across epochs.

Per-epoch records come from `RUN/landscape.csv` (written by `tfmeta analyze`) when it has rows,
otherwise from `RUN/history.jsonl` (written by `tfmeta train`; a repeated iteration keeps its last
line). When both exist, the CSV's rows are used and any column a CSV row lacks (or leaves empty) is
filled from the history line of the same iteration, so a CSV of landscape metrics alone still gets
its run's meta-test accuracy.

Every `landscape/<name>` column is a metric, except the measurement's bookkeeping (`DIAGNOSTICS`:
HVP counts and timing, diverged-task counts); `landscape/<name>_ci95`, where present, is drawn as
the metric's 95% band rather than treated as a metric of its own. The target is `meta_test/accuracy`
when the run has it (classification), else `meta_test/mse` (regression, lower is better).
Empty or NaN cells are skipped pairwise.
"""

import csv
import io
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from tfmeta import rundir
from tfmeta.errors import TfmetaError
from tfmeta.files import atomic_open
from tfmeta.record_keys import ACCURACY, CI95, LANDSCAPE, MSE
from tfmeta.stats import finite_pairs, pearson, spearman

POOLED = "pooled"
# Human names of the metrics tfmeta measures, in the order figures and tables list them; any other
# landscape/<name> follows, alphabetically, named from its key.
METRIC_NAMES = {
    "flatness": "Flatness ‖H‖σ",
    "trajectory_coherence": "Trajectory coherence",
    "gradient_coherence": "Gradient coherence",
    "representation_coherence": "Representation coherence",
    "trajectory_norm": "Trajectory norm ‖θ̃ − θ‖",
    "support_loss": "Support loss",
    "hessian_trace": "Hessian trace tr(H)",
}
# landscape/* columns that Landscape.measure writes as bookkeeping (cost, diverged-task counts),
# not as metrics of the landscape: no figure, no correlation.
DIAGNOSTICS = ("hvps", "seconds_per_hvp", "diverged_tasks", "flatness_diverged_tasks")
TARGET_NAMES = {ACCURACY: "meta-test accuracy", MSE: "meta-test MSE"}
_INTEGER_COLUMNS = ("epoch", "iteration")


# ---------------------------------------------------------------------------------------------
# Records


def load_records(run_dir, log: Callable[[str], None] = print) -> list:
    """The run's per-epoch records (dicts of column -> value), sorted by iteration.

    Reads RUN/landscape.csv when it has rows, filling the columns it lacks from RUN/history.jsonl;
    otherwise RUN/history.jsonl. Numbers become floats (`epoch` and `iteration` ints), empty cells
    NaN. A damaged last history line is skipped and said to `log`. Raises TfmetaError naming
    the directory when neither file exists or has rows.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TfmetaError(f"{run_dir}: no such run directory")
    csv_rows = [_parsed(row) for row in rundir.read_landscape(run_dir)]
    history = [_parsed(row) for row in rundir.read_history(run_dir, log)]
    if not csv_rows and not history:
        found = [name for name in (rundir.LANDSCAPE, rundir.HISTORY) if (run_dir / name).is_file()]
        raise TfmetaError(
            f"{run_dir}: no per-epoch records: "
            + (f"{' and '.join(found)} {'has' if len(found) == 1 else 'have'} no rows"
               if found else f"neither {rundir.LANDSCAPE} nor {rundir.HISTORY} exists")
            + " (train it with `tfmeta train`, then measure it with `tfmeta analyze`)")
    if not csv_rows:
        return _last_per_key(history)
    rows = _last_per_key(csv_rows)
    if history:
        by_key = {_row_key(r, i): r for i, r in enumerate(_last_per_key(history))}
        for i, row in enumerate(rows):
            extra = by_key.get(_row_key(row, i), {})
            for column, value in extra.items():
                if column not in row or _is_missing(row[column]):
                    row[column] = value
    return rows


def _parsed(row: dict) -> dict:
    return {k: _parse(k, v) for k, v in row.items()}


def _parse(column: str, value):
    """A cell as a number (int for epoch/iteration; NaN when empty), or the string as is."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return math.nan
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, (int, float)):
        value = float(value)
        if column in _INTEGER_COLUMNS and value.is_integer():
            return int(value)
        return value
    return value


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _row_key(row: dict, index: int):
    for column in ("iteration", "epoch"):
        value = row.get(column)
        if isinstance(value, (int, float)) and not _is_missing(value):
            return column, value
    return "index", index


def _last_per_key(rows: list) -> list:
    """One row per iteration (the last line wins: a resumed epoch repeats), sorted by iteration."""
    last = {}
    for i, row in enumerate(rows):
        last[_row_key(row, i)] = row  # dicts keep first-insertion order; values are the last
    return sorted(last.values(), key=lambda r: tuple(
        _number(r.get(c)) if not math.isnan(_number(r.get(c))) else math.inf
        for c in _INTEGER_COLUMNS[::-1]))


def _number(value) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return math.nan


def column(records: Sequence[dict], name: str) -> np.ndarray:
    """The column `name` of `records` as float64, NaN where a record lacks it or is not a number."""
    return np.array([_number(r.get(name)) for r in records], dtype=np.float64)


def metric_names(records: Iterable[dict]) -> list:
    """The landscape metrics (names without the `landscape/` prefix) present, in display order."""
    names = set()
    for row in records:
        for key in row:
            if key.startswith(LANDSCAPE) and len(key) > len(LANDSCAPE):
                names.add(key[len(LANDSCAPE):])
    names = {n for n in names if n not in DIAGNOSTICS
             and not (n.endswith(CI95) and n[:-len(CI95)] in names)}
    return _ordered(names)


def _ordered(names) -> list:
    """The METRIC_NAMES first, in their order; then the rest in natural order (λ2 before λ10)."""
    known = [n for n in METRIC_NAMES if n in names]
    natural = lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)]  # noqa: E731
    return known + sorted(set(names) - set(known), key=natural)


def target_key(records: Sequence[dict]) -> Optional[str]:
    """`meta_test/accuracy` if any record has it, else `meta_test/mse` if any has it, else None."""
    for key in (ACCURACY, MSE):
        if np.isfinite(column(records, key)).any():
            return key
    return None


def human_name(metric: str) -> str:
    """The display name: "Flatness ‖H‖σ" for "flatness"; an unknown "foo_bar" is "Foo bar"."""
    if metric in METRIC_NAMES:
        return METRIC_NAMES[metric]
    top = re.fullmatch(r"top_eigenvalue_(\d+)", metric)
    if top:
        return f"Hessian eigenvalue λ{top.group(1)}"
    if metric.startswith("layer_flatness/"):
        return f"Layer flatness ‖H‖σ ({metric.split('/', 1)[1]})"
    text = metric.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Correlations


def correlations(runs: Mapping[str, Sequence[dict]]) -> list:
    """Each landscape metric against the target across epochs, per run and pooled.

    `runs` maps a run name to its records (`load_records`). One row per (run, metric) for the
    metrics the run has, then, for several runs, one per metric with run "pooled": every run's
    epochs concatenated (only when all runs share the same target). Rows are
    {"run", "metric", "n", "pearson", "spearman"}; n counts the epochs where both are finite.
    Raises TfmetaError for a run with neither meta_test/accuracy nor meta_test/mse.
    """
    targets = {name: _require_target(name, records) for name, records in runs.items()}
    metrics = _all_metrics(runs)
    rows = []
    pooled = {m: ([], []) for m in metrics}
    for name, records in runs.items():
        y = column(records, targets[name])
        present = set(metric_names(records))
        for metric in metrics:
            if metric not in present:
                continue
            x = column(records, LANDSCAPE + metric)
            rows.append(_row(name, metric, x, y))
            pooled[metric][0].append(x)
            pooled[metric][1].append(y)
    if len(runs) > 1 and len(set(targets.values())) == 1:
        for metric in metrics:
            xs, ys = pooled[metric]
            if xs:
                rows.append(_row(POOLED, metric, np.concatenate(xs), np.concatenate(ys)))
    return rows


def _row(run: str, metric: str, x: np.ndarray, y: np.ndarray) -> dict:
    fx, fy = finite_pairs(x, y)
    return {"run": run, "metric": metric, "n": int(fx.size), "pearson": pearson(fx, fy),
            "spearman": spearman(fx, fy)}


def _require_target(name: str, records: Sequence[dict]) -> str:
    key = target_key(records)
    if key is None:
        raise TfmetaError(
            f"{name}: no meta-test results ({ACCURACY} or {MSE}) in its records; train with "
            f"train.eval_every > 0 so that each epoch is evaluated")
    return key


def _all_metrics(runs: Mapping[str, Sequence[dict]]) -> list:
    return _ordered({m for records in runs.values() for m in metric_names(records)})


# ---------------------------------------------------------------------------------------------
# Report


def write_report(run_dirs, out_dir, tensorboard: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Figures and correlation tables for `run_dirs`, written into `out_dir`.

    Writes `<metric>.png` per landscape metric (every run's metric against the epoch on the left
    axis, solid, and its target on a twin right axis, dashed, one colour per run),
    `correlations.csv` and `correlations.md`, and, when `tensorboard`, the figures as images
    tagged `report/<metric>` under `out_dir/logs`. Returns {"figures": [png paths], "table": md
    path, "csv": csv path, "correlations": the rows of `correlations`}.
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise TfmetaError("no run directories given")
    names = run_names(run_dirs)
    runs = {name: load_records(d, log) for name, d in zip(names, run_dirs)}
    targets = {name: _require_target(str(d), runs[name]) for name, d in zip(names, run_dirs)}
    metrics = _all_metrics(runs)
    if not metrics:
        raise TfmetaError(
            f"no landscape metrics (landscape/* columns) in the records of "
            f"{', '.join(str(d) for d in run_dirs)}; measure them with `tfmeta analyze RUN_DIR`")
    rows = correlations(runs)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures, images = [], {}
    for metric in metrics:
        png = plot_metric(runs, targets, metric)
        path = out_dir / f"{_file_name(metric)}.png"
        with atomic_open(path, "wb") as f:
            f.write(png)
        figures.append(str(path))
        images[metric] = png
    csv_path, md_path = out_dir / "correlations.csv", out_dir / "correlations.md"
    with atomic_open(csv_path, "w") as f:
        f.write(format_csv(rows, targets))
    with atomic_open(md_path, "w") as f:
        f.write(format_markdown(rows, targets, dict(zip(names, map(str, run_dirs)))))
    if tensorboard:
        _write_images(out_dir / "logs", images)
    return {"figures": figures, "table": str(md_path), "csv": str(csv_path), "correlations": rows}


def run_names(run_dirs: Sequence[Path]) -> list:
    """Short distinct names: each directory's last path part, with more parts where two clash."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        clash = len(set(names)) < len(names) or POOLED in names
        if not clash or depth >= max(len(p) for p in parts):
            break
        depth += 1
    if len(set(names)) < len(names):  # the same directory twice
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("._") or "metric"


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def format_csv(rows: Sequence[dict], targets: Mapping[str, str]) -> str:
    """correlations.csv: run, metric, target, n, pearson, spearman (NaN as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "metric", "target", "n", "pearson", "spearman"])
    for row in rows:
        target = targets.get(row["run"]) or next(iter(targets.values()))
        writer.writerow([row["run"], row["metric"], target, row["n"],
                         *("" if math.isnan(row[k]) else repr(row[k])
                           for k in ("pearson", "spearman"))])
    return buffer.getvalue()


def format_markdown(rows: Sequence[dict], targets: Mapping[str, str],
                    sources: Optional[Mapping[str, str]] = None) -> str:
    """correlations.md: a heading, what the numbers are, and one table row per (run, metric)."""
    kinds = sorted(set(targets.values()))
    lines = ["# Landscape metrics and meta-test performance", ""]
    described = " / ".join(
        f"{TARGET_NAMES[k]} (`{k}`, {'higher' if k == ACCURACY else 'lower'} is better)"
        for k in kinds)
    lines.append(f"Correlation across meta-training epochs between each landscape metric of the "
                 f"meta-test tasks and the {described}. `n` counts the epochs where both are "
                 f"known" + ("; `pooled` concatenates the epochs of every run."
                             if any(r["run"] == POOLED for r in rows) else "."))
    if sources:
        lines += [""] + [f"- `{name}`: {path}" for name, path in sources.items()]
    lines += ["", "| run | metric | target | n | Pearson r | Spearman ρ |",
              "| --- | --- | --- | ---: | ---: | ---: |"]
    for row in rows:
        target = targets.get(row["run"]) or kinds[0]
        lines.append(f"| {row['run']} | {human_name(row['metric'])} (`{row['metric']}`) "
                     f"| {TARGET_NAMES[target]} | {row['n']} | {_fmt(row['pearson'])} "
                     f"| {_fmt(row['spearman'])} |")
    return "\n".join(lines) + "\n"


def _x_axis(runs: Mapping[str, Sequence[dict]]):
    """("epoch", "epoch") when every record has an epoch, else ("iteration", "meta-iteration")."""
    if all(np.isfinite(column(r, "epoch")).all() for r in runs.values()):
        return "epoch", "epoch"
    return "iteration", "meta-iteration"


def plot_metric(runs: Mapping[str, Sequence[dict]], targets: Mapping[str, str],
                metric: str) -> bytes:
    """One twin-axis figure as PNG bytes: the metric per run (left, solid) and its target (right,
    dashed), with 95% bands where the records have `_ci95` columns."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    x_key, x_label = _x_axis(runs)
    kinds = sorted(set(targets.values()))
    target_label = " / ".join(TARGET_NAMES[k] for k in kinds)
    name = human_name(metric)
    style = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
             "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False}
    with plt.rc_context(style):
        fig, left = plt.subplots(figsize=(8, 4.8), dpi=150)
        right = left.twinx()
        handles = []
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (run, records) in enumerate(runs.items()):
            if metric not in metric_names(records):
                continue
            colour = colours[i % len(colours)]
            x = column(records, x_key)
            m = column(records, LANDSCAPE + metric)
            y = column(records, targets[run])
            _line(left, x, m, column(records, LANDSCAPE + metric + CI95), colour, "-", "o", 0.15)
            _line(right, x, y, column(records, targets[run] + CI95), colour, "--", "s", 0.07)
            r, rho = pearson(m, y), spearman(m, y)
            handles.append(Line2D([], [], color=colour, lw=2.2,
                                  label=f"{run}  (r = {_fmt(r, 2)}, ρ = {_fmt(rho, 2)})"))
        handles += [Line2D([], [], color="0.25", ls="-", marker="o", ms=4, label=name),
                    Line2D([], [], color="0.25", ls="--", marker="s", ms=4, label=target_label)]
        left.set_xlabel(x_label)
        left.set_ylabel(name)
        right.set_ylabel(target_label)
        right.spines["top"].set_visible(False)
        left.xaxis.set_major_locator(MaxNLocator(integer=True))
        left.grid(True, alpha=0.3)
        left.set_title(f"{name} and {target_label}")
        left.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                    ncol=1 if len(handles) > 4 else 2, frameon=False)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight", facecolor="white")
        plt.close(fig)
    return buffer.getvalue()


def _line(ax, x, y, ci, colour, linestyle, marker, band_alpha) -> None:
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return
    x, y, ci = x[keep], y[keep], ci[keep]
    ax.plot(x, y, color=colour, ls=linestyle, marker=marker, ms=4, lw=1.8)
    band = np.isfinite(ci)
    if band.any():
        ax.fill_between(x[band], (y - ci)[band], (y + ci)[band], color=colour, alpha=band_alpha,
                        lw=0)


def _write_images(log_dir: Path, images: Mapping[str, bytes]) -> None:
    """The figures as TensorBoard images, tagged report/<metric>, at step 0."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=0):
        for metric, png in images.items():
            image = tf.io.decode_png(png, channels=3)
            tf.summary.image(f"report/{metric}", image[tf.newaxis], step=0,
                             description=f"{human_name(metric)} against meta-test performance "
                                         f"across epochs (tfmeta report)")
    writer.flush()
    writer.close()
