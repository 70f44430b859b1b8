"""tfmeta's Hessian workloads: one JSON line each, in the format of ../shared/bench.

    hvp-power       20 power iterations of forward-over-backward HVPs of the conv4 support loss on
                    one 5-way 1-shot support set (5 images), timed as a whole (the peers' workload)
    hvp-power-rr    the same with backward-over-backward HVPs
    landscape-epoch one epoch's landscape metrics at the default task counts, on a trained run
                    (needs --run-dir, e.g. an omniglot_5w1s-cpu run): wall seconds, HVPs and
                    seconds per HVP

Timing as in the peers: 2 warm-up calls (tracing happens there), then the median of 20 calls.

    python benchmarks/hessian_tfmeta.py [--workload hvp-power,hvp-power-rr,landscape-epoch]
                                        [--run-dir RUN] [--iters N]
"""

import argparse
import json
import os
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from maml_tfmeta import bench  # noqa: E402
from tfmeta import config as config_lib, hessian, models  # noqa: E402
from tfmeta.losses import task_loss  # noqa: E402
from tfmeta.run import Run, configure_threads  # noqa: E402

POWER_ITERS = 20


def power(mode: str, iters) -> dict:
    keras.utils.set_random_seed(0)
    model = models.conv4(5, pool="max")
    rng = np.random.default_rng(1)
    x = tf.constant(rng.random((5, 28, 28, 1), dtype=np.float32))
    y = tf.constant(np.arange(5, dtype=np.int32))
    params = models.params_of(model)
    dim = sum(int(np.prod(p.shape)) for p in params)

    @tf.function
    def run():
        matvec = hessian.hvp_matvec(lambda p: task_loss(model, p, x, y), params, mode)
        return hessian.power_iteration(matvec, dim, tf.float32, 3, POWER_ITERS, tol=0.0)

    result = bench(lambda: run().value.numpy(), iters)
    value = run()
    return dict(result, eigenvalue=float(value.value), hvps=int(value.iterations), mode=mode)


def landscape_epoch(run_dir: str) -> dict:
    config = config_lib.load(os.path.join(run_dir, "config.yaml"))
    configure_threads(config)
    run = Run(config, run_dir)
    run.restore()
    landscape = run.landscape()
    began = time.perf_counter()
    landscape.measure(progress=False)  # traces every function once
    first = time.perf_counter() - began
    began = time.perf_counter()
    values = landscape.measure(progress=False)
    return dict(wall_s=round(time.perf_counter() - began, 3), first_call_s=round(first, 3),
                hvps=values["hvps"], seconds_per_hvp=round(values["seconds_per_hvp"], 5),
                flatness_tasks=config.landscape.flatness_tasks,
                coherence_tasks=config.landscape.coherence_tasks,
                **{k: round(v, 6) for k, v in values.items() if k in (
                    "flatness", "trajectory_coherence", "gradient_coherence",
                    "representation_coherence")})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="hvp-power,hvp-power-rr")
    parser.add_argument("--run-dir", help="a trained run, for landscape-epoch")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    # As in maml_tfmeta.py and tfmeta's default config: single-threaded ops, two at a time.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    for name in args.workload.split(","):
        if name == "landscape-epoch":
            if not args.run_dir:
                parser.error("landscape-epoch needs --run-dir")
            result = landscape_epoch(args.run_dir)
        else:
            result = power({"hvp-power": "forward", "hvp-power-rr": "reverse"}[name], args.iters)
        print(json.dumps(dict(framework="tfmeta", version=tf.__version__, workload=name, **result,
                              peak_rss_mb=round(resource.getrusage(
                                  resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                              loadavg_1m=round(os.getloadavg()[0], 2))), flush=True)


if __name__ == "__main__":
    main()
