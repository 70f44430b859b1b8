"""The verdict rules of `tfmeta experiment landscape-claims`, on synthetic curves whose answer is
known: a metric built to track accuracy, one that only trends with the epoch, pure noise, and the
shapes each claim describes."""

import math

import numpy as np
import pytest

from tfmeta import stats, verdicts as V
from tfmeta.errors import ConfigError
from tfmeta.experiments import landscape_claims as lc
from tfmeta.experiments.landscape_claims import judge as J, plan, write

EPOCHS = 24
E = np.arange(EPOCHS + 1, dtype=float)          # epoch 0 is measured too


def accuracy_curve(rng, peak_epoch=12, fall=0.06, noise=0.004):
    """Rises for `peak_epoch` epochs, then meta-overfits: falls by `fall`; a little noise."""
    rise = 0.40 + 0.20 * np.minimum(E, peak_epoch) / peak_epoch
    drop = fall * np.clip((E - peak_epoch) / (EPOCHS - peak_epoch), 0, 1)
    return rise - drop + rng.normal(0, noise, E.size)


def seeds_of(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        acc = accuracy_curve(rng)
        out.append({
            "epoch": E, "generalization": acc, "generalization_ci95": np.full(E.size, 0.01),
            # tracks accuracy, in the rise and in the fall
            "trajectory_coherence": 0.1 * acc + rng.normal(0, 0.0004, E.size),
            # sharper up to epoch 3, then flatter every epoch, also past the accuracy peak
            "flatness": np.where(E <= 3, 5 + E, 8 * np.exp(-(E - 3) / 8))
            + rng.normal(0, .01, E.size),
            "support_loss": 0.06 * np.exp(-E / 6) + rng.normal(0, 1e-4, E.size),
            "gradient_coherence": rng.normal(1.0, 0.3, E.size),                 # pure noise
            "gradient_coherence_self": rng.normal(2.0, 0.3, E.size),
            "representation_coherence": 30 + 2 * E + rng.normal(0, 0.5, E.size),  # only trends
            "representation_spread": 5 + rng.normal(0, 0.1, E.size),
            "trajectory_norm": 1 + 0.02 * E + rng.normal(0, 1e-3, E.size),       # keeps growing
        })
    return out


def finetune_of(seed=1):
    """A baseline: low coherences, a trajectory norm that does not grow."""
    runs = seeds_of(seed=seed)
    rng = np.random.default_rng(seed + 100)
    for c in runs:
        c["trajectory_coherence"] = rng.normal(0, 1e-4, E.size)
        c["gradient_coherence"] = rng.normal(0.01, 0.002, E.size)
        c["trajectory_norm"] = 1 + rng.normal(0, 1e-3, E.size)
    return runs


def test_t_quantiles_match_numerical_integration_of_the_t_density():
    for df in (1, 2, 3, 5, 10, 30):
        x = np.linspace(0, 200 if df < 3 else 40, 2_000_001)
        pdf = (math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
               * (1 + x ** 2 / df) ** (-(df + 1) / 2))
        cdf = 0.5 + np.concatenate([[0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x))])
        assert stats.t975(df) == pytest.approx(np.interp(0.975, cdf, x), rel=2e-3)


def test_interval_is_the_t_interval():
    iv = stats.interval([1.0, 2.0, 3.0])
    assert (iv.mean, iv.low, iv.high) == pytest.approx((2, 2 - 4.303 / math.sqrt(3),
                                                       2 + 4.303 / math.sqrt(3)))
    assert math.isnan(stats.interval([1.0]).low)
    assert math.isnan(stats.interval([1.0, math.nan, 2.0]).low)


def test_side_within_and_combine():
    iv = lambda lo, hi: stats.Interval((lo + hi) / 2, lo, hi, [])  # noqa: E731
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
    p = V.peak(acc, np.full(E.size, 0.01), E)
    assert p.epoch in (11, 12, 13) and p.index == p.epoch and p.overfits and p.drop > 0.03
    assert not V.peak(acc, np.full(E.size, 0.05), E).overfits         # drop within the noise
    assert V.peak(acc, np.full(E.size, 0.03), E).overfits
    assert not V.peak(acc, np.full(E.size, 0.03), E, fall=2.0).overfits  # not twice the noise
    assert not V.peak(np.linspace(0.5, 0.6, E.size)).overfits         # still rising
    assert not V.peak(np.r_[np.linspace(0.5, 0.6, E.size - 2), 0.5, 0.5]).overfits  # too late


def draws(metric, n=300, target=accuracy_curve):
    """Verdicts of `V.tracking` over n experiments of 5 seeds; metric(rng, accuracy) -> curve."""
    rng = np.random.default_rng(11)
    counts = {V.REPRODUCED: 0, V.CONTRADICTED: 0, V.INCONCLUSIVE: 0}
    for _ in range(n):
        accs = [target(rng) for _ in range(5)]
        peaks = [V.peak(a, np.full(E.size, 0.01), E) for a in accs]
        counts[V.tracking([metric(rng, a) for a in accs], accs, peaks).verdict] += 1
    return counts


def trend(slope):
    return lambda rng, acc: slope * E + rng.normal(0, 1.0, E.size)


def test_tracking_needs_both_phases_so_a_trend_alone_decides_nothing():
    tracks = draws(lambda rng, acc: acc + rng.normal(0, 0.004, E.size))
    assert tracks[V.REPRODUCED] >= 295
    for slope in (1.0, -1.0):                      # rises, or falls, with the epoch only
        assert draws(trend(slope)) == {V.REPRODUCED: 0, V.CONTRADICTED: 0, V.INCONCLUSIVE: 300}
    noise = draws(lambda rng, acc: rng.normal(size=E.size))
    assert noise[V.REPRODUCED] == 0
    anti = draws(lambda rng, acc: -acc + rng.normal(0, 0.004, E.size))
    assert anti[V.CONTRADICTED] >= 295           # moves against accuracy in both phases


def test_the_old_rule_over_all_epochs_is_decided_by_the_trend():
    """What the phase rule replaces: rho(metric, accuracy) over all epochs. When accuracy peaks
    early and then falls for most of the run, it is about rho(metric, -epoch), so a metric that
    only rises with the epoch is called "contradicted" on "|rho| < 0.3" (the old C7)."""
    rng = np.random.default_rng(5)
    verdicts = []
    for _ in range(300):
        accs = [accuracy_curve(rng, peak_epoch=3, fall=0.25) for _ in range(5)]
        rho = stats.correlation_interval([V.rank_correlation(trend(1.0)(rng, a), a) for a in accs])
        verdicts.append(V.within(rho, V.CORRELATION))
    assert verdicts.count(V.CONTRADICTED) > 150


def test_without_a_fall_first_differences_decide_and_a_linear_trend_still_does_not():
    rising = lambda rng: 0.4 + 0.2 * (1 - np.exp(-E / 6)) + rng.normal(0, 0.003, E.size)  # noqa: E731
    follows = draws(lambda rng, acc: 3 * acc + rng.normal(0, 0.004, E.size), target=rising)
    assert follows[V.REPRODUCED] >= 290
    assert draws(trend(0.01), target=rising)[V.REPRODUCED] == 0
    assert draws(trend(0.01), target=rising)[V.CONTRADICTED] == 0
    rng = np.random.default_rng(0)
    accs = [rising(rng) for _ in range(5)]
    result = V.tracking([a for a in accs], accs, [V.peak(a, None, E) for a in accs])
    assert result.rule == V.DIFFERENCES and result.differences.low > 0.9


def test_the_claims_on_curves_of_known_shape():
    rows = {r["id"]: r for r in J.judge(
        {"maml-t5": seeds_of(), "maml-t1": seeds_of(seed=4), "finetune": finetune_of(),
         "sine": seeds_of(seed=5)}, None, None, None)}
    assert rows["C1"]["verdict"] == V.REPRODUCED   # sharper to epoch 3, flatter after
    assert rows["C2"]["verdict"] == V.REPRODUCED   # flatter past the accuracy peak
    assert rows["C3"]["parts"][0].verdict == V.REPRODUCED
    assert "accuracy peak: epoch" in rows["C1"]["peaks"]
    c4 = rows["C4"]["parts"]
    assert c4[0].tracking.rule == V.PHASES and c4[0].verdict == V.REPRODUCED
    assert c4[1].verdict == V.REPRODUCED and rows["C4"]["verdict"] == V.REPRODUCED
    c5 = rows["C5"]["parts"]
    assert c5[0].verdict != V.REPRODUCED           # gradient coherence is noise here
    assert not c5[1].counts                        # the self-pair variant is reported only
    c7 = rows["C7"]["parts"]
    assert [p.verdict for p in c7] == [V.REPRODUCED] * 3 and rows["C7"]["verdict"] == V.REPRODUCED
    assert rows["C6"]["verdict"].startswith("pending")


def test_representation_coherence_that_only_trends_is_neither_and_pools_decide_the_rest():
    pools = [{"pool": ["a", "b", "c", "d"], "generalization": np.array([.5, .6, .7, .8]),
              "representation_coherence": np.array([1.0, 2.0, 3.0, 4.0]) + s}
             for s in range(3)]
    c6 = {r["id"]: r for r in J.judge({"maml-t5": seeds_of()}, pools, None, None)}["C6"]
    assert c6["parts"][0].verdict == V.INCONCLUSIVE
    assert c6["parts"][1].verdict == V.REPRODUCED and c6["verdict"] == V.INCONCLUSIVE


def test_the_regularizer_verdict_is_the_paired_difference():
    maml = [0.730, 0.745, 0.731, 0.738, 0.742]
    better = {r["id"]: r for r in J.judge({}, None, None, {
        "maml": maml, "maml-reg": [m + d for m, d in zip(maml, (.014, .016, .013, .017, .015))]})}
    assert better["R"]["verdict"] == V.REPRODUCED
    assert better["R"]["parts"][0].value.mean == pytest.approx(1.5, abs=1e-9)
    same = {r["id"]: r for r in J.judge({}, None, None, {
        "maml": maml, "maml-reg": [m + d for m, d in zip(maml, (.01, -.012, .004, -.003, .0))]})}
    assert same["R"]["verdict"] == V.INCONCLUSIVE
    text = "\n".join(write.regularizer_section(
        {"maml": maml, "maml-reg": [m + .015 for m in maml]}))
    assert "relative reduction of the error" in text


def test_the_pilot_picks_the_largest_pool_in_the_regime():
    rng = np.random.default_rng(2)
    config = plan.ClaimsConfig()
    late = {"epoch": E, "generalization": accuracy_curve(rng, peak_epoch=12),
            "generalization_ci95": np.full(E.size, 0.01)}
    early = {**late, "generalization": accuracy_curve(rng, peak_epoch=3)}
    flat = {**late, "generalization": 0.5 + 0.1 * (1 - np.exp(-E / 4))
            + rng.normal(0, 0.002, E.size)}
    runs = {"maml": {"c3x6": early, "c4x8": late, "c6x10": late, "c12x12": flat}}
    rows = J.pilot_table(runs, config)
    assert [r["regime"] for r in rows] == [False, True, True, False]
    assert not rows[0]["rises"] and not rows[3]["falls"]
    assert J.select_pool(rows, "maml", config.pools) == {"pool": [6, 10], "name": "c6x10",
                                                         "regime": True}
    none = J.pilot_table({"maml": {"c3x6": early, "c12x12": flat}}, config)
    assert J.select_pool(none, "maml", config.pools)["name"] == "c3x6"   # falls, at least


def test_missing_runs_leave_claims_pending_and_the_table_says_so():
    rows = J.judge({}, None, None, None)
    assert [r["id"] for r in rows] == list(lc.CLAIMS)
    assert all(r["verdict"].startswith("pending") for r in rows)
    md = write.format_markdown(rows, lc.ClaimsConfig(data_dir="x"), "0 of 1 runs finished.")
    assert md.count("pending") >= len(lc.CLAIMS)


def test_plan_keeps_the_protocol_and_checks_the_pools():
    config = lc.ClaimsConfig(data_dir="/d")
    specs = plan.every_run(config, 242, [6, 10])
    t5 = next(s for s in specs if s.name == "maml-t5-s0")
    assert {"adapt.lr=0.1", "adapt.steps=5", "adapt.test_steps=5", "train.meta_lr=0.001",
            "data.omniglot.holdout=236", "data.omniglot.train_drawings=10",
            "landscape.flatness_tasks=60", "landscape.coherence_tasks=500", "landscape.every=1",
            "train.eval_at_start=true", "adapt.first_order=false"} <= set(t5.overrides)
    t1 = next(s for s in specs if s.name == "maml-t1-s2")
    assert {"adapt.steps=1", "adapt.test_steps=1", "train.seed=2"} <= set(t1.overrides)
    pilot = [s for s in specs if s.part == "pilot"]
    assert len(pilot) == 2 * 4 and all("landscape.every=0" in s.overrides for s in pilot)
    pools = [s for s in specs if s.part == "pools"]
    assert {s.seed for s in pools} == {1, 2} and len(pools) == 4 * 2
    reg = [s for s in specs if s.part == "regularizer"]
    assert {s.preset for s in reg} == {"omniglot_20w1s-cpu", "omniglot_20w1s_maml_reg-cpu"}
    assert len({s.name for s in specs}) == len(specs) == 8 + 4 * 5 + 8 + 6 * 5 + 10
    with pytest.raises(ConfigError, match=r"pools: \[242, 6\] .* between 1 and 241"):
        plan.check(lc.ClaimsConfig(pools=[[242, 6]]), 242)
    with pytest.raises(ConfigError, match="need 6 to 20"):
        plan.check(lc.ClaimsConfig(pools=[[3, 4]]), 242)
    with pytest.raises(ConfigError, match="seeds must be at least 2"):
        plan.check(lc.ClaimsConfig(seeds=1), 242)
    assert plan.parse_parts("pools,main") == ("main", "pools")
    with pytest.raises(ConfigError, match="--only takes"):
        plan.parse_parts("main,everything")


def test_an_out_directory_keeps_its_settings_but_may_gain_seeds(tmp_path):
    config = lc.ClaimsConfig(data_dir="/d", seeds=3)
    lc._check_plan(config, tmp_path)
    lc._check_plan(lc.dataclasses.replace(config, seeds=5, jobs=1), tmp_path)
    with pytest.raises(ConfigError, match=rf"other settings \(epochs: {config.epochs} there, "
                                          rf"{config.epochs + 6} now\)"):
        lc._check_plan(lc.dataclasses.replace(config, epochs=config.epochs + 6), tmp_path)


def test_bad_experiment_settings_are_user_errors(tmp_path, omniglot_dir):
    with pytest.raises(ConfigError, match="seeds must be at least 2"):
        lc.run(lc.ClaimsConfig(data_dir=str(omniglot_dir), seeds=1), tmp_path / "out")
    with pytest.raises(ConfigError, match="Omniglot data directory is not set"):
        lc.run(lc.ClaimsConfig(), tmp_path / "out")


def test_an_unknown_finetune_head_is_a_user_error():
    from tfmeta import config as config_lib
    with pytest.raises(lc.ConfigError, match="algorithms.finetune.head.*per_task or shared"):
        config_lib.load("sine", ["algorithms.finetune.head=random"])
