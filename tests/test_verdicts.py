"""The verdict rules of `tfmeta experiment landscape-claims`, on synthetic curves whose answer is
known: a metric built to track accuracy, one that only trends with the epoch, pure noise, and the
shapes each claim describes."""

import math

import numpy as np
import pytest

from tfmeta import power, stats, verdicts as V
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


def per_task_of(rng, truth, tasks=300, task_sd=0.12, epoch_sd=0.02):
    """Per-task values [epochs, tasks] around a true curve: each task's own difficulty, the same
    at every epoch, and what changes from epoch to epoch."""
    return (truth[:, None] + rng.normal(0, task_sd, tasks)[None, :]
            + rng.normal(0, epoch_sd, (truth.size, tasks)))


def seeds_of(n=5, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tasks = per_task_of(rng, accuracy_curve(rng, noise=0.0))
        acc = tasks.mean(axis=1)
        out.append({
            "epoch": E, "generalization": acc, "generalization_ci95": np.full(E.size, 0.01),
            "per_task": tasks,
            # tracks accuracy, in the rise and in the fall
            "trajectory_coherence": 0.1 * acc + rng.normal(0, 0.0004, E.size),
            # sharper up to epoch 3, then flatter every epoch, also past the accuracy peak
            "flatness": np.where(E <= 3, 5 + E, 8 * np.exp(-(E - 3) / 8))
            + rng.normal(0, .01, E.size),
            "support_loss": 0.06 * np.exp(-E / 6) + rng.normal(0, 1e-4, E.size),
            "gradient_coherence": rng.normal(1.0, 0.3, E.size),                 # pure noise
            "gradient_coherence_self": rng.normal(2.0, 0.3, E.size),
            "representation_coherence": 30 + 2 * E + rng.normal(0, 0.5, E.size),  # only trends
            "representation_coherence_normalized": 3 + 2 * E + rng.normal(0, 0.5, E.size),
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


def test_the_split_half_rule_finds_a_real_fall_and_not_the_maximum_of_noise():
    rng = np.random.default_rng(0)
    fall = V.meta_overfitting(per_task_of(rng, accuracy_curve(rng, fall=0.06, noise=0)), E)
    assert fall.epoch in (11, 12, 13) and fall.index == fall.epoch and fall.overfits
    assert fall.drop.low > 0.03
    rising = V.meta_overfitting(per_task_of(rng, np.linspace(0.5, 0.6, E.size)), E)
    late = V.meta_overfitting(per_task_of(rng, np.r_[np.linspace(0.5, 0.6, E.size - 2),
                                                     0.55, 0.55]), E)
    assert not rising.overfits and not late.overfits   # no peak with 3 epochs after it
    # A plateau: the peak of 25 noisy means is above their last 3 by chance. Chosen on the
    # tasks that measure the fall (the old rule: a drop beyond 1 half-width) it passes often;
    # chosen on the other half, about as often as a 95% interval misses (2.5%).
    old, new = 0, 0
    for _ in range(200):
        tasks = per_task_of(rng, np.full(E.size, 0.6), epoch_sd=0.133, task_sd=0.0)
        means = tasks.mean(axis=1)
        half_width = 1.96 * 0.133 / np.sqrt(tasks.shape[1])
        old += means.max() - means[-3:].mean() > half_width
        new += V.meta_overfitting(tasks, E).overfits
    assert old > 60 and new <= 12
    assert not V.setting_overfits([fall] * 3 + [rising] * 2) and V.setting_overfits(
        [fall] * 4 + [rising])
    assert not V.meta_overfitting(np.full((E.size, 10), np.nan)).overfits   # no per-task record


# The experiment's noise, measured (benchmarks/claims_noise.py: MAML T = 5 on pool c6x10, 300
# tasks, epochs 5-10): a task's difficulty, the same at every epoch, and its change from epoch to
# epoch; one epoch's mean has a standard error of 0.0080.
NOISE = power.Noise(tasks=300, task_sd=0.129, epoch_sd=0.052)


@pytest.mark.parametrize("design", [power.Design(fall=0.031, seeds=8),
                                    power.Design(fall=0.031, epochs=40, peak_epoch=20)])
def test_the_rules_have_the_power_asked_at_the_experiments_noise(design):
    """A fall of 2 half-widths (2 x 1.96 x 0.0080) over 8 seeds of 30 epochs, or 5 seeds of 40:
    a true tracker is reproduced, anything else is not and is contradicted, and a plateau does
    not pass for meta-overfitting. (5 seeds of 30 epochs leave pure noise contradicted in 77%.)"""
    assert NOISE.standard_error == pytest.approx(0.0080, abs=1e-4)
    rates = power.power(NOISE, design, trials=200)
    assert rates["overfits"] >= 0.8 and rates["plateau_overfits"] <= 0.05
    assert rates["tracker_reproduced"] >= 0.8
    for metric in ("noise", "linear", "saturating"):
        assert rates[f"{metric}_reproduced"] <= 0.02
        assert rates[f"{metric}_contradicted"] >= 0.8


def test_claims_md_reports_the_power_at_the_settings_own_noise():
    found = J.power_at(seeds_of(), trials=50)
    assert found["noise"].tasks == 300
    assert found["noise"].task_sd == pytest.approx(0.12, rel=0.1)
    assert found["noise"].epoch_sd == pytest.approx(0.02, rel=0.1)
    assert found["design"].seeds == 5 and found["design"].epochs == EPOCHS
    assert found["design"].peak_epoch in (11, 12, 13)
    assert found["design"].fall == pytest.approx(0.06 * 11 / 12, abs=0.01)
    assert found["rates"]["tracker_reproduced"] >= 0.8
    text = "\n".join(write.power_section("MAML, T = 5", found))
    # 5 seeds of 24 epochs: pure noise is contradicted in about half the settings only.
    assert found["rates"]["noise_contradicted"] < 0.8
    assert "a fall of 0.05" in text and "they do not here" in text
    assert J.power_at([{**c, "per_task": np.full((E.size, 300), np.nan)} for c in seeds_of()]) \
        is None


def test_noise_of_measures_the_two_parts():
    rng = np.random.default_rng(3)
    measured = power.noise_of(per_task_of(rng, accuracy_curve(rng, noise=0), tasks=2000,
                                          task_sd=0.12, epoch_sd=0.05))
    assert measured.tasks == 2000
    assert measured.task_sd == pytest.approx(0.12, rel=0.05)
    assert measured.epoch_sd == pytest.approx(0.05, rel=0.02)


def test_tracking_is_a_conjunction_that_either_phase_contradicts():
    rng = np.random.default_rng(11)
    seeds = seeds_of()
    falls = J.falls_of(seeds)
    accs = [c["generalization"] for c in seeds]
    tracker = V.tracking([a + rng.normal(0, 1e-4, E.size) for a in accs], accs, falls)
    assert (tracker.rise_verdict, tracker.fall_verdict, tracker.verdict) == (V.REPRODUCED,) * 3
    rising = V.tracking([E + rng.normal(0, 0.01, E.size) for _ in accs], accs, falls)
    assert rising.rise_verdict == V.REPRODUCED and rising.fall_verdict == V.CONTRADICTED
    assert rising.verdict == V.CONTRADICTED   # keeps rising while accuracy really falls
    # Where the setting does not meta-overfit, the falling phase is untestable, and a trend
    # cannot decide the claim through it.
    flat = [{**c, "per_task": per_task_of(rng, np.full(E.size, 0.6))} for c in seeds]
    untested = V.tracking([E for _ in accs], [c["per_task"].mean(axis=1) for c in flat],
                          J.falls_of(flat))
    assert untested.fall_verdict == V.UNTESTABLE and untested.verdict != V.REPRODUCED
    assert V.combine([V.REPRODUCED, V.UNTESTABLE]) == V.UNTESTABLE
    assert V.combine([V.CONTRADICTED, V.UNTESTABLE]) == V.CONTRADICTED


def test_the_old_rule_over_all_epochs_is_decided_by_the_trend():
    """What the phase rule replaces: rho(metric, accuracy) over all epochs. When accuracy peaks
    early and then falls for most of the run, it is about rho(metric, -epoch), so a metric that
    only rises with the epoch is called "contradicted" on "|rho| < 0.3" (the old C7)."""
    rng = np.random.default_rng(5)
    verdicts = []
    for _ in range(300):
        accs = [accuracy_curve(rng, peak_epoch=3, fall=0.25) for _ in range(5)]
        rho = stats.correlation_interval([V.rank_correlation(E + rng.normal(0, 1.0, E.size), a)
                                          for a in accs])
        verdicts.append(V.within(rho, V.CORRELATION))
    assert verdicts.count(V.CONTRADICTED) > 150


def test_the_claims_on_curves_of_known_shape():
    rows = {r["id"]: r for r in J.judge(
        {"maml-t5": seeds_of(), "maml-t1": seeds_of(seed=4), "finetune": finetune_of(),
         "sine": seeds_of(seed=5)}, None, None, None)}
    assert rows["C1"]["verdict"] == V.REPRODUCED   # sharper to epoch 3, flatter after
    assert rows["C2"]["verdict"] == V.REPRODUCED   # flatter past the accuracy peak
    assert rows["C3"]["parts"][0].verdict == V.REPRODUCED
    assert "accuracy peak: epoch" in rows["C1"]["peaks"]
    c4 = rows["C4"]["parts"]
    assert c4[0].tracking.fall_verdict == V.REPRODUCED and c4[0].verdict == V.REPRODUCED
    assert c4[1].verdict == V.REPRODUCED and rows["C4"]["verdict"] == V.REPRODUCED
    c5 = rows["C5"]["parts"]
    assert c5[0].verdict != V.REPRODUCED           # gradient coherence is noise here
    assert not c5[1].counts                        # the self-pair variant is reported only
    c7 = rows["C7"]["parts"]
    assert [p.verdict for p in c7 if p.counts] == [V.REPRODUCED] * 3
    assert c7[0].value.mean == pytest.approx(0.46, abs=0.01)   # MAML's norm: +46%
    assert abs(c7[1].value.mean) < 0.01 and rows["C7"]["verdict"] == V.REPRODUCED
    assert rows["C6"]["verdict"].startswith("pending")


def test_representation_coherence_that_keeps_rising_while_accuracy_falls_is_contradicted():
    pools = [{"pool": ["a", "b", "c", "d"], "generalization": np.array([.5, .6, .7, .8]),
              "representation_coherence_normalized": np.array([1.0, 2.0, 3.0, 4.0]) + s}
             for s in range(3)]
    c6 = {r["id"]: r for r in J.judge({"maml-t5": seeds_of()}, pools, None, None)}["C6"]
    assert c6["parts"][0].tracking.rise_verdict == V.REPRODUCED
    assert c6["parts"][0].verdict == V.CONTRADICTED   # its falling phase
    assert not c6["parts"][1].counts   # the paper's, set by gamma and beta: reported only
    assert c6["parts"][2].verdict == V.REPRODUCED and c6["verdict"] == V.CONTRADICTED


def test_c8_is_judged_within_each_k_where_k_cannot_decide_it():
    """Coherence and -MSE both rising with k pass the across-k statement whatever their relation;
    within each k, across seeds, only a real relation passes."""
    rng = np.random.default_rng(7)
    k = np.array([2, 3, 5, 10, 15], dtype=float)

    def sweep(related):
        seeds = []
        for _ in range(5):
            skill = rng.normal(0, 1, k.size)               # this seed's luck at each k
            mse = 1 / k - 0.01 * skill                     # luck lowers the error
            coherence = np.log(k) + (0.1 * skill if related else rng.normal(0, 0.1, k.size))
            seeds.append({"k": k, "generalization": -mse, "gradient_coherence": coherence})
        return seeds
    confounded = {r["id"]: r for r in J.judge({}, None, sweep(False), None)}["C8"]
    assert confounded["parts"][1].verdict == V.REPRODUCED and not confounded["parts"][1].counts
    assert confounded["verdict"] != V.REPRODUCED
    related = {r["id"]: r for r in J.judge({}, None, sweep(True), None)}["C8"]
    assert related["verdict"] == V.REPRODUCED


def test_pools_at_the_same_meta_steps_undo_the_peak_epoch_confound():
    """Pools that reach a higher accuracy peak later; the metric only grows with training. At each
    pool's peak it ranks the pools perfectly, at the same meta-steps it does not."""
    rng = np.random.default_rng(3)
    peaks, best = np.array([8, 12, 28, 30]), np.array([0.55, 0.58, 0.66, 0.70])
    metric = lambda epoch: 2.0 * epoch + rng.normal(0, 0.5, np.size(epoch))  # noqa: E731
    pools = []
    for _ in range(3):
        at = {}
        for steps, epoch in ((250, 10), (500, 20), (750, 30)):
            accuracy = best - 0.01 * np.abs(peaks - epoch) + rng.normal(0, 0.01, 4)
            at[steps] = {"generalization": accuracy,
                         "representation_coherence_normalized": metric(np.full(4, epoch))}
        pools.append({"pool": ["c3x6", "c4x8", "c6x10", "c12x12"], "epoch": peaks,
                      "generalization": best, "representation_coherence_normalized":
                      metric(peaks), "at_steps": at})
    key = ["representation_coherence_normalized"]
    assert J.across_pools(pools, key)[key[0]].low > 0.9
    fixed = J.across_pools_at_steps(pools, key)
    assert sorted(fixed) == [250, 500, 750] and all(fixed[n][key[0]].low < 0.3 for n in fixed)
    text = "\n".join(write.pools_section(J.across_pools(pools, key), pools, None, fixed))
    assert "| at 250 meta-steps | at 500 meta-steps | at 750 meta-steps |" in text
    assert "holds at 0 of the 3 fixed points: at the peaks it rests on when each pool peaks" in text


def test_the_regularizer_verdict_is_the_paired_difference_at_the_end():
    """Curves of held-out accuracy after each of 3 epochs per seed; the verdict reads the last,
    the section gives the gap along training, MAML's last rise, and each unit beside the
    paper's."""
    maml = np.array([0.730, 0.745, 0.731, 0.738, 0.742])
    curves = lambda final, rise: [np.array([f - 2 * rise, f - rise, f]) for f in final]  # noqa: E731
    better = {r["id"]: r for r in J.judge({}, None, None, {
        "maml": curves(maml, 0.01),
        "maml-reg": curves(maml + np.array([.014, .016, .013, .017, .015]), 0.01)})}
    assert better["R"]["verdict"] == V.REPRODUCED
    assert better["R"]["parts"][0].value.mean == pytest.approx(1.5, abs=1e-9)
    same = {r["id"]: r for r in J.judge({}, None, None, {
        "maml": curves(maml, 0.0),
        "maml-reg": curves(maml + np.array([.01, -.012, .004, -.003, .0]), 0.0)})}
    assert same["R"]["verdict"] == V.INCONCLUSIVE
    assert same["R"]["parts"][0].lean == "leans toward contradicted"   # -0.02 points on average
    assert "inconclusive (leans toward contradicted)" in "\n".join(write.verdict_table(
        [r for r in J.judge({}, None, None, {"maml": curves(maml, 0.0), "maml-reg": curves(
            maml + np.array([.01, -.012, .004, -.003, .0]), 0.0)}) if r["id"] == "R"]))
    text = "\n".join(write.regularizer_section(
        {"maml": curves(maml, 0.01),
         "maml-reg": curves(maml + np.array([.012, .015, .013, .014, .0125]), 0.01)}, 1000))
    assert "| 3,000 | 73.72% | 75.05% | 1.33 [1.18, 1.48] |" in text
    assert "changed its accuracy by 1.00 [1.00, 1.00] points: still rising" in text
    assert "Absolute effect: 1.33 [1.18, 1.48] points, which includes the paper's 1.33" in text
    assert "Relative reduction of the error" in text and "excludes the paper's 22.35" in text
    flat = "\n".join(write.regularizer_section(
        {"maml": [c + np.array([0, 0, d]) for c, d in zip(curves(maml, 0.0),
                                                          (.001, -.002, .0, .002, -.001))],
         "maml-reg": curves(maml, 0.0)}))
    assert "no longer rising clearly" in flat


def test_the_pilot_picks_the_largest_pool_in_the_regime():
    rng = np.random.default_rng(2)
    config = plan.ClaimsConfig()
    curve = lambda truth: {"epoch": E, "per_task": per_task_of(rng, truth)}  # noqa: E731
    late = curve(accuracy_curve(rng, peak_epoch=12, noise=0))
    early = curve(accuracy_curve(rng, peak_epoch=3, noise=0))
    flat = curve(0.5 + 0.1 * (1 - np.exp(-E / 4)))
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
    assert len(pilot) == 3 * 4 and all("landscape.every=0" in s.overrides for s in pilot)
    assert sum("adapt.steps=1" in s.overrides for s in pilot) == 4   # C5's own pool, at T = 1
    pools = [s for s in specs if s.part == "pools"]
    assert {s.seed for s in pools} == {1, 2} and len(pools) == 4 * 2
    assert all(s.at_epochs == (10, 20, 30) for s in pools)   # 250, 500, 750 meta-steps
    assert [s.at_epochs for s in pilot if s.at_peak] == [(10, 20, 30)] * 4
    with pytest.raises(ConfigError, match=r"pool_steps: 260 must be a multiple of iterations"):
        plan.check(lc.ClaimsConfig(pool_steps=[260]), 242)
    reg = [s for s in specs if s.part == "regularizer"]
    assert {s.preset for s in reg} == {"omniglot_20w1s-cpu", "omniglot_20w1s_maml_reg-cpu"}
    assert len({s.name for s in specs}) == len(specs) == 12 + 4 * 8 + 8 + 6 * 8 + 10
    on_t1_pool = plan.every_run(config, 242, [6, 10], ("main",), t1_pool=[3, 6])
    t1_runs = [s for s in on_t1_pool if s.setting == "maml-t1"]
    assert all("data.omniglot.train_drawings=6" in s.overrides for s in t1_runs)
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
