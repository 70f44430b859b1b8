"""The linear task family and the MAML-versus-NAL closed forms, against brute force and tfmeta."""

import dataclasses

import numpy as np
import pytest

from tfmeta.config.data import LinearTasksConfig
from tfmeta.experiments import task_landscape as tl
from tfmeta.tasks import linear

ALPHA = 0.8


def draw(tasks: LinearTasksConfig, shots: int, queries: int, n: int, seed: int = 0):
    """n episodes of the family as float64 numpy arrays: (xs [n, K, d], ys [n, K, 1], xq, yq)."""
    source = linear.task_source(tasks, shots, queries, "float64")
    batch = next(iter(source.episodes("train", seed, n, count=n)))
    return tuple(t.numpy() for t in batch)


def augment(x: np.ndarray) -> np.ndarray:
    """z = (x, 1): the linear model with a bias is linear in z."""
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], -1)


def second_moment(z: np.ndarray, y: np.ndarray) -> tuple:
    """mean z z^T [n, d+1, d+1] and mean z y [n, d+1] over each episode's examples."""
    k = z.shape[1]
    return np.einsum("nki,nkj->nij", z, z) / k, np.einsum("nki,nk->ni", z, y[..., 0]) / k


def brute_force_maml(episodes, alpha: float) -> np.ndarray:
    """The exact minimizer theta = (w, b) of the empirical one-step MAML objective,
    (1/n) sum_j mean_query (z^T theta'_j - y)^2 with theta'_j = theta - alpha/2 grad L(support_j)
    on tfmeta's MSE. theta'_j = M_j theta + a_j is affine: the objective is least squares."""
    xs, ys, xq, yq = episodes
    s_support, r_support = second_moment(augment(xs), ys)
    s_query, r_query = second_moment(augment(xq), yq)
    m = np.eye(s_support.shape[-1]) - alpha * s_support          # theta' = M theta + alpha r
    a = alpha * r_support
    lhs = np.einsum("nki,nkl,nlj->ij", m, s_query, m)
    rhs = np.einsum("nki,nk->i", m, r_query - np.einsum("nij,nj->ni", s_query, a))
    return np.linalg.solve(lhs, rhs)


def brute_force_nal(episodes) -> np.ndarray:
    """The exact minimizer theta = (w, b) of (1/n) sum_j L(support_j u query_j; theta)."""
    xs, ys, xq, yq = episodes
    s, r = second_moment(augment(np.concatenate([xs, xq], 1)), np.concatenate([ys, yq], 1))
    return np.linalg.solve(s.sum(0), r.sum(0))


def test_episodes_have_the_configured_shapes_covariances_and_optima():
    tasks = LinearTasksConfig(dim=3, hard_fraction=0.3, rho_easy=1.0, rho_hard=0.2,
                                     centre_distance=2.0, spread_easy=0.3, spread_hard=0.6,
                                     noise=0.05)
    xs, ys, xq, yq = draw(tasks, 40, 60, 3000)
    assert xs.shape == (3000, 40, 3) and ys.shape == (3000, 40, 1)
    assert xq.shape == (3000, 60, 3) and yq.shape == (3000, 60, 1)
    x, y = np.concatenate([xs, xq], 1), np.concatenate([ys, yq], 1)
    hard = (x**2).mean(axis=(1, 2)) < 0.6                      # 1.0 versus 0.2, 300 draws each
    assert hard.mean() == pytest.approx(0.3, abs=0.03)
    w = np.linalg.solve(np.einsum("nki,nkj->nij", x, x),
                        np.einsum("nki,nk->ni", x, y[..., 0])[..., None])[..., 0]
    for group, members in zip(linear.groups(tasks), (~hard, hard)):
        covariance = np.einsum("nki,nkj->ij", x[members], x[members]) / (members.sum() * 100)
        np.testing.assert_allclose(covariance, group.covariance, atol=0.03)
        np.testing.assert_allclose(w[members].mean(0), group.centre, atol=0.06)
        np.testing.assert_allclose(w[members].std(0), group.spread, rtol=0.1)
    residual = y[..., 0] - np.einsum("nki,ni->nk", x, w)
    assert residual.std() == pytest.approx(tasks.noise, rel=0.05)


def test_closed_forms_are_the_minimizers_of_the_sampled_objectives():
    """With K = 10 the K-shot correction shrinks w_MAML to less than half the population one; the
    closed form must track it (and the bias stay at 0) to within the Monte-Carlo error of 40,000
    episodes."""
    tasks = LinearTasksConfig(dim=3, rho_hard=0.25, centre_distance=2.0)
    episodes = draw(tasks, 10, 10, 40000)
    exact = tl.closed_form(tasks, ALPHA, shots=10)
    population = tl.closed_form(tasks, ALPHA)
    maml, nal = brute_force_maml(episodes, ALPHA), brute_force_nal(episodes)
    assert tl.relative_error(maml[:-1], exact["maml"]) < 0.02
    assert tl.relative_error(population["maml"], exact["maml"]) > 0.3
    assert tl.relative_error(nal[:-1], exact["nal"]) < 0.02
    assert abs(maml[-1]) < 0.02 and abs(nal[-1]) < 0.02


def test_expected_risk_is_the_mean_query_error_after_one_step():
    tasks = LinearTasksConfig(dim=3, rho_hard=0.25, centre_distance=2.0, noise=0.3)
    xs, ys, xq, yq = draw(tasks, 10, 50, 40000, seed=1)
    w = np.array([0.3, -0.2, 0.9])
    theta = np.append(w, 0.0)
    s, r = second_moment(augment(xs), ys)
    adapted = theta - ALPHA * (np.einsum("nij,j->ni", s, theta) - r)
    errors = ((np.einsum("nki,ni->nk", augment(xq), adapted) - yq[..., 0])**2).mean(1)
    measured = errors.mean() - tasks.noise**2
    easy, hard = linear.groups(tasks)
    expected = sum(g.probability * tl.expected_risk(w, g, ALPHA, tasks.noise, shots=10)
                   for g in (easy, hard))
    assert measured == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("ratio, distance", [(1.0, 0.0), (1.0, 3.0), (8.0, 0.0)])
def test_no_gain_without_both_a_hardness_discrepancy_and_a_centre_distance(ratio, distance):
    for spread in (0.0, 1.0):
        tasks = tl.at(LinearTasksConfig(), ratio, spread, distance)
        solutions = tl.closed_form(tasks, ALPHA)
        np.testing.assert_allclose(solutions["maml"], solutions["nal"], atol=1e-12)
        assert tl.score(tasks, ALPHA, solutions)["gain"] == pytest.approx(0.0, abs=1e-12)


def test_gain_where_the_paper_says_hard_tasks_packed_far_from_the_easy_ones():
    base = LinearTasksConfig()
    row = lambda ratio, spread, distance: tl.score(  # noqa: E731
        tl.at(base, ratio, spread, distance), ALPHA,
        tl.closed_form(tl.at(base, ratio, spread, distance), ALPHA))
    packed_far = row(4.0, 0.0, 4.0)
    assert packed_far["gain"] > 0.5 and packed_far["ratio"] > 2.5
    assert packed_far["gain_hard"] > 0 > packed_far["gain_easy"]      # MAML favours the hard tasks
    ratios = [row(4.0, s, 2.0)["ratio"] for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a > b for a, b in zip(ratios, ratios[1:]))              # packed hard tasks gain most
    assert row(4.0, 0.5, 4.0)["gain"] == pytest.approx(4 * row(4.0, 0.5, 2.0)["gain"])  # ∝ D^2
    assert all(r["gain"] >= -1e-12 for r in tl.sweep(tl.TaskLandscapeConfig()))


@pytest.mark.trains
def test_meta_trained_tfmeta_models_reach_the_closed_forms():
    # Mostly hard tasks and small spreads: w_NAL is far from 0 and the task-sampling noise small,
    # so 40,000 training tasks pin both solutions to about 1%.
    tasks = LinearTasksConfig(hard_fraction=0.8, rho_hard=0.25, spread_easy=0.25,
                                     spread_hard=0.25)
    check = tl.CheckConfig(shots=100, queries=100, meta_batch=50, iterations=800, meta_lr=0.02,
                           eval_tasks=2000)
    row = tl.trained_check(tasks, ALPHA, check)
    assert row["maml_error"] < 0.05 and row["nal_error"] < 0.05
    solutions = tl.closed_form(tasks, ALPHA, check.shots)
    assert tl.relative_error(solutions["nal"], solutions["maml"]) > 0.4  # the check discriminates
    assert abs(row["bias_maml"]) < 0.03 and abs(row["bias_nal"]) < 0.03
    assert abs(row["gain_measured"] - row["gain"]) < 2 * row["gain_ci95"]


@pytest.mark.trains
def test_quick_run_writes_the_tables_and_the_figure(tmp_path):
    check = tl.CheckConfig(shots=20, queries=20, meta_batch=10, iterations=20, eval_tasks=50,
                           eval_batch=50)
    config = tl.TaskLandscapeConfig(check=dataclasses.replace(check))
    result = tl.run(config, tmp_path, quick=True)
    assert len(result["rows"]) == 5 * 5 + 5 and len(result["trained"]) == 1
    table = (tmp_path / "table.md").read_text()
    assert "## Gain" in table and "## Meta-trained check" in table
    assert len((tmp_path / "table.csv").read_text().splitlines()) == 31
    assert (tmp_path / "trained.csv").is_file()
    assert (tmp_path / "task_landscape.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert config.check == check                         # quick checks a copy of the config


@pytest.mark.parametrize("field, value", [("alpha", 0.0), ("spreads", [-1.0]), ("ratios", [])])
def test_out_of_range_configs_are_user_errors(tmp_path, field, value):
    from tfmeta.errors import ConfigError
    with pytest.raises(ConfigError, match=field):
        tl.run(dataclasses.replace(tl.TaskLandscapeConfig(), **{field: value}), tmp_path)
    assert not any(tmp_path.iterdir())
