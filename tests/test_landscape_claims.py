"""`tfmeta experiment landscape-claims --quick` end to end on the real Omniglot zips: the pilot
chooses a pool, every part's runs train in their own processes, claims.md has a verdict per claim
and every table, every measured number is finite, and a second call reuses the finished runs."""

import json
import math

import numpy as np
import pytest

from tfmeta import verdicts as V
from tfmeta.errors import ConfigError
from tfmeta.experiments import landscape_claims as lc
from tfmeta.report import load_records

pytestmark = pytest.mark.slow

VERDICTS = {V.REPRODUCED, V.CONTRADICTED, V.INCONCLUSIVE, V.UNTESTABLE}
RUNS = 3 * 2 + 4 * 2 + 2 * 1 + 3 * 2 + 2 * 2   # pilot, main, pools, sine sweep, regularizer


@pytest.fixture(scope="module")
def quick_run(omniglot_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("claims")
    lines = []
    result = lc.run(lc.ClaimsConfig(data_dir=str(omniglot_dir)), out, quick_run=True,
                    log=lines.append)
    return out, result, lines


def numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_quick_writes_a_verdict_per_claim_and_every_table(quick_run):
    out, result, lines = quick_run
    table = (out / "claims.md").read_text()
    for claim in lc.CLAIMS:
        assert f"| {claim}: " in table
    assert [r["id"] for r in result["claims"]] == list(lc.CLAIMS)
    assert all(r["verdict"] in VERDICTS for r in result["claims"]), result["claims"]
    assert f"All {RUNS} runs finished." in table
    for section in ("## Pilot", "## Meta-overfitting: MAML, T = 5", "## Across pools",
                    "## The paper's method", "## Deviations", "## Metric noise",
                    "## Scale of trajectory coherence"):
        assert section in table, section
    saved = json.loads((out / "claims.json").read_text())
    assert [r["verdict"] for r in saved["claims"]] == [r["verdict"] for r in result["claims"]]
    assert all(math.isfinite(x) for x in numbers(saved["noise"]))
    assert len(saved["pilot"]) == 6   # 2 pools x (maml, fomaml, maml at T = 1)
    assert set(json.loads((out / "pilot.json").read_text())["selected"]) == {
        "maml", "fomaml", "maml_t1"}
    figures = {p.split("/")[-2] + "/" + p.split("/")[-1] for p in result["figures"]}
    assert {"maml-t5/flatness.png", "finetune/trajectory_coherence.png",
            "sine/gradient_coherence.png", "figures/pools.png",
            "figures/sine_sweep.png"} <= figures


def test_main_runs_are_measured_at_epoch_0_and_every_epoch(quick_run):
    out, _, _ = quick_run
    for name in ("maml-t5-s0", "maml-t1-s1", "finetune-s0", "sine-s1"):
        records = load_records(out / "runs" / name)
        assert [r["epoch"] for r in records][0] == 0
        for record in records:
            for metric in lc.MEASURED:
                assert np.isfinite(record[f"landscape/{metric}"]), (name, metric)
    pilot = load_records(out / "runs" / "pilot-fomaml-c3x6-s0")
    assert pilot[0]["epoch"] == 0 and "landscape/flatness" not in pilot[-1]
    peak = json.loads((out / "runs" / "pilot-maml-c6x6-s1" / "peak_landscape.json").read_text())
    assert peak["epoch"] >= 1 and all(np.isfinite(peak[m]) for m in lc.MEASURED)


def test_checkpoints_measured_by_one_landscape_match_a_fresh_one(quick_run, tmp_path):
    """A pool run's checkpoints share one Landscape (traced once, the weights restored under
    it); a fresh Landscape on the last of them measures the same numbers."""
    out, _, _ = quick_run
    run_dir = out / "runs" / "pilot-maml-c6x6-s1"
    epoch = max(lc.plan.pool_epochs(lc.quick(lc.ClaimsConfig())))
    shared = json.loads((run_dir / lc.runner.epoch_file(epoch)).read_text())
    fresh = lc.runner.measure_at(run_dir, {tmp_path / "fresh.json": epoch})[tmp_path / "fresh.json"]
    assert fresh["epoch"] == shared["epoch"] == epoch
    for metric in lc.MEASURED:
        np.testing.assert_allclose(fresh[metric], shared[metric], rtol=1e-5, err_msg=metric)


def test_a_second_call_reuses_the_runs_and_other_settings_are_refused(quick_run, omniglot_dir):
    out, result, _ = quick_run
    lines = []
    again = lc.run(lc.ClaimsConfig(data_dir=str(omniglot_dir)), out, quick_run=True,
                   parts=("pilot", "regularizer"), log=lines.append)
    assert lines[0] == f"10 of 10 runs already finished in {out / 'runs'}; training 0, 2 at a " \
                       "time (each run's epochs: RUN.log)"
    assert [r["verdict"] for r in again["claims"]] == [r["verdict"] for r in result["claims"]]
    with pytest.raises(ConfigError, match="other settings"):
        lc.run(lc.ClaimsConfig(data_dir=str(omniglot_dir), algorithm="fomaml"), out,
               quick_run=True)

