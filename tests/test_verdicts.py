"""The verdict rules of `tfmeta experiment landscape-claims`, on synthetic curves whose answer is
known: a metric built to track accuracy, one built to keep decreasing past the accuracy peak,
and pure noise."""

import math

import numpy as np
import pytest

from tfmeta import verdicts as V
from tfmeta.experiments import landscape_claims as lc

EPOCHS = 20


def accuracy_curve(rng, peak_epoch=6):
    """Rises to a peak, then meta-overfits: falls 4 points and stays down; small noise."""
    e = np.arange(1, EPOCHS + 1, dtype=float)
    rise = 0.5 + 0.07 * np.minimum(e, peak_epoch) / peak_epoch
    fall = 0.04 * np.clip((e - peak_epoch) / 4, 0, 1)
    return rise - fall + rng.normal(0, 0.002, EPOCHS)


def seeds_of(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        acc = accuracy_curve(rng)
        e = np.arange(1, EPOCHS + 1, dtype=float)
        out.append({
            "generalization": acc,
            "generalization_ci95": np.full(EPOCHS, 0.01),
            # tracks accuracy, including past the peak
            "trajectory_coherence": 0.1 * acc + rng.normal(0, 0.0005, EPOCHS),
            # sharper up to epoch 3, then flatter every epoch, also past the accuracy peak
            "flatness": np.where(e <= 3, 5 + e, 8 * np.exp(-(e - 3) / 8)) + rng.normal(0, .01, EPOCHS),
            "support_loss": 0.06 * np.exp(-e / 6) + rng.normal(0, 1e-4, EPOCHS),
            "gradient_coherence": rng.normal(1.0, 0.3, EPOCHS),           # pure noise
            "representation_coherence": 30 + 2 * e + rng.normal(0, 0.1, EPOCHS),  # keeps rising
            "trajectory_norm": 1 + 0.02 * e + rng.normal(0, 1e-3, EPOCHS),
        })
    return out


def test_t_quantiles_match_numerical_integration_of_the_t_density():
    for df in (1, 2, 3, 5, 10, 30):
        x = np.linspace(0, 200 if df < 3 else 40, 2_000_001)
        pdf = (math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
               * (1 + x ** 2 / df) ** (-(df + 1) / 2))
        cdf = 0.5 + np.concatenate([[0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x))])
        assert V.t975(df) == pytest.approx(np.interp(0.975, cdf, x), rel=2e-3)


def test_interval_is_the_t_interval():
    iv = V.interval([1.0, 2.0, 3.0])
    assert (iv.mean, iv.low, iv.high) == pytest.approx((2, 2 - 4.303 / math.sqrt(3),
                                                       2 + 4.303 / math.sqrt(3)))
    assert math.isnan(V.interval([1.0]).low)
    assert math.isnan(V.interval([1.0, math.nan, 2.0]).low)


def test_side_within_and_combine():
    iv = lambda lo, hi: V.Interval((lo + hi) / 2, lo, hi, [])  # noqa: E731
    assert V.side(iv(0.4, 0.9), 0.3, above=True) == V.REPRODUCED
    assert V.side(iv(-0.5, 0.2), 0.3, above=True) == V.CONTRADICTED
    assert V.side(iv(0.1, 0.6), 0.3, above=True) == V.INCONCLUSIVE
    assert V.side(iv(-0.9, -0.4), -0.3, above=False) == V.REPRODUCED
    assert V.within(iv(-0.2, 0.2), 0.3) == V.REPRODUCED
    assert V.within(iv(0.5, 0.9), 0.3) == V.CONTRADICTED
    assert V.within(iv(0.1, 0.5), 0.3) == V.INCONCLUSIVE
    assert V.combine([V.REPRODUCED, V.REPRODUCED]) == V.REPRODUCED
    assert V.combine([V.REPRODUCED, V.INCONCLUSIVE]) == V.INCONCLUSIVE
    assert V.combine([V.INCONCLUSIVE, V.CONTRADICTED]) == V.CONTRADICTED


def test_peak_detects_meta_overfitting_only_beyond_the_evaluation_noise():
    acc = accuracy_curve(np.random.default_rng(0))
    p = V.peak(acc, np.full(EPOCHS, 0.01))
    assert p.epoch in (6, 7) and p.overfits and p.drop > 0.03
    assert not V.peak(acc, np.full(EPOCHS, 0.05)).overfits        # drop within the noise
    assert not V.peak(np.linspace(0.5, 0.6, EPOCHS)).overfits     # still rising
    assert not V.peak(np.r_[np.linspace(0.5, 0.6, EPOCHS - 2), 0.5, 0.5]).overfits  # too late


def test_a_metric_built_to_track_accuracy_is_reproduced():
    rows = {r["id"]: r for r in lc.judge({"maml-t5": seeds_of(), "finetune": seeds_of(seed=1)},
                                        {})}
    tracking = rows["C4"]["parts"][:2]
    assert [p.verdict for p in tracking] == [V.REPRODUCED, V.REPRODUCED]
    assert tracking[1].spearman.low > 0.3          # past the peak as well


def test_a_metric_that_keeps_decreasing_past_the_peak_is_judged_so():
    rows = {r["id"]: r for r in lc.judge({"maml-t5": seeds_of()}, {})}
    assert rows["C1"]["verdict"] == V.REPRODUCED   # sharper to epoch 3, flatter after
    assert rows["C2"]["verdict"] == V.REPRODUCED   # flatter past the accuracy peak
    assert rows["C3"]["parts"][0].verdict == V.REPRODUCED
    assert "accuracy peak: epoch" in rows["C1"]["peaks"]
    # representation coherence keeps rising past the peak: it does not reflect meta-overfitting
    c6 = lc.judge({"maml-t5": seeds_of()}, {"omniglot": [
        {"k": np.arange(1, 6.0), "generalization": np.linspace(.5, .9, 5),
         "representation_coherence": np.linspace(30, 60, 5) + s} for s in range(3)]})
    c6 = {r["id"]: r for r in c6}["C6"]
    assert c6["parts"][1].verdict == V.CONTRADICTED and c6["verdict"] == V.CONTRADICTED
    assert c6["parts"][2].verdict == V.REPRODUCED


def test_pure_noise_is_never_reproduced_and_is_contradicted_with_enough_seeds():
    rng = np.random.default_rng(3)
    for n, expected in ((3, {V.INCONCLUSIVE, V.CONTRADICTED}), (12, {V.CONTRADICTED})):
        rs = [V.rank_correlation(rng.normal(size=EPOCHS), rng.normal(size=EPOCHS))
              for _ in range(n)]
        assert V.side(V.correlation_interval(rs), V.CORRELATION, True) in expected
    t1 = seeds_of(seed=4)
    rows = {r["id"]: r for r in lc.judge(
        {"maml-t1": t1, "sine": seeds_of(seed=5), "finetune": seeds_of(seed=6)}, {})}
    assert rows["C5"]["parts"][0].verdict != V.REPRODUCED   # gradient coherence is noise here


def test_missing_runs_leave_claims_pending():
    rows = lc.judge({}, {})
    assert [r["id"] for r in rows] == [f"C{i}" for i in range(1, 9)]
    assert all(r["verdict"].startswith("pending") for r in rows)
    md = lc.format_markdown(rows, lc.ClaimsConfig(data_dir="x"), None, None, "Partial.")
    assert md.count("pending") == 8


def test_plan_keeps_the_protocol_and_checks_the_pool():
    specs = lc.plan(lc.ClaimsConfig(data_dir="/d"), characters=242)
    t5 = next(s for s in specs if s.name == "maml-t5-s0")
    assert {"adapt.lr=0.1", "adapt.steps=5", "adapt.test_steps=5", "train.meta_lr=0.001",
            "data.omniglot.holdout=239", "landscape.flatness_tasks=60",
            "landscape.coherence_tasks=500"} <= set(t5.overrides)
    t1 = next(s for s in specs if s.name == "maml-t1-s2")
    assert {"adapt.steps=1", "adapt.test_steps=1", "train.seed=2"} <= set(t1.overrides)
    ft = next(s for s in specs if s.setting == "finetune")
    assert {"adapt.lr=0.1", "adapt.test_steps=5"} <= set(ft.overrides)
    assert len({s.name for s in specs}) == len(specs) == 5 * (4 + 5 + 6)
    with pytest.raises(lc.ConfigError, match="train_characters"):
        lc.plan(lc.ClaimsConfig(train_characters=242), characters=242)
    with pytest.raises(lc.ConfigError, match="sweep_queries"):
        lc.plan(lc.ClaimsConfig(omniglot_shots=[1, 6]), characters=242)


def test_an_out_directory_keeps_its_settings_but_may_gain_seeds(tmp_path):
    config = lc.ClaimsConfig(data_dir="/d", seeds=3)
    lc._check_plan(config, tmp_path)
    lc._check_plan(lc.dataclasses.replace(config, seeds=5, jobs=1), tmp_path)
    with pytest.raises(lc.ConfigError, match=r"other settings \(epochs: 16 there, 30 now\)"):
        lc._check_plan(lc.dataclasses.replace(config, epochs=30), tmp_path)


def test_bad_experiment_settings_are_user_errors(tmp_path):
    with pytest.raises(lc.ConfigError, match="--seeds must be at least 2"):
        lc.run(lc.ClaimsConfig(data_dir=str(tmp_path), seeds=1), tmp_path / "out")
    with pytest.raises(lc.ConfigError, match="Omniglot data directory is not set"):
        lc.run(lc.ClaimsConfig(), tmp_path / "out")


def test_an_unknown_finetune_head_is_a_user_error():
    from tfmeta import config as config_lib
    with pytest.raises(lc.ConfigError, match="algorithms.finetune.head.*per_task or shared"):
        config_lib.load("sine", ["algorithms.finetune.head=random"])
