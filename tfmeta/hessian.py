"""Hessian-vector products and the Hessian spectrum of a loss, without forming the Hessian.

For a scalar loss L(theta) over P parameters, the Hessian H = d^2 L / d theta^2 is a P x P matrix:
1.2e10 entries for a 112k-parameter conv4, far too many to build. Everything here touches H only
through Hessian-vector products (HVPs), exact and with O(P) memory, each costing about two
gradients: forward over backward pushes v through the forward and backward pass alongside the
primal values; backward over backward runs one more backward pass through the gradient computation.

On top of the HVP this module estimates
  * the largest-magnitude eigenvalue and the spectral norm ||H||_2 = max |lambda|, by power
    iteration or by Lanczos (which usually needs far fewer HVPs);
  * the top-k eigenvalues, from the Ritz values of a Lanczos run;
  * the trace, by Hutchinson's estimator (one HVP per Rademacher probe);
  * the eigenvalue density, by stochastic Lanczos quadrature (Ubaru, Chen and Saad, 2017; as in
    PyHessian), probes x iterations HVPs;
  * the spectral norm of each layer's diagonal Hessian block.

An m-step Lanczos run stores its m Krylov vectors: O(m P) memory and O(m^2 P) time for the full
reorthogonalization, negligible next to the m HVPs for m up to a few hundred.

Every iterative routine is a `tf.while_loop`, so calling one inside `tf.function` traces it once and
runs a whole power iteration or Lanczos run as a single graph call; called eagerly, the same code
runs step by step. Random vectors come from stateless ops, so results are reproducible from their
seed.
"""

import functools
import math
from typing import Callable, NamedTuple, Sequence, Union

import tensorflow as tf

__all__ = ["EigenResult", "hvp", "hvp_matvec", "power_iteration", "lanczos", "spectral_norm",
           "top_eigenvalues", "hutchinson_trace", "eigenvalue_density", "density_on_grid",
           "layer_spectral_norms", "flatten", "unflatten"]

Matvec = Callable[[tf.Tensor], tf.Tensor]
LossFn = Callable[[list], tf.Tensor]
Seed = Union[int, tf.Tensor]

_ZERO = tf.UnconnectedGradients.ZERO


class EigenResult(NamedTuple):
    """An eigenvalue estimate.

    Attributes:
        value: scalar estimate.
        iterations: int32 scalar, the Hessian-vector products it took.
    """
    value: tf.Tensor
    iterations: tf.Tensor


def flatten(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """Concatenates tensors into one vector [P], P the total number of elements."""
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(vector: tf.Tensor, like: Sequence[tf.Tensor]) -> list:
    """Splits a vector [P] into tensors shaped like `like` (whose shapes must be static).

    Args:
        vector: [P], P the total number of elements of `like`.
        like: tensors giving the shapes.

    Returns:
        A list of tensors with the shapes of `like`.
    """
    sizes = [t.shape.num_elements() for t in like]
    return [tf.reshape(piece, t.shape) for piece, t in zip(tf.split(vector, sizes), like)]


def _gradient(loss_fn: LossFn, params: list) -> list:
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(params)
        loss = loss_fn(params)
    return tape.gradient(loss, params, unconnected_gradients=_ZERO)


def _check_mode(mode: str) -> None:
    if mode not in ("forward", "reverse"):
        raise ValueError(f"mode must be 'forward' or 'reverse'. Received mode={mode!r}")


def _reverse_hvp(loss_fn: LossFn, params: list) -> Callable[[list], list]:
    """Records grad L once; the result maps v to H v by one backward pass through that record."""
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        tape.watch(params)
        grads = _gradient(loss_fn, params)
    # The vector-Jacobian product with output gradient v is d<grad L, v>/d theta, v held constant.
    return lambda vector: tape.gradient(grads, params, output_gradients=list(vector),
                                        unconnected_gradients=_ZERO)


def hvp(loss_fn: LossFn, params: Sequence[tf.Tensor], vector: Sequence[tf.Tensor],
        mode: str = "forward") -> list:
    """The exact Hessian-vector product H v of a scalar loss.

    Args:
        loss_fn: maps a parameter list to a scalar loss.
        params: theta, the point where the Hessian is taken.
        vector: v, tensors shaped like `params`.
        mode: "forward" pushes v forward through the gradient computation (a ForwardAccumulator
            around a GradientTape); "reverse" differentiates <grad L, v> again, v held constant.

    Returns:
        H v as a list shaped like `params`.
    """
    _check_mode(mode)
    params, vector = list(params), list(vector)
    if mode == "reverse":
        return _reverse_hvp(loss_fn, params)(vector)
    with tf.autodiff.ForwardAccumulator(params, vector) as accumulator:
        grads = _gradient(loss_fn, params)
    return accumulator.jvp(grads, unconnected_gradients=_ZERO)


def hvp_matvec(loss_fn: LossFn, params: Sequence[tf.Tensor], mode: str = "forward") -> Matvec:
    """H as a function on flat vectors, v [P] -> H v [P], for the routines below.

    "forward" runs `hvp` afresh for every product. "reverse" records the gradient once, when the
    matvec is made, and each product is one backward pass through that record, skipping the
    forward and first backward pass (as torch's retain_graph does); make such a matvec where it is
    used, inside the same `tf.function` or eagerly.

    Args:
        loss_fn: maps a parameter list to a scalar loss.
        params: theta; their static shapes fix the layout of the flat vectors.
        mode: "forward" or "reverse", as in `hvp`.

    Returns:
        The matvec.
    """
    _check_mode(mode)
    params = list(params)
    if mode == "reverse":
        product = _reverse_hvp(loss_fn, params)
    else:
        product = functools.partial(hvp, loss_fn, params, mode=mode)
    return lambda v: flatten(product(unflatten(v, params)))


def _seed(seed: Seed) -> tf.Tensor:
    # Stateless random ops take a [2] seed; an int seed s becomes [s, 0].
    seed = tf.cast(seed, tf.int64)
    return tf.stack([seed, tf.zeros_like(seed)]) if seed.shape.rank == 0 else seed


def _unit_normal(dim: int, dtype: tf.DType, seed: tf.Tensor) -> tf.Tensor:
    v = tf.random.stateless_normal([dim], seed, dtype=dtype)
    return v / tf.norm(v)


def _rademacher(dim: int, dtype: tf.DType, seed: tf.Tensor) -> tf.Tensor:
    bits = tf.random.stateless_uniform([dim], seed, minval=0, maxval=2, dtype=tf.int32)
    return tf.cast(2 * bits - 1, dtype)


def _dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(a * b)


def power_iteration(matvec: Matvec, dim: int, dtype: tf.DType, seed: Seed, max_iters: int = 100,
                    tol: float = 1e-3) -> EigenResult:
    """The largest-magnitude eigenvalue of a symmetric H, with its sign.

    Iterates v <- H v / ||H v|| from a random unit vector; the estimate is the Rayleigh quotient
    v^T H v. Converges at the rate |lambda_2 / lambda_1|; when the two largest magnitudes belong to
    eigenvalues of opposite sign it oscillates and runs to `max_iters`.

    Args:
        matvec: v [dim] -> H v [dim].
        dim: P, the dimension of H.
        dtype: dtype of the vectors.
        seed: int or [2] int seed of the start vector.
        max_iters: most HVPs to use.
        tol: stops once |lambda_k - lambda_{k-1}| <= tol |lambda_k|.

    Returns:
        EigenResult(lambda_1, HVPs used).
    """
    def step(i, v, previous, _):
        hv = matvec(v)
        value = _dot(v, hv)
        # If H v = 0, v becomes zero and the estimate 0, and the next step stops the loop.
        v = tf.math.divide_no_nan(hv, tf.norm(hv))
        converged = (i > 0) & (tf.abs(value - previous) <= tol * tf.abs(value))
        return i + 1, v, value, converged

    zero = tf.zeros([], dtype)
    i, _, value, _ = tf.while_loop(
        lambda i, v, value, converged: (i < max_iters) & ~converged, step,
        (tf.constant(0), _unit_normal(dim, dtype, _seed(seed)), zero, tf.constant(False)))
    return EigenResult(value, i)


class _Krylov(NamedTuple):
    """A Lanczos run after m steps.

    Attributes:
        basis: [m + 1, dim], the orthonormal Lanczos vectors; row m is the next one to multiply.
        alphas: [m], the diagonal of T.
        betas: [m], the off-diagonal of T, then the norm of the last residual.
        broken: bool scalar, whether that residual vanished.
    """
    basis: tf.Tensor
    alphas: tf.Tensor
    betas: tf.Tensor
    broken: tf.Tensor

    @property
    def steps(self) -> tf.Tensor:
        """m, the HVPs taken (int32 scalar)."""
        return tf.size(self.alphas)

    @property
    def tridiagonal(self) -> tf.Tensor:
        """T [m, m] = V^T H V."""
        m = self.steps
        off = self.betas[:m - 1]
        return (tf.linalg.diag(self.alphas) + tf.linalg.diag(off, k=1, num_rows=m, num_cols=m)
                + tf.linalg.diag(off, k=-1, num_rows=m, num_cols=m))


def _krylov_start(start: tf.Tensor) -> _Krylov:
    empty = tf.zeros([0], start.dtype)
    return _Krylov(start[None], empty, empty, tf.constant(False))


def _krylov_invariants(state: _Krylov) -> _Krylov:
    # The basis and coefficients grow by one row per step, so their leading dimension varies.
    return _Krylov(tf.TensorShape([None, state.basis.shape[1]]), tf.TensorShape([None]),
                   tf.TensorShape([None]), tf.TensorShape([]))


def _lanczos_step(matvec: Matvec, state: _Krylov) -> _Krylov:
    """One Lanczos step with full reorthogonalization: one HVP and O(m dim) arithmetic.

    Args:
        matvec: v [dim] -> H v [dim].
        state: a run after m steps.

    Returns:
        The run after m + 1 steps.
    """
    v = state.basis[-1]
    w = matvec(v)
    alpha = _dot(v, w)
    # Orthogonalizing against every stored vector, not only the last two, keeps the basis
    # orthonormal in floating point, so converged Ritz values get no spurious copies; twice,
    # because a single classical Gram-Schmidt pass loses orthogonality.
    for _ in range(2):
        w -= tf.linalg.matvec(state.basis, tf.linalg.matvec(state.basis, w), transpose_a=True)
    beta = tf.norm(w)
    alphas = tf.concat([state.alphas, [alpha]], axis=0)
    scale = tf.reduce_max(tf.abs(tf.concat([alphas, state.betas], axis=0)))
    # A residual at rounding level (sqrt(eps) relative to ||T||) means the Krylov space is
    # invariant: T's eigenvalues are then exact eigenvalues of H, and normalising the residual
    # would only add noise to the basis.
    broken = beta <= math.sqrt(tf.experimental.numpy.finfo(w.dtype).eps) * scale
    return _Krylov(tf.concat([state.basis, tf.math.divide_no_nan(w, beta)[None]], axis=0),
                   alphas, tf.concat([state.betas, [beta]], axis=0), broken)


def _run_lanczos(matvec: Matvec, start: tf.Tensor, iters: int) -> _Krylov:
    """Lanczos from a unit vector start [dim] for min(iters, dim) steps or until breakdown."""
    steps = min(iters, start.shape[0])
    state = _krylov_start(start)
    return tf.while_loop(lambda state: (state.steps < steps) & ~state.broken,
                         lambda state: (_lanczos_step(matvec, state),), (state,),
                         shape_invariants=(_krylov_invariants(state),))[0]


def lanczos(matvec: Matvec, dim: int, dtype: tf.DType, seed: Seed, iters: int) -> tuple:
    """The Lanczos tridiagonalization T = V^T H V of a symmetric H, from a random unit vector.

    Stops early, with fewer steps, when the residual vanishes (the Krylov space is invariant, so
    T's eigenvalues are exact eigenvalues of H), and after at most `dim` steps.

    Args:
        matvec: v [dim] -> H v [dim].
        dim: P, the dimension of H.
        dtype: dtype of the vectors.
        seed: int or [2] int seed of the start vector.
        iters: m, the most steps (HVPs).

    Returns:
        (alphas [m'], betas [m' - 1]): T's diagonal and off-diagonal, m' <= m the steps taken.
    """
    state = _run_lanczos(matvec, _unit_normal(dim, dtype, _seed(seed)), iters)
    return state.alphas, state.betas[:-1]


def spectral_norm(matvec: Matvec, dim: int, dtype: tf.DType, seed: Seed, method: str = "lanczos",
                  max_iters: int = 100, tol: float = 1e-3) -> EigenResult:
    """||H||_2 = max |lambda| of a symmetric H.

    Args:
        matvec: v [dim] -> H v [dim].
        dim: P, the dimension of H.
        dtype: dtype of the vectors.
        seed: int or [2] int seed of the start vector.
        method: "lanczos" grows a Krylov space one HVP at a time and stops once the largest
            |Ritz value| changes by at most tol relative; "power" is |power_iteration|.
        max_iters: most HVPs to use.
        tol: relative change at which to stop.

    Returns:
        EigenResult(||H||_2, HVPs used).
    """
    if method == "power":
        value, iterations = power_iteration(matvec, dim, dtype, seed, max_iters, tol)
        return EigenResult(tf.abs(value), iterations)
    if method != "lanczos":
        raise ValueError(f"method must be 'lanczos' or 'power'. Received method={method!r}")
    steps = min(max_iters, dim)

    def step(state, previous, _):
        state = _lanczos_step(matvec, state)
        value = tf.reduce_max(tf.abs(tf.linalg.eigvalsh(state.tridiagonal)))
        converged = (state.steps > 1) & (tf.abs(value - previous) <= tol * value)
        return state, value, converged | state.broken

    state = _krylov_start(_unit_normal(dim, dtype, _seed(seed)))
    state, value, _ = tf.while_loop(
        lambda state, value, done: (state.steps < steps) & ~done, step,
        (state, tf.zeros([], dtype), tf.constant(False)),
        shape_invariants=(_krylov_invariants(state), tf.TensorShape([]), tf.TensorShape([])))
    return EigenResult(value, state.steps)


def top_eigenvalues(matvec: Matvec, dim: int, dtype: tf.DType, seed: Seed, k: int,
                    iters: int) -> tf.Tensor:
    """The k algebraically largest eigenvalues of a symmetric H, estimated by Lanczos.

    The extreme Ritz values converge first; `iters` of a few times k is usually enough.

    Args:
        matvec: v [dim] -> H v [dim].
        dim: P, the dimension of H.
        dtype: dtype of the vectors.
        seed: int or [2] int seed of the start vector.
        k: how many eigenvalues; at most the Lanczos steps taken (`iters`, or fewer on breakdown).
        iters: Lanczos steps (HVPs).

    Returns:
        [k], descending.
    """
    state = _run_lanczos(matvec, _unit_normal(dim, dtype, _seed(seed)), iters)
    return tf.math.top_k(tf.linalg.eigvalsh(state.tridiagonal), k).values


def hutchinson_trace(matvec: Matvec, dim: int, dtype: tf.DType, seed: Seed,
                     probes: int) -> tf.Tensor:
    """Hutchinson's estimate of tr(H): the mean of z^T H z over Rademacher probes z.

    Unbiased, with variance 2 (||H||_F^2 - sum_i H_ii^2) / probes: exact when H is diagonal.

    Args:
        matvec: v [dim] -> H v [dim].
        dim: P, the dimension of H.
        dtype: dtype of the vectors.
        seed: int or [2] int seed; probe i uses it folded with i.
        probes: how many probes (HVPs).

    Returns:
        Scalar estimate of tr(H).
    """
    seed = _seed(seed)

    def step(i, total):
        z = _rademacher(dim, dtype, tf.random.experimental.stateless_fold_in(seed, i))
        return i + 1, total + _dot(z, matvec(z))

    _, total = tf.while_loop(lambda i, total: i < probes, step,
                             (tf.constant(0), tf.zeros([], dtype)))
    return total / probes


def eigenvalue_density(matvec: Matvec, dim: int, dtype: tf.DType, seed: Seed, probes: int,
                       iters: int) -> tuple:
    """Stochastic Lanczos quadrature of the eigenvalue density of a symmetric H.

    For each probe q (a normalised Rademacher vector), an `iters`-step Lanczos run from q gives
    T = Q diag(theta) Q^T; the Gauss quadrature rule with nodes theta_i and weights Q[0, i]^2
    approximates q^T f(H) q, whose expectation is tr(f(H)) / dim. The density is the average of
    these discrete measures (`density_on_grid` smooths it).

    Args:
        matvec: v [dim] -> H v [dim].
        dim: P, the dimension of H.
        dtype: dtype of the vectors.
        seed: int or [2] int seed; probe i uses it folded with i.
        probes: how many probes.
        iters: Lanczos steps per probe; probes x iters HVPs in all.

    Returns:
        (nodes [probes, iters], weights [probes, iters]); each probe's weights sum to 1. A run that
        broke down after m < iters steps is padded with copies of its top node of weight 0.
    """
    seed = _seed(seed)

    def quadrature(i):
        start = _rademacher(dim, dtype, tf.random.experimental.stateless_fold_in(seed, i))
        state = _run_lanczos(matvec, start / math.sqrt(dim), iters)
        nodes, vectors = tf.linalg.eigh(state.tridiagonal)
        # Padding repeats the top node, so every node stays inside H's spectrum.
        padding = iters - state.steps
        return (tf.concat([nodes, tf.fill([padding], nodes[-1])], axis=0),
                tf.pad(tf.square(vectors[0]), [[0, padding]]))

    nodes, weights = tf.map_fn(quadrature, tf.range(probes),
                               fn_output_signature=(dtype, dtype))
    return nodes, weights


def density_on_grid(nodes: tf.Tensor, weights: tf.Tensor, grid: tf.Tensor,
                    sigma: float) -> tf.Tensor:
    """The quadrature measures of `eigenvalue_density`, smoothed by a Gaussian of width sigma.

    Args:
        nodes: [probes, m] Ritz values.
        weights: [probes, m] their weights.
        grid: [G] eigenvalues at which to evaluate the density.
        sigma: standard deviation of the Gaussian kernel.

    Returns:
        [G], the density averaged over probes; it integrates to 1 over a grid covering the nodes
        by a few sigma.
    """
    z = (grid - nodes[..., None]) / sigma
    kernel = tf.exp(-0.5 * tf.square(z)) / (sigma * math.sqrt(2 * math.pi))
    return tf.reduce_mean(tf.reduce_sum(weights[..., None] * kernel, axis=1), axis=0)


def layer_spectral_norms(loss_fn: LossFn, params: Sequence[tf.Tensor],
                         groups: Sequence[Sequence[int]], seed: Seed, mode: str = "forward",
                         max_iters: int = 100, tol: float = 1e-3) -> tf.Tensor:
    """The spectral norm of each group's diagonal Hessian block, by Lanczos.

    For a group g of parameter indices (a layer's kernel and bias, say), the block is
    H_gg = d^2 L / d theta_g^2 with every other parameter held fixed.

    Args:
        loss_fn: maps a parameter list to a scalar loss.
        params: theta, the point where the Hessian is taken.
        groups: parameter indices of each group.
        seed: int or [2] int seed; group i uses it folded with i.
        mode: "forward" or "reverse", as in `hvp`.
        max_iters: most HVPs per group.
        tol: relative change at which to stop, as in `spectral_norm`.

    Returns:
        [len(groups)], ||H_gg||_2 for each group.
    """
    params, seed = list(params), _seed(seed)
    norms = []
    for i, group in enumerate(groups):
        group = list(group)

        def block_loss(block, group=group):
            full = list(params)
            for index, tensor in zip(group, block):
                full[index] = tensor
            return loss_fn(full)

        block = [params[index] for index in group]
        dim = sum(t.shape.num_elements() for t in block)
        result = spectral_norm(hvp_matvec(block_loss, block, mode), dim, block[0].dtype,
                               tf.random.experimental.stateless_fold_in(seed, i),
                               max_iters=max_iters, tol=tol)
        norms.append(result.value)
    return tf.stack(norms)
