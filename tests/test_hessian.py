"""Hessian-vector products and the Hessian spectrum against independent truth.

HVPs are checked against central finite differences of the gradient, which would catch second
derivatives that are wrong in both autodiff modes alike (stock BatchNorm's, see test_maml.py), and
against the exact Hessian that `tape.jacobian` builds. The spectral routines are checked against
numpy's eigvalsh of that Hessian, and of quadratics whose spectrum is chosen.
"""

from typing import Callable, NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import image_episode, params_of, random_direction, sine_episode, tiny_mlp
from tfmeta import hessian, models
from tfmeta.losses import task_loss


class Problem(NamedTuple):
    """A loss, the point where its Hessian is taken, and that Hessian built exactly."""
    loss_fn: Callable
    params: list
    matrix: np.ndarray

    @property
    def dim(self) -> int:
        return self.matrix.shape[0]

    @property
    def eigenvalues(self) -> np.ndarray:
        return np.linalg.eigvalsh(self.matrix)

    def matvec(self, mode: str = "forward"):
        return hessian.hvp_matvec(self.loss_fn, self.params, mode)


def gradient(loss_fn, params) -> list:
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = loss_fn(params)
    return tape.gradient(loss, params)


def flat(tensors) -> np.ndarray:
    return np.concatenate([t.numpy().ravel() for t in tensors])


def exact_hessian(loss_fn, params) -> np.ndarray:
    with tf.GradientTape() as tape:
        tape.watch(params)
        grads = tf.concat([tf.reshape(g, [-1]) for g in gradient(loss_fn, params)], axis=0)
    rows = grads.shape[0]
    return np.concatenate([j.numpy().reshape(rows, -1) for j in tape.jacobian(grads, params)], 1)


def quadratic(eigenvalues, seed: int = 0, rotate: bool = True) -> Problem:
    """0.5 x^T A x with A = Q diag(eigenvalues) Q^T (Q a random rotation, or I)."""
    rng = np.random.default_rng(seed)
    n = len(eigenvalues)
    q = np.linalg.qr(rng.standard_normal((n, n)))[0] if rotate else np.eye(n)
    a = q @ np.diag(eigenvalues) @ q.T
    matrix = tf.constant(a)
    loss_fn = lambda p: 0.5 * tf.reduce_sum(p[0] * tf.linalg.matvec(matrix, p[0]))  # noqa: E731
    return Problem(loss_fn, [tf.constant(rng.standard_normal(n))], a)


@pytest.fixture(scope="module")
def mlp() -> Problem:
    """The tanh MLP's support loss at initialisation: far from a minimum, with an indefinite
    Hessian whose largest-magnitude eigenvalue is negative."""
    model, episode = tiny_mlp(), sine_episode()
    loss_fn = lambda p: task_loss(model, p, *episode.support)  # noqa: E731
    params = params_of(model)
    return Problem(loss_fn, params, exact_hessian(loss_fn, params))


def relative_error(estimate, truth) -> float:
    return float(np.linalg.norm(np.asarray(estimate) - truth) / np.linalg.norm(truth))


def gradient_differences(loss_fn, params, v, eps: float) -> np.ndarray:
    """(grad L(theta + eps v) - grad L(theta - eps v)) / (2 eps): H v without second derivatives."""
    plus = gradient(loss_fn, [p + eps * d for p, d in zip(params, v)])
    minus = gradient(loss_fn, [p - eps * d for p, d in zip(params, v)])
    return (flat(plus) - flat(minus)) / (2 * eps)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_hvp_matches_the_exact_hessian_and_finite_differences(mlp, mode):
    v = random_direction(mlp.params, seed=1)
    hv = hessian.hvp(mlp.loss_fn, mlp.params, v, mode)
    assert [t.shape for t in hv] == [p.shape for p in mlp.params]
    exact = mlp.matrix @ flat(v)
    assert relative_error(flat(hv), exact) < 1e-12
    assert relative_error(flat(hv), gradient_differences(mlp.loss_fn, mlp.params, v, 1e-5)) < 1e-7
    # The matvec serves flat vectors, and in reverse mode reuses one recorded gradient: every
    # product must still be exact.
    matvec = mlp.matvec(mode)
    for seed in (2, 3):
        u = flat(random_direction(mlp.params, seed))
        assert relative_error(matvec(tf.constant(u)).numpy(), mlp.matrix @ u) < 1e-12


def conv4_hvp_errors(mode: str, norm_layer=models.BatchNorm) -> list:
    """Relative errors of H v against gradient differences on a float64 conv4, for 2 directions;
    float64 and eps 1e-8, because a larger step crosses ReLU and max-pool kinks, where
    the loss is not differentiable."""
    tf.keras.utils.set_random_seed(0)
    model = models.conv4(5, (16, 16, 1), filters=4, dtype="float64", norm_layer=norm_layer)
    episode = image_episode()
    loss_fn = lambda p: task_loss(model, p, *episode.support)  # noqa: E731
    params = params_of(model)
    errors = []
    for seed in range(2):
        v = random_direction(params, seed)
        hv = flat(hessian.hvp(loss_fn, params, v, mode))
        errors.append(relative_error(hv, gradient_differences(loss_fn, params, v, 1e-8)))
    return errors


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_hvp_through_conv4_with_batch_norm_matches_finite_differences(mode):
    assert max(conv4_hvp_errors(mode)) < 1e-5


def test_stock_batch_norm_fails_the_same_check():
    """Keras' BatchNormalization stops the gradient through the mean in its variance."""
    stock = lambda **kw: keras.layers.BatchNormalization(epsilon=1e-5, **kw)  # noqa: E731
    assert min(conv4_hvp_errors("forward", stock)) > 1e-2


def test_flatten_and_unflatten_are_inverse(mlp):
    vector = hessian.flatten(mlp.params)
    assert vector.shape == [mlp.dim]
    for back, p in zip(hessian.unflatten(vector, mlp.params), mlp.params):
        np.testing.assert_array_equal(back.numpy(), p.numpy())


def test_power_iteration_keeps_the_sign_of_a_negative_dominant_eigenvalue():
    problem = quadratic([-5.0, 3.0, 1.0, 0.5, 0.2, -0.1, -1.0, 2.0])
    matvec, dim = problem.matvec(), problem.dim
    value, iterations = tf.function(lambda: hessian.power_iteration(
        matvec, dim, tf.float64, 0, max_iters=200, tol=1e-10))()
    assert abs(float(value) + 5.0) < 1e-8 and int(iterations) < 200
    for method in ("power", "lanczos"):
        norm = tf.function(lambda: hessian.spectral_norm(
            matvec, dim, tf.float64, 0, method, max_iters=200, tol=1e-10))()
        assert abs(float(norm.value) - 5.0) < 1e-8


def test_power_and_lanczos_on_a_real_model_at_a_non_minimum(mlp):
    eigenvalues = mlp.eigenvalues
    dominant = eigenvalues[np.argmax(np.abs(eigenvalues))]
    assert dominant < 0 and eigenvalues[-1] > 0  # the case the sign handling is for
    matvec, dim = mlp.matvec(), mlp.dim

    @tf.function
    def estimates(tol):
        return (hessian.power_iteration(matvec, dim, tf.float64, 0, max_iters=500, tol=tol),
                hessian.spectral_norm(matvec, dim, tf.float64, 0, "power", 500, tol),
                hessian.spectral_norm(matvec, dim, tf.float64, 0, "lanczos", 500, tol))

    # |lambda_2 / lambda_1| is 0.96 here: power iteration needs a tight tol to be accurate.
    signed, _, _ = estimates(1e-6)
    assert abs(float(signed.value) / dominant - 1) < 1e-4 and int(signed.iterations) < 500
    signed, power, krylov = estimates(1e-4)
    assert float(power.value) == abs(float(signed.value))
    assert abs(float(krylov.value) / abs(dominant) - 1) < 1e-4
    assert int(krylov.iterations) < int(power.iterations) / 3
    capped = tf.function(lambda: [hessian.spectral_norm(matvec, dim, tf.float64, 0, method, 5, 0.0)
                                  for method in ("power", "lanczos")])()
    assert [int(r.iterations) for r in capped] == [5, 5]


def tridiagonal_eigenvalues(alphas, betas) -> np.ndarray:
    return np.linalg.eigvalsh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))


def test_lanczos_run_to_full_dimension_reproduces_the_spectrum():
    problem = quadratic(np.linspace(-3.0, 7.0, 30), seed=1)
    alphas, betas = tf.function(lambda: hessian.lanczos(
        problem.matvec(), problem.dim, tf.float64, 0, iters=40))()
    assert alphas.shape == [30] and betas.shape == [29]
    np.testing.assert_allclose(tridiagonal_eigenvalues(alphas, betas), problem.eigenvalues,
                               atol=1e-12)


def test_lanczos_on_a_real_model_finds_every_eigenvalue(mlp):
    """Its Hessian has a cluster of eigenvalues at rounding level (|lambda| < 1e-5), which the
    Krylov space exhausts as a breakdown; everything above is found to rounding accuracy."""
    alphas, betas = tf.function(lambda: hessian.lanczos(
        mlp.matvec(), mlp.dim, tf.float64, 0, iters=mlp.dim))()
    ritz, eigenvalues = tridiagonal_eigenvalues(alphas, betas), mlp.eigenvalues
    assert len(ritz) <= mlp.dim
    scale = np.abs(eigenvalues).max()
    assert max(np.abs(eigenvalues - r).min() for r in ritz) < 1e-7 * scale
    assert max(np.abs(ritz - e).min() for e in eigenvalues if abs(e) > 1e-6 * scale) < 1e-10


def test_lanczos_stops_when_the_krylov_space_is_invariant():
    """A diagonal H with 3 distinct eigenvalues: the Krylov space is exhausted after 3 steps."""
    diagonal = [2.0, 2.0, 2.0, 2.0, -1.0, -1.0, -1.0, 0.5, 0.5, 0.5]
    problem = quadratic(diagonal, rotate=False)
    matvec, dim = problem.matvec(), problem.dim
    alphas, betas = hessian.lanczos(matvec, dim, tf.float64, 0, iters=8)
    assert alphas.shape == [3] and betas.shape == [2]
    np.testing.assert_allclose(tridiagonal_eigenvalues(alphas, betas), [-1.0, 0.5, 2.0],
                               atol=1e-12)
    norm = hessian.spectral_norm(matvec, dim, tf.float64, 0, max_iters=8)
    assert int(norm.iterations) == 3 and abs(float(norm.value) - 2.0) < 1e-12
    # Rademacher probes read a diagonal exactly: z^T D z = tr(D), and q^T D q = tr(D) / dim.
    trace = sum(diagonal)
    assert abs(float(hessian.hutchinson_trace(matvec, dim, tf.float64, 0, 3)) - trace) < 1e-12
    nodes, weights = hessian.eigenvalue_density(matvec, dim, tf.float64, 0, probes=4, iters=8)
    assert nodes.shape == weights.shape == [4, 8]
    np.testing.assert_allclose(tf.reduce_sum(weights, 1), 1.0, atol=1e-12)
    np.testing.assert_allclose(tf.reduce_sum(weights * nodes, 1), trace / dim, atol=1e-12)
    assert np.all(weights.numpy()[:, 3:] == 0)
    assert np.all((nodes.numpy() >= -1.0 - 1e-12) & (nodes.numpy() <= 2.0 + 1e-12))


def test_a_zero_hessian_gives_zero_without_nans():
    params = [tf.constant([1.0, 2.0, 3.0], tf.float64)]
    matvec = hessian.hvp_matvec(lambda p: tf.reduce_sum(p[0]), params)
    for method in ("power", "lanczos"):
        norm = hessian.spectral_norm(matvec, 3, tf.float64, 0, method)
        assert float(norm.value) == 0.0 and int(norm.iterations) <= 2


def test_top_eigenvalues_match_the_largest_eigenvalues(mlp):
    top = tf.function(lambda: hessian.top_eigenvalues(
        mlp.matvec(), mlp.dim, tf.float64, 0, k=3, iters=40))()
    np.testing.assert_allclose(top, mlp.eigenvalues[::-1][:3], rtol=1e-6)


def test_hutchinson_trace_is_within_its_standard_error(mlp):
    probes, h = 1000, mlp.matrix
    estimate = tf.function(lambda: hessian.hutchinson_trace(
        mlp.matvec(), mlp.dim, tf.float64, 0, probes))()
    # Var z^T H z = 2 (||H||_F^2 - sum_i H_ii^2) for Rademacher z.
    standard_error = np.sqrt(2 * (np.sum(h * h) - np.sum(np.diag(h) ** 2)) / probes)
    assert abs(float(estimate) - np.trace(h)) < 4 * standard_error


def test_eigenvalue_density_of_a_real_model(mlp):
    probes, h, eigenvalues = 8, mlp.matrix, mlp.eigenvalues
    nodes, weights = tf.function(lambda: hessian.eigenvalue_density(
        mlp.matvec(), mlp.dim, tf.float64, 0, probes, iters=30))()
    nodes, weights = nodes.numpy(), weights.numpy()
    assert nodes.shape == weights.shape == (probes, 30)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-10)
    slack = 1e-9 * np.abs(eigenvalues).max()
    assert nodes.min() >= eigenvalues[0] - slack and nodes.max() <= eigenvalues[-1] + slack
    # Each probe's mean sum_i w_i theta_i is q^T H q, an unbiased estimate of tr(H) / dim.
    standard_error = (np.sqrt(2 * (np.sum(h * h) - np.sum(np.diag(h) ** 2)) / probes)
                      / mlp.dim)
    mean = np.mean(np.sum(weights * nodes, 1))
    assert abs(mean - np.trace(h) / mlp.dim) < 4 * standard_error
    sigma = 1.0
    grid = np.linspace(eigenvalues[0] - 8 * sigma, eigenvalues[-1] + 8 * sigma, 4001)
    density = hessian.density_on_grid(tf.constant(nodes), tf.constant(weights),
                                      tf.constant(grid), sigma).numpy()
    assert density.shape == grid.shape
    assert abs(np.trapezoid(density, grid) - 1) < 1e-6
    # Smoothed, it follows the true spectrum (each eigenvalue of weight 1 / dim).
    true = hessian.density_on_grid(tf.constant(eigenvalues[None]),
                                   tf.constant(np.full([1, mlp.dim], 1.0 / mlp.dim)),
                                   tf.constant(grid), sigma).numpy()
    assert np.trapezoid(np.abs(density - true), grid) < 0.2


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_layer_spectral_norms_match_the_diagonal_hessian_blocks(mlp, mode):
    groups = [[0, 1], [2, 3], [4, 5], [0, 4]]
    offsets = np.cumsum([0] + [p.shape.num_elements() for p in mlp.params])
    norms = tf.function(lambda: hessian.layer_spectral_norms(
        mlp.loss_fn, mlp.params, groups, 0, mode, max_iters=100, tol=1e-6))()
    assert norms.shape == [len(groups)]
    for norm, group in zip(norms.numpy(), groups):
        index = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in group])
        block = mlp.matrix[np.ix_(index, index)]
        assert abs(norm / np.abs(np.linalg.eigvalsh(block)).max() - 1) < 1e-5


@pytest.mark.parametrize("method", ["power", "lanczos"])
@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_a_whole_run_is_one_graph_call(mlp, method, mode):
    """The loop is a tf.while_loop: the HVP is traced once, however many of them run."""
    traces = []

    @tf.function
    def run():
        matvec = hessian.hvp_matvec(mlp.loss_fn, mlp.params, mode)

        def traced(v):
            traces.append(1)
            return matvec(v)

        return hessian.spectral_norm(traced, mlp.dim, tf.float64, 0, method, max_iters=500,
                                     tol=1e-6)

    first, second = run(), run()
    assert len(traces) == 1 and int(first.iterations) > 5
    assert float(first.value) == float(second.value)
    assert abs(float(first.value) / np.abs(mlp.eigenvalues).max() - 1) < 1e-4


def test_seeds_are_reproducible(mlp):
    def start(seed):
        return float(hessian.power_iteration(mlp.matvec(), mlp.dim, tf.float64, seed, 3).value)

    assert start(5) == start(5) and start(tf.constant([5, 1])) == start(tf.constant([5, 1]))
    assert len({start(5), start(6), start(tf.constant([5, 1]))}) == 3


def test_unknown_modes_and_methods_are_rejected(mlp):
    with pytest.raises(ValueError, match="mode"):
        hessian.hvp_matvec(mlp.loss_fn, mlp.params, "sideways")
    with pytest.raises(ValueError, match="method"):
        hessian.spectral_norm(mlp.matvec(), mlp.dim, tf.float64, 0, "qr")
