"""The sine-mlp peer workload through the command line's loop (`training.repeat` and
`training.run_steps`, as `tfmeta train` runs them) and through `MetaLearner.fit`, with k meta-steps per
compiled call: ms per meta-iteration, in alternating passes.

Same workload as `maml_tfmeta.py` (MLP 1-40-40-1, meta-batch 25, K=10, T=1, second order, Adam
1e-3; tasks mapped with the vectorized mapping) and the same 64 pre-drawn batches, cycled. Each
pass times ITERS meta-iterations after a warm-up pass (tracing); one line of JSON per pass and
variant, then the median over passes per variant.

    python benchmarks/keras_sine.py [--iters 500] [--passes 2] [--k 1,10,50]

Both read the batches from a `tf.data` dataset, as training does; `maml_jax.py` reuses one batch.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from maml_tfmeta import THREADS, configure, sine_batch  # noqa: E402

from tfmeta import models, training  # noqa: E402
from tfmeta.algorithms import maml  # noqa: E402
from tfmeta.config.adapt import AdaptConfig  # noqa: E402
from tfmeta.keras import MetaLearner  # noqa: E402

CONFIG = AdaptConfig(steps=1, lr=0.01)
N = 25


def batches() -> list:
    rng = np.random.default_rng(0)
    return [sine_batch(rng, N) for _ in range(64)]


def dataset(data: list) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *a: np.stack(a), *data)).repeat()


def cli_variant(data: list, k: int):
    """The command line's loop: `training.run_steps` over `training.repeat` of its compiled meta-step,
    k meta-steps per compiled call."""
    keras.utils.set_random_seed(0)
    model = models.mlp((40, 40))
    step = training.make_meta_step(model, keras.optimizers.Adam(1e-3), maml.meta_gradient,
                                   CONFIG, N, "vectorized")
    execute, batches = training.repeat(step, k), iter(dataset(data))
    return lambda iters: training.run_steps(execute, batches, iters)


def keras_variant(data: list, k: int):
    """`MetaLearner.fit` over a dataset of the same batches, k meta-steps per compiled call."""
    keras.utils.set_random_seed(0)
    learner = MetaLearner(models.mlp((40, 40)), "maml", CONFIG, mapping="vectorized")
    learner.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=k)
    episodes = dataset(data)

    def run(iters: int) -> None:
        learner.fit(episodes, epochs=1, steps_per_epoch=iters, verbose=0)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=500)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--k", default="1,10,50")
    args = parser.parse_args()
    configure()
    data = batches()
    ks = [int(k) for k in args.k.split(",")]
    variants = {f"cli k={k}": cli_variant(data, k) for k in ks}
    variants.update({f"fit k={k}": keras_variant(data, k) for k in ks})
    for run in variants.values():
        run(args.iters)                                          # tracing, and a warm cache
    results = {name: [] for name in variants}
    for p in range(args.passes):
        for name, run in variants.items():
            t = time.perf_counter()
            run(args.iters)
            ms = (time.perf_counter() - t) * 1e3 / args.iters
            results[name].append(ms)
            print(json.dumps({"pass": p, "variant": name, "ms_per_iteration": round(ms, 3),
                              "iters": args.iters, "threads": THREADS}), flush=True)
    for name, values in results.items():
        print(f"{name:10s} median {statistics.median(values):.3f} ms/iteration "
              f"({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
