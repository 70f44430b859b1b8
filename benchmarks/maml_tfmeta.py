"""tfmeta on the peer workloads of ../shared/bench: one JSON line per workload.

Same workloads, shapes and timing protocol as the torch.func and JAX references: conv4 5-way 1-shot
with 15 queries per class and meta-batch 32 (T=5 second-order, T=5 first-order, T=1 second-order),
the sine MLP 1-40-40-1 with meta-batch 25, K=10, T=1, and `cifarfs-resnet12`: ResNet-12 (64, 160,
320, 640) on 32x32x3, 5-way 1-shot, 15 queries per class, meta-batch 4, T=1, lr 0.01, second order
(slow: `all` leaves it out, as the torch reference does). Each time is one whole meta-iteration,
Adam included: 2 warm-up calls (tracing happens here; reported as warmup_s), then the median of 20
calls, or of 5 when a call takes over 2 s. Run the peers one after another on an idle machine and
compare ratios.

    python benchmarks/maml_tfmeta.py [--workload all|NAME[,NAME]] [--iters N]
        [--strategy auto|loop|map|vectorized] [--jit]
"""

import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmeta import models, training  # noqa: E402
from tfmeta.algorithms import maml  # noqa: E402
from tfmeta.config.adapt import AdaptConfig  # noqa: E402
from tfmeta.tasks.episode import Episode  # noqa: E402

THREADS = 2  # as the peers: at most 2 ops at a time, each single-threaded (tfmeta's default)
WORKLOADS = {  # name: (model, T, first_order, meta_batch, inner_lr)
    "omniglot-conv4": ("conv4", 5, False, 32, 0.4),
    "omniglot-conv4-fo": ("conv4", 5, True, 32, 0.4),
    "omniglot-conv4-t1": ("conv4", 1, False, 32, 0.4),
    "sine-mlp": ("mlp", 1, False, 25, 0.01),
    "cifarfs-resnet12": ("resnet12", 1, False, 4, 0.01),
}
SLOW = ("cifarfs-resnet12",)


def conv_batch(n: int, size: int = 28, channels: int = 1) -> Episode:
    """Random 'images' in [0, 1), as the peers use: support [n, 5, size, size, channels], query
    [n, 75, ...]."""
    rng = np.random.default_rng(1)
    labels = lambda k: np.tile(np.repeat(np.arange(5), k), (n, 1)).astype(np.int32)  # noqa: E731
    shape = (size, size, channels)
    return Episode(rng.random((n, 5, *shape), dtype=np.float32), labels(1),
                   rng.random((n, 75, *shape), dtype=np.float32), labels(15))


def sine_batch(rng, n: int) -> Episode:
    amp = rng.uniform(0.1, 5.0, (n, 1, 1))
    phase = rng.uniform(0.0, np.pi, (n, 1, 1))
    xs, xq = rng.uniform(-5, 5, (n, 10, 1)), rng.uniform(-5, 5, (n, 10, 1))
    f = lambda a: a.astype(np.float32)  # noqa: E731
    return Episode(f(xs), f(amp * np.sin(xs - phase)), f(xq), f(amp * np.sin(xq - phase)))


def bench(fn, iters, warmup=2):
    warm = []
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t)
    iters = iters or (5 if warm[-1] > 2.0 else 20)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return dict(median_ms=round(statistics.median(times), 3), min_ms=round(min(times), 3),
                iters=iters, warmup=warmup, warmup_s=[round(w, 3) for w in warm])


def workload(name: str, strategy: str = "auto", jit: bool = False) -> tuple:
    """(fn: one meta-iteration, returning its loss as a number; the strategy used; whether XLA
    compiles it; the model's parameter count). strategy "auto" chooses as `tfmeta train` does, by
    architecture."""
    arch, steps, first_order, n, lr = WORKLOADS[name]
    keras.utils.set_random_seed(0)
    model = {"conv4": lambda: models.conv4(5, pool="max"),
             "resnet12": lambda: models.resnet12(5, (32, 32, 3)),
             "mlp": lambda: models.mlp((40, 40))}[arch]()
    if strategy == "auto":
        strategy = "vectorized" if arch == "mlp" else "loop"
    step = training.make_meta_step(model, keras.optimizers.Adam(1e-3), maml.meta_gradient,
                                   AdaptConfig(steps=steps, lr=lr, first_order=first_order), n,
                                   strategy, jit)
    if arch != "mlp":
        shape = (32, 3) if arch == "resnet12" else (28, 1)
        batch = tf.nest.map_structure(tf.constant, conv_batch(n, *shape))
        return (lambda: step(batch)[0]["loss"].numpy()), strategy, jit, model.count_params()
    rng = np.random.default_rng(0)
    batches = [tf.nest.map_structure(tf.constant, sine_batch(rng, n)) for _ in range(64)]
    counter = iter(range(10**9))
    return ((lambda: step(batches[next(counter) % 64])[0]["loss"].numpy()), strategy, jit,
            model.count_params())


def run(name: str, iters, strategy: str, jit: bool) -> dict:
    _, steps, first_order, n, _ = WORKLOADS[name]
    fn, strategy, jit, params = workload(name, strategy, jit)
    result = bench(fn, iters)
    return dict(framework="tfmeta", version=tf.__version__, workload=name, **result, T=steps,
                second_order=not first_order, meta_batch=n, strategy=strategy, jit_compile=jit,
                threads=THREADS, params=params,
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                loadavg_1m=round(os.getloadavg()[0], 2))


def configure():
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="all")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--strategy", default="auto", choices=["auto", "loop", "map", "vectorized"])
    parser.add_argument("--jit", action="store_true", help="compile the meta-step with XLA")
    args = parser.parse_args()
    configure()
    names = ([w for w in WORKLOADS if w not in SLOW] if args.workload == "all"
             else args.workload.split(","))
    for name in names:
        print(json.dumps(run(name, args.iters, args.strategy, args.jit)), flush=True)


if __name__ == "__main__":
    main()
