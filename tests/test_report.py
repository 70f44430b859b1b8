"""tfmeta.report: correlations vs naive formulas, record loading, figures, tables, TensorBoard."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tfmeta import report, stats
from tfmeta.errors import TfmetaError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def naive_pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def naive_ranks(x):
    """Average 1-based ranks by counting: rank = #smaller + (#equal + 1) / 2."""
    return [sum(v < a for v in x) + (sum(v == a for v in x) + 1) / 2 for a in x]


def naive_spearman(x, y):
    return naive_pearson(naive_ranks(x), naive_ranks(y))


# --- pearson / spearman ----------------------------------------------------------------------


def test_pearson_and_spearman_match_naive_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 0.5 * x + rng.normal(size=30)
    assert stats.pearson(x, y) == pytest.approx(naive_pearson(list(x), list(y)), abs=1e-12)
    assert stats.spearman(x, y) == pytest.approx(naive_spearman(list(x), list(y)), abs=1e-12)


def test_spearman_with_ties_uses_average_ranks():
    x = [1, 2, 2, 3, 3, 3, 7, 0]
    y = [2, 1, 4, 4, 5, 5, 9, 0]
    assert list(stats.average_ranks(x)) == naive_ranks(x) == [2, 3.5, 3.5, 6, 6, 6, 8, 1]
    assert stats.spearman(x, y) == pytest.approx(naive_spearman(x, y), abs=1e-12)
    assert stats.pearson(x, y) == pytest.approx(naive_pearson(x, y), abs=1e-12)


def test_monotone_nonlinear_data_spearman_one_pearson_below_one():
    x = np.arange(1.0, 11.0)
    assert stats.spearman(x, np.exp(x)) == pytest.approx(1.0)
    assert stats.spearman(x, -x ** 3) == pytest.approx(-1.0)
    assert stats.pearson(x, np.exp(x)) < 0.9
    assert stats.pearson(x, 2 * x + 1) == pytest.approx(1.0)


def test_nan_pairs_skipped_and_degenerate_inputs_give_nan():
    x = [1.0, 2.0, math.nan, 4.0, 5.0, 6.0]
    y = [2.0, 1.0, 3.0, math.nan, 7.0, 6.5]
    kept_x, kept_y = [1.0, 2.0, 5.0, 6.0], [2.0, 1.0, 7.0, 6.5]
    assert stats.pearson(x, y) == pytest.approx(naive_pearson(kept_x, kept_y))
    assert stats.spearman(x, y) == pytest.approx(naive_spearman(kept_x, kept_y))
    assert math.isnan(stats.pearson([1, 2], [3, 4]))                        # < 3 points
    assert math.isnan(stats.spearman([1, 2, math.nan], [3, 4, 5]))           # < 3 finite pairs
    assert math.isnan(stats.pearson([0.1, 0.1, 0.1, 0.1], [1, 2, 3, 4]))     # zero variance
    assert math.isnan(stats.spearman([1, 2, 3, 4], [5, 5, 5, 5]))
    assert math.isnan(stats.pearson([], []))


# --- synthetic runs --------------------------------------------------------------------------


def synthetic(epochs=8, shift=0.0, seed=0, classification=True):
    """Per-epoch records where flatness falls and accuracy rises as meta-training goes on."""
    rng = np.random.default_rng(seed)
    rows, loss = [], "loss" if classification else "mse"
    for e in range(1, epochs + 1):
        acc = 0.5 + 0.4 * (1 - math.exp(-e / 3)) + rng.normal(0, 0.005)
        row = {"epoch": e, "iteration": 100 * e, "meta_train/loss": 1.0 / e,
               f"meta_test/{loss}": 1.5 - acc + shift, f"meta_test/{loss}_ci95": 0.02,
               "landscape/flatness": 10 * math.exp(-e / 3) + shift + rng.normal(0, 0.05),
               "landscape/flatness_ci95": 0.3,
               "landscape/trajectory_coherence": 0.1 + 0.05 * e + rng.normal(0, 0.01),
               "landscape/gradient_coherence": math.nan if e % 3 == 0 else 0.2 + 0.01 * e}
        if classification:
            row.update({"meta_test/accuracy": acc, "meta_test/accuracy_ci95": 0.01})
        rows.append(row)
    return rows


def write_history(run_dir: Path, rows, duplicate=()):
    """history.jsonl as training writes it; epochs in `duplicate` appear twice (a stale line, then
    the final one), as after a resume."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "history.jsonl", "w") as f:
        for row in rows:
            if row["epoch"] in duplicate:
                measured = ("landscape/", "meta_test/")
                stale = dict(row, **{k: -99.0 for k in row if k.startswith(measured)})
                f.write(json.dumps(stale) + "\n")
            f.write(json.dumps(row) + "\n")
    return run_dir


def write_csv(run_dir: Path, rows, columns):
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "landscape.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if isinstance(row.get(c), float) and math.isnan(row[c])
                             else row.get(c, "") for c in columns])
    return run_dir


def test_load_records_keeps_last_line_per_iteration_sorted(tmp_path):
    rows = synthetic()
    shuffled = rows[4:] + rows[:4]
    run = write_history(tmp_path / "run", shuffled, duplicate={2, 5})
    with open(run / "history.jsonl", "a") as f:
        f.write('{"epoch": 9, "iterat')                 # a last line cut short by a kill
    records = report.load_records(run)
    assert [r["iteration"] for r in records] == [100 * e for e in range(1, 9)]
    assert all(isinstance(r["epoch"], int) for r in records)
    for got, want in zip(records, rows):
        assert got["meta_test/accuracy"] == want["meta_test/accuracy"]
        assert got["landscape/flatness"] == want["landscape/flatness"]
    assert math.isnan(records[2]["landscape/gradient_coherence"])


def test_load_records_errors_name_the_directory(tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(TfmetaError, match="empty_run.*neither landscape.csv nor history.jsonl"):
        report.load_records(empty)
    (empty / "history.jsonl").write_text("\n")
    with pytest.raises(TfmetaError, match="empty_run.*history.jsonl has no rows"):
        report.load_records(empty)
    with pytest.raises(TfmetaError, match="missing_run.*no such run directory"):
        report.load_records(tmp_path / "missing_run")
    (empty / "history.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(TfmetaError, match=r"history.jsonl:2: not a JSON line"):
        report.load_records(empty)


def test_correlations_from_history_and_csv_with_pooled_row(tmp_path):
    a_rows, b_rows = synthetic(seed=1), synthetic(seed=2, shift=0.5)
    run_a = write_history(tmp_path / "a", a_rows, duplicate={3})
    # Run b: landscape.csv is preferred over history.jsonl (whose landscape numbers are bogus), and
    # the CSV lacks the target, which comes from the history line of the same iteration.
    write_history(tmp_path / "b", [dict(r, **{"landscape/flatness": 0.0}) for r in b_rows])
    columns = ["epoch", "iteration", "landscape/flatness", "landscape/flatness_ci95",
               "landscape/trajectory_coherence", "landscape/gradient_coherence"]
    run_b = write_csv(tmp_path / "b", b_rows[::-1], columns)

    runs = {"a": report.load_records(run_a), "b": report.load_records(run_b)}
    assert [r["iteration"] for r in runs["b"]] == [100 * e for e in range(1, 9)]
    assert runs["b"][0]["landscape/flatness"] == pytest.approx(b_rows[0]["landscape/flatness"])
    assert runs["b"][0]["meta_test/accuracy"] == b_rows[0]["meta_test/accuracy"]

    rows = report.correlations(runs)
    metrics = ["flatness", "trajectory_coherence", "gradient_coherence"]   # *_ci95 is no metric
    assert [(r["run"], r["metric"]) for r in rows] == [
        (run, m) for run in ("a", "b", "pooled") for m in metrics]
    assert set(rows[0]) == {"run", "metric", "n", "pearson", "spearman"}
    by = {(r["run"], r["metric"]): r for r in rows}
    for name, source in (("a", a_rows), ("b", b_rows)):
        x = [r["landscape/flatness"] for r in source]
        y = [r["meta_test/accuracy"] for r in source]
        assert by[name, "flatness"]["n"] == 8
        assert by[name, "flatness"]["pearson"] == pytest.approx(naive_pearson(x, y), abs=1e-9)
        assert by[name, "flatness"]["spearman"] == pytest.approx(naive_spearman(x, y), abs=1e-9)
        assert by[name, "flatness"]["spearman"] < -0.9          # flatter as accuracy rises
        assert by[name, "gradient_coherence"]["n"] == 6          # NaN epochs skipped
    x = [r["landscape/flatness"] for r in a_rows + b_rows]
    y = [r["meta_test/accuracy"] for r in a_rows + b_rows]
    assert by["pooled", "flatness"]["n"] == 16
    assert by["pooled", "flatness"]["pearson"] == pytest.approx(naive_pearson(x, y), abs=1e-9)
    assert by["pooled", "flatness"]["spearman"] == pytest.approx(naive_spearman(x, y), abs=1e-9)

    single = report.correlations({"a": runs["a"]})
    assert {r["run"] for r in single} == {"a"}


def test_analyze_csv_layout_diagnostics_are_not_metrics(tmp_path):
    """The columns `tfmeta analyze` writes: a checkpoint name, bookkeeping under landscape/ (HVP
    counts and timing, diverged tasks) and the opt-in Hessian metrics."""
    rows = []
    for e, r in enumerate(synthetic(), 1):
        r = dict(r, checkpoint=f"ckpt-{e}")
        r.update({"landscape/hvps": 40 + e, "landscape/seconds_per_hvp": 0.01,
                  "landscape/diverged_tasks": 0, "landscape/flatness_diverged_tasks": 0,
                  "landscape/hessian_trace": 50.0 - e, "landscape/top_eigenvalue_10": 1.0 / e,
                  "landscape/top_eigenvalue_2": 5.0 / e,
                  "landscape/layer_flatness/conv_1": 3.0 / e})
        rows.append(r)
    run = write_csv(tmp_path / "analyzed", rows, list(rows[0]))
    records = report.load_records(run)
    assert records[0]["checkpoint"] == "ckpt-1" and records[0]["landscape/hvps"] == 41.0
    assert report.metric_names(records) == [
        "flatness", "trajectory_coherence", "gradient_coherence", "hessian_trace",
        "layer_flatness/conv_1", "top_eigenvalue_2", "top_eigenvalue_10"]
    assert report.human_name("top_eigenvalue_2") == "Hessian eigenvalue λ2"
    assert report.human_name("layer_flatness/conv_1") == "Layer flatness ‖H‖σ (conv_1)"
    assert report.human_name("new_metric") == "New metric"
    result = report.write_report(run, tmp_path / "out", tensorboard=False)
    assert str(tmp_path / "out" / "layer_flatness_conv_1.png") in result["figures"]
    assert "hvps" not in Path(result["table"]).read_text()


def test_regression_target_is_meta_test_mse(tmp_path):
    records = report.load_records(write_history(tmp_path / "sine", synthetic(classification=False)))
    assert report.target_key(records) == "meta_test/mse"
    row = report.correlations({"sine": records})[0]
    x = [r["landscape/flatness"] for r in records]
    y = [r["meta_test/mse"] for r in records]
    assert row["pearson"] == pytest.approx(naive_pearson(x, y))
    assert row["pearson"] > 0.9                                   # flatter as MSE falls


def test_run_without_meta_test_results_is_a_user_error(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("meta_test/")} for r in synthetic()]
    records = report.load_records(write_history(tmp_path / "no_eval", rows))
    with pytest.raises(TfmetaError, match="no_eval.*eval_every"):
        report.correlations({"no_eval": records})


# --- write_report ----------------------------------------------------------------------------


def test_write_report_figures_tables_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_a = write_history(tmp_path / "runs" / "maml", synthetic(seed=1), duplicate={4})
    run_b = write_history(tmp_path / "runs" / "fomaml", synthetic(seed=2, shift=0.3))
    out = tmp_path / "out"
    result = report.write_report([run_a, run_b], out)

    metrics = ["flatness", "trajectory_coherence", "gradient_coherence"]
    assert result["figures"] == [str(out / f"{m}.png") for m in metrics]
    for path in result["figures"]:
        data = Path(path).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
        with Image.open(path) as image:
            width, height = image.size
            assert 800 <= width <= 3000 and 500 <= height <= 2000 and width > height

    table = Path(result["table"]).read_text()
    for needle in ("Flatness ‖H‖σ", "`flatness`", "Trajectory coherence", "Gradient coherence",
                   "| maml |", "| fomaml |", "| pooled |", "meta-test accuracy", "Spearman ρ"):
        assert needle in table, needle
    assert table.count("\n| ") == 2 + 3 * 3                    # header, rule, 3 runs x 3 metrics
    with open(result["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["run"], r["metric"]) for r in rows] == [
        (run, m) for run in ("maml", "fomaml", "pooled") for m in metrics]
    assert float(rows[0]["spearman"]) == pytest.approx(result["correlations"][0]["spearman"])

    events = list((out / "logs").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0]), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["tensors"]
    assert sorted(tags) == sorted(f"report/{m}" for m in metrics)
    event = accumulator.Tensors("report/flatness")[0]
    assert event.step == 0
    width, height, png = event.tensor_proto.string_val[:3]       # tf.summary.image's layout
    assert png[:8] == PNG_MAGIC and int(width) > int(height) > 0


def test_write_report_single_run_without_tensorboard_and_errors(tmp_path):
    run = write_history(tmp_path / "sine", synthetic(epochs=5, classification=False))
    result = report.write_report(run, tmp_path / "out", tensorboard=False)
    assert not (tmp_path / "out" / "logs").exists()
    assert "pooled" not in Path(result["table"]).read_text()
    assert "| sine |" in Path(result["table"]).read_text()
    assert "meta-test MSE" in Path(result["table"]).read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TfmetaError, match="empty"):
        report.write_report([run, empty], tmp_path / "out2")
    no_metrics = write_history(tmp_path / "plain", [
        {k: v for k, v in r.items() if not k.startswith("landscape/")} for r in synthetic()])
    with pytest.raises(TfmetaError, match="no landscape metrics.*tfmeta analyze"):
        report.write_report([no_metrics], tmp_path / "out3")


def test_run_names_are_distinct():
    names = report.run_names([Path("/x/a/run1"), Path("/x/b/run1"), Path("/x/pooled")])
    assert names == ["a/run1", "b/run1", "x/pooled"]
