"""Objective-landscape metrics of meta-test tasks (Guiroy, Verma & Pal, 2019).

Every metric is an average over a fixed set of meta-test tasks D_i, each adapted from the
meta-learned theta by `adaptation.adapt` to theta~_i (the meta-test number of steps):

    flatness                  E_i ||H(D_i; theta~_i)||_sigma  (support-loss Hessian; Lanczos on HVPs)
    trajectory_coherence      E_{i != j} u_i^T u_j,  u_i = (theta~_i - theta) / ||theta~_i - theta||
    gradient_coherence        E_{i != j} g_i^T g_j,  g_i = -grad L(D_i; theta)
    representation_coherence  E_{a != b} h_a^T h_b,  h = f_feat(x) at theta of the tasks' queries
    trajectory_norm           E_i ||theta~_i - theta||
    support_loss              E_i L(D_i; theta~_i)

and beside them two variants that a choice of the definition would change:

    gradient_coherence_self   E_{i, j} g_i^T g_j with the pairs i = j: ||mean_i g_i||^2
    representation_spread     E_a ||h_a - mean_b h_b||^2
    representation_coherence_normalized
                              E_{a != b} z_a^T z_b,  z = the last normalization layer's x^,
                              before its gamma and beta (h where the model has none)

Which pairs count. The paper's expectations are over two independently drawn tasks (images), which
pairs i != j estimate without bias: E_{i != j} g_i^T g_j estimates ||E g||^2. Counting the self-pairs
too adds (mean ||g_i||^2 - E_{i != j} g_i^T g_j) / n, a term that moves with the gradients' size from
epoch to epoch; `gradient_coherence_self` reports it so that its effect can be seen.

Representation coherence, as at meta-test: each task's query embeddings h come from the pass
meta-testing makes (`models.query_features`): batch norm takes the statistics of the task's own
query set (or its support set, with `norm: support`), never of an arbitrary chunk of images, so
the value does not depend on how many tasks are computed at once. Its centered variant is
E_{a != b} (h_a - mu)^T (h_b - mu) with mu the mean embedding, which is identically
-representation_spread / (N - 1) (the centered embeddings sum to zero): centering leaves the
spread, and the raw coherence is ||mu||^2 - representation_spread / (N - 1). With per-task
statistics ||mu|| is set by the last normalization's gamma and beta, which training moves;
`representation_coherence_normalized` takes the representation before them, so that scaling gamma
or shifting beta leaves it unchanged.

All of them live in the space the inner loop moves in, the parameters `model.inner_indices` (the
others are held at theta~_i = theta): every parameter for MAML, the head alone for ANIL, all but
the per-step batch-norm weights under MAML++'s BNWB. With learned inner rates (Meta-SGD, LSLR) the
gradient is the inner loop's own first step, preconditioned, in gradient units:
g_i = -(alpha_0 / alpha) * grad L, with alpha_0 the learned rates of step 0 and alpha their initial
value, so that g_i is the direction adaptation actually sets out in, and plain -grad L without
learned rates.

and, opt-in, at the same adapted solutions as flatness: the Hessian trace (Hutchinson), the top-k
eigenvalues, per-layer spectral norms and the eigenvalue density (stochastic Lanczos quadrature).

Pairwise means cost O(n), never O(n^2): mean_{i != j} x_i^T x_j = (||sum x||^2 - sum ||x||^2) /
(n (n - 1)), so memory holds one parameter-sized running sum whatever the number of tasks.
"""

import time
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfmeta import batch_norm, hessian, meta_batch, tree
from tfmeta.adaptation import (Origin, adapt, displacement, inner_gradient, inner_part,
                               learning_rates, support_loss_fn, with_inner)
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.landscape import LandscapeConfig
from tfmeta.losses import task_loss
from tfmeta.models import MetaModel, leaves, query_features
from tfmeta.tasks.source import TaskSource

__all__ = ["Landscape", "METRICS", "VARIANTS", "coherences", "hessian_metrics", "hessian_means",
           "pairwise_mean", "task_sums", "layer_groups_of"]

METRICS = ("flatness", "trajectory_coherence", "gradient_coherence", "representation_coherence",
           "trajectory_norm", "support_loss")
# Variants of the definitions, measured beside METRICS (see the module docstring).
VARIANTS = ("gradient_coherence_self", "representation_spread",
            "representation_coherence_normalized")


def pairwise_mean(total: Sequence[tf.Tensor], sum_sq, n: int) -> tf.Tensor:
    """mean_{i != j} x_i^T x_j from the running sums: total = sum_i x_i, sum_sq = sum_i ||x_i||^2."""
    if n < 2:
        return tf.constant(np.nan, total[0].dtype)
    return (tree.sum_sq(total) - sum_sq) / (n * (n - 1))


def layer_groups_of(model: MetaModel) -> tuple:
    """(names, groups): each layer with adapted weights and the positions of its tensors in the
    list of adapted parameters (`model.inner_indices`)."""
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    position = {i: k for k, i in enumerate(model.inner_indices)}
    names, groups = [], []
    for layer in [*leaves(model.features), model.head]:
        group = [position[index[id(v)]] for v in layer.trainable_variables
                 if index.get(id(v)) in position]
        if group:
            names.append(layer.name)
            groups.append(group)
    return names, groups


def task_sums(model: MetaModel, origin: Origin, params: list, task, config: AdaptConfig,
              steps: int, classes=None) -> dict:
    """One task's terms of the coherence sums: its unit displacement and its -gradient (in the
    adapted parameters), their squared norms, its displacement norm and adapted support loss
    (zero when adaptation diverged, with "adapted" 0), and the sum, squared norm and count of its
    query embeddings at theta."""
    x, _ = task.support
    theta = origin.task(params, task.support)
    support_loss = support_loss_fn(model, theta, task.support, classes)
    grads, _ = inner_gradient(model, theta, inner_part(model, theta), support_loss, 0)
    # The direction adaptation sets out in, in gradient units (see the module docstring).
    gain = lambda rate: rate / config.lr if model.rates is not None else 1.0  # noqa: E731
    gradient = [-gain(rate) * g for rate, g in zip(learning_rates(model, theta, config, 0), grads)]
    adapted, trajectory = adapt(model, theta, task.support, config, steps, classes=classes)
    step = inner_part(model, displacement(adapted, trajectory))
    norm = tree.norm(step)
    loss = task_loss(model, adapted, x, task.support[1], classes)
    # A task whose adaptation diverged (too large a step for its curvature) is counted, not
    # averaged: one Inf would turn every mean into NaN.
    finite = tf.math.is_finite(norm) & tf.math.is_finite(loss)
    keep = lambda t: tf.where(finite, t, tf.zeros_like(t))  # noqa: E731
    with batch_norm.capture() as normalized:
        h = query_features(model, theta, x, task.query_x)
    h = tf.reshape(h, [tf.shape(h)[0], -1])
    # The last normalization's x^ of the query rows (a support-norm pass also holds the support's).
    z = normalized[-1] if normalized else h
    z = tf.reshape(z, [tf.shape(z)[0], -1])[tf.shape(z)[0] - tf.shape(h)[0]:]
    return {"direction": [keep(s / norm) for s in step], "gradient": gradient,
            "gradient_sq": tree.sum_sq(gradient), "trajectory_norm": keep(norm),
            "support_loss": keep(loss), "adapted": tf.cast(finite, norm.dtype),
            "feature": tf.reduce_sum(h, 0), "feature_sq": tf.reduce_sum(tf.square(h)),
            "normalized": tf.reduce_sum(z, 0), "normalized_sq": tf.reduce_sum(tf.square(z)),
            "embeddings": tf.cast(tf.shape(h)[0], h.dtype)}


def coherences(sums: dict, n: int) -> Dict[str, float]:
    """The coherence metrics, trajectory norm and support loss of n tasks from their summed
    `task_sums`."""
    adapted = int(round(float(sums["adapted"])))
    embeddings = int(round(float(sums["embeddings"])))
    return {
        "gradient_coherence": float(pairwise_mean(sums["gradient"], sums["gradient_sq"], n)),
        "gradient_coherence_self": float(tree.sum_sq(sums["gradient"])) / n ** 2,
        "trajectory_coherence": float(pairwise_mean(sums["direction"], float(adapted), adapted)),
        "trajectory_norm": float(sums["trajectory_norm"]) / max(adapted, 1),
        "support_loss": float(sums["support_loss"]) / max(adapted, 1),
        "diverged_tasks": n - adapted,
        "representation_coherence": float(pairwise_mean([sums["feature"]], sums["feature_sq"],
                                                        embeddings)),
        "representation_spread": float(sums["feature_sq"] / embeddings
                                       - tree.sum_sq([sums["feature"] / embeddings])),
        "representation_coherence_normalized": float(pairwise_mean(
            [sums["normalized"]], sums["normalized_sq"], embeddings)),
    }


def hessian_metrics(model: MetaModel, solution: list, task, config: LandscapeConfig,
                    layer_groups: list, classes=None) -> dict:
    """Flatness (and the opt-in spectrum metrics) at one task's adapted `solution`, with the HVP
    count they cost."""
    adapted = inner_part(model, solution)
    loss_fn = lambda p: task_loss(model, with_inner(model, solution, p),  # noqa: E731
                                  *task.support, classes)
    matvec = hessian.hvp_matvec(loss_fn, adapted, config.hvp)
    dim = sum(int(np.prod(p.shape)) for p in adapted)
    dtype = adapted[0].dtype
    seed = config.seed
    norm = hessian.spectral_norm(matvec, dim, dtype, seed, config.method, config.max_iters,
                                 config.tol)
    out = {"flatness": norm.value, "hvps": norm.iterations}
    if config.trace_probes:
        out["hessian_trace"] = hessian.hutchinson_trace(matvec, dim, dtype, seed,
                                                        config.trace_probes)
        out["hvps"] += config.trace_probes
    if config.top_k:
        iters = max(2 * config.top_k, 20)
        out["top_eigenvalues"] = hessian.top_eigenvalues(matvec, dim, dtype, seed, config.top_k,
                                                         iters)
        out["hvps"] += iters
    if config.layer_norms:
        out["layer_flatness"] = hessian.layer_spectral_norms(
            loss_fn, adapted, layer_groups, seed, config.hvp, config.max_iters, config.tol)
    if config.density_probes:
        out["density_nodes"], out["density_weights"] = hessian.eigenvalue_density(
            matvec, dim, dtype, seed, config.density_probes, config.density_iters)
        out["hvps"] += config.density_probes * config.density_iters
    return out


def hessian_means(rows: list, seconds: float, layer_names: Sequence[str]) -> Dict[str, float]:
    """Means over tasks of `hessian_metrics` rows (tasks with a finite flatness; diverged ones
    counted), the cost per HVP, and the eigenvalue density smoothed onto a grid."""
    hvps = int(sum(int(r["hvps"]) for r in rows))
    out = {"hvps": hvps, "seconds_per_hvp": seconds / max(hvps, 1),
           "flatness_diverged_tasks": sum(not np.isfinite(r["flatness"]) for r in rows)}
    rows = [r for r in rows if np.isfinite(r["flatness"])] or rows
    mean = lambda key: float(np.mean([np.asarray(r[key]) for r in rows], axis=0))  # noqa: E731
    out["flatness"] = mean("flatness")
    if "hessian_trace" in rows[0]:
        out["hessian_trace"] = mean("hessian_trace")
    if "top_eigenvalues" in rows[0]:
        top = np.mean([r["top_eigenvalues"].numpy() for r in rows], axis=0)
        out.update({f"top_eigenvalue_{k + 1}": float(v) for k, v in enumerate(top)})
    if "layer_flatness" in rows[0]:
        layers = np.mean([r["layer_flatness"].numpy() for r in rows], axis=0)
        out.update({f"layer_flatness/{name}": float(v) for name, v in zip(layer_names, layers)})
    if "density_nodes" in rows[0]:
        nodes = np.concatenate([r["density_nodes"].numpy() for r in rows])
        weights = np.concatenate([r["density_weights"].numpy() for r in rows])
        grid = np.linspace(nodes.min(), nodes.max(), 200)
        sigma = max((nodes.max() - nodes.min()) / 100, 1e-6)
        density = hessian.density_on_grid(tf.constant(nodes), tf.constant(weights),
                                          tf.constant(grid, nodes.dtype), sigma)
        out["density"] = {"grid": grid.tolist(), "density": density.numpy().tolist()}
    return out


class Landscape:
    """Measures the landscape metrics of one model on a fixed set of meta-test tasks: a driver
    of the functions above.

    Compiles them once; `measure()` evaluates them at the model's current weights, so the same
    object serves every epoch of a run or every checkpoint of `tfmeta analyze`.
    """

    def __init__(self, model: MetaModel, source: TaskSource, adapt_config: AdaptConfig,
                 config: LandscapeConfig, mapping: str = "loop", origin: Optional[Origin] = None):
        self.config = config
        # theta, where every task adapts from (the finetune baseline's has a fresh head).
        origin = origin or Origin(model)
        steps = adapt_config.eval_steps
        # The split the tasks come from: val where there is one, else test.
        self.split = split = source.eval_split
        self.batches = source.episodes(split, config.seed, config.batch,
                                       count=max(config.flatness_tasks, config.coherence_tasks))
        # M when the tasks use the head's first M classes only (`data.test_ways`), else None.
        classes = source.classes_in(split)
        self.layer_names, layer_groups = layer_groups_of(model)

        def coherence_sums(batch):
            params = origin.params()
            return meta_batch.sum_tasks(
                lambda task: task_sums(model, origin, params, task, adapt_config, steps, classes),
                batch, mapping)

        def task_hessian(task):
            solution, _ = adapt(model, origin.task(origin.params(), task.support), task.support,
                                adapt_config, steps, classes=classes)
            return hessian_metrics(model, solution, task, config, layer_groups, classes)

        self._coherence = tf.function(coherence_sums, reduce_retracing=True)
        self._hessian = tf.function(task_hessian, reduce_retracing=True)

    def measure(self, progress: bool = True) -> Dict[str, float]:
        """All configured metrics at the model's current weights.

        Tasks whose adaptation diverged (non-finite) are left out of the means that need an adapted
        solution and counted in `diverged_tasks` (coherence tasks) and `flatness_diverged_tasks`.

        Returns:
            {metric: value} with the METRICS and VARIANTS, `hvps` and `seconds_per_hvp`
            (flatness cost), and the opt-in metrics: `hessian_trace`, `top_eigenvalue_<k>`,
            `layer_flatness/<layer>`, and `density` ({"grid": [...], "density": [...]}, not a
            scalar).
        """
        config = self.config
        results: Dict[str, float] = {}
        sums, n = None, 0
        flat_rows, bar = [], tqdm(total=config.coherence_tasks + config.flatness_tasks,
                                  desc="landscape", disable=not progress, leave=False)
        hessian_seconds = 0.0
        for batch in self.batches:
            size = int(batch.support_x.shape[0])
            take = max(0, min(size, config.coherence_tasks - n))
            if take:
                part = self._coherence(tf.nest.map_structure(lambda t: t[:take], batch))
                sums = part if sums is None else tf.nest.map_structure(tf.add, sums, part)
                bar.update(take)
            for i in range(min(size, config.flatness_tasks - len(flat_rows))):
                began = time.perf_counter()
                flat_rows.append(self._hessian(tf.nest.map_structure(lambda t: t[i], batch)))
                hessian_seconds += time.perf_counter() - began
                bar.update(1)
            n += take
        bar.close()
        if n:
            results.update(coherences(sums, n))
        if flat_rows:
            results.update(hessian_means(flat_rows, hessian_seconds, self.layer_names))
        return results
