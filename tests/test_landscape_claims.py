"""`tfmeta experiment landscape-claims --quick` end to end on the real Omniglot zips: every run
trained in its own process, claims.md with a verdict per claim, every measured number finite,
and a second call that reuses the finished runs."""

import json
import math

import numpy as np
import pytest

from tfmeta.errors import ConfigError
from tfmeta.experiments import landscape_claims as lc
from tfmeta.report import load_records

pytestmark = pytest.mark.slow

VERDICTS = {"reproduced", "contradicted", "inconclusive"}


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


def test_quick_writes_a_verdict_per_claim(quick_run):
    out, result, lines = quick_run
    table = (out / "claims.md").read_text()
    for claim in lc.CLAIMS:
        assert f"| {claim}: " in table
    assert [r["id"] for r in result["claims"]] == list(lc.CLAIMS)
    assert all(r["verdict"] in VERDICTS for r in result["claims"])
    assert "All 20 runs finished." in table and "## Deviations" in table
    assert "## Metric noise" in table and "## Scale of trajectory coherence" in table
    saved = json.loads((out / "claims.json").read_text())
    assert [r["verdict"] for r in saved["claims"]] == [r["verdict"] for r in result["claims"]]
    assert all(math.isfinite(x) for x in numbers(saved["noise"]))
    assert all(math.isfinite(x) for x in numbers(saved["scale"]))
    assert any(line.startswith("[20/20]") for line in lines)
    figures = {p.split("/")[-2] + "/" + p.split("/")[-1] for p in result["figures"]}
    assert {"maml-t5/flatness.png", "finetune/trajectory_coherence.png",
            "sine/gradient_coherence.png", "figures/sweeps.png"} <= figures


def test_quick_runs_measure_every_metric_at_every_epoch(quick_run):
    out, _, _ = quick_run
    runs = sorted(p for p in (out / "runs").iterdir() if p.is_dir())
    assert len(runs) == 20
    for run in runs:
        records = load_records(run)
        measured = [r for r in records if "landscape/flatness" in r]
        assert measured, run
        for record in measured:
            for metric in lc.METRICS:
                assert np.isfinite(record[f"landscape/{metric}"]), (run.name, metric)
        every_epoch = not run.name.startswith(("omniglot-k", "sine-k"))
        assert len(measured) == (len(records) if every_epoch else 1), run.name


def test_a_second_call_reuses_the_runs_and_other_settings_are_refused(quick_run, omniglot_dir):
    out, result, _ = quick_run
    lines = []
    again = lc.run(lc.ClaimsConfig(data_dir=str(omniglot_dir)), out, quick_run=True,
                   log=lines.append)
    assert lines[0].startswith("20 of 20 runs already finished")
    assert [r["verdict"] for r in again["claims"]] == [r["verdict"] for r in result["claims"]]
    with pytest.raises(ConfigError, match="other settings"):
        lc.run(lc.ClaimsConfig(data_dir=str(omniglot_dir), train_characters=4), out,
               quick_run=True)
