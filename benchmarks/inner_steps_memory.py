"""Peak memory and time of second-order meta-steps against the number of inner steps T, with and
without `adapt.recompute`.

conv4 (the peers' workload: 28x28 inputs, max-pool, 5-way 1-shot, 15 queries per class),
second order, meta-batch 4. Each (T, recompute) pair runs in a fresh process and takes 3 warm-up
calls (tracing and graph optimization), then `--iters` timed ones, whose median is `median_ms`.
Memory, over the timed calls:

- `tensor_peak_mb`: the peak of the tensors TensorFlow's CPU allocator holds
  (`tf.config.experimental.get_memory_info`, reset after the warm-up): the activations, gradients
  and parameters a meta-step keeps alive at once.
- `rss_mb`: the process's peak resident set. It also holds TensorFlow itself, the compiled graph
  (which grows with T, since the inner loop is unrolled) and heap that malloc keeps after a step,
  so it moves less than the tensor peak; `trace_rss_mb` is its peak while tracing.

One JSON line per pair, then the ratios T=max / T=min and recompute / not.

    python benchmarks/inner_steps_memory.py [--steps 5,10,20,50] [--iters 5]
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current VmRSS
        f.write("5")


def measure(steps: int, recompute: bool, iters: int) -> dict:
    """One (T, recompute) pair, in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, HERE)
    import keras
    import maml_tfmeta
    import tensorflow as tf

    from tfmeta import models, training
    from tfmeta.algorithms import maml
    from tfmeta.config.adapt import AdaptConfig

    maml_tfmeta.configure()
    keras.utils.set_random_seed(0)
    model = models.conv4(5, pool="max")
    config = AdaptConfig(steps=steps, lr=0.4, recompute=recompute)
    step = training.make_meta_step(model, keras.optimizers.Adam(1e-3), maml.meta_gradient, config,
                                   4, "loop")
    batch = tf.nest.map_structure(tf.constant, maml_tfmeta.conv_batch(4))
    call = lambda: step(batch)[0]["loss"].numpy()  # noqa: E731
    warmup = maml_tfmeta.bench(call, 1)["warmup_s"]
    trace_rss = peak_rss_mb()
    reset_peak_rss()
    tf.config.experimental.reset_memory_stats("CPU:0")
    result = maml_tfmeta.bench(call, iters, warmup=0)
    tensors = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
    return dict(T=steps, recompute=recompute, median_ms=result["median_ms"],
                tensor_peak_mb=round(tensors, 1), rss_mb=round(peak_rss_mb(), 1),
                trace_s=warmup[0], trace_rss_mb=round(trace_rss, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="5,10,20,50")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "T,recompute": a child
    args = parser.parse_args()
    if args.one:
        steps, recompute = args.one.split(",")
        print(json.dumps(measure(int(steps), recompute == "1", args.iters)), flush=True)
        return
    steps = [int(t) for t in args.steps.split(",")]
    rows = {}
    for t in steps:
        for recompute in (False, True):
            out = subprocess.run([sys.executable, __file__, "--one", f"{t},{int(recompute)}",
                                  "--iters", str(args.iters)], capture_output=True, text=True,
                                 check=True).stdout
            rows[t, recompute] = json.loads(out.strip().splitlines()[-1])
            print(json.dumps(rows[t, recompute]), flush=True)
    low, high = min(steps), max(steps)
    ratio = lambda a, b, key: round(b[key] / a[key], 2)  # noqa: E731
    for recompute in (False, True):
        a, b = rows[low, recompute], rows[high, recompute]
        print(json.dumps(dict(recompute=recompute, ratio=f"T={high} / T={low}",
                              tensor_peak=ratio(a, b, "tensor_peak_mb"),
                              rss=ratio(a, b, "rss_mb"))))
    a, b = rows[high, False], rows[high, True]
    print(json.dumps(dict(ratio=f"recompute / not, at T={high}", time=ratio(a, b, "median_ms"),
                          tensor_peak=ratio(a, b, "tensor_peak_mb"), rss=ratio(a, b, "rss_mb"))))


if __name__ == "__main__":
    main()
