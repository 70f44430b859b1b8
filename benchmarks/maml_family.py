"""Training cost of the MAML family: ms per meta-iteration of each preset, as ratios to MAML.

    python benchmarks/maml_family.py --data-dir ../shared/data/omniglot [--steps 20] [--passes 2]
                                     [--set KEY=VALUE ...] [PRESET ...]
    python benchmarks/maml_family.py --set data.folder.data_dir=SHAPES folder_mobilenet

Default presets: omniglot_5w1s-cpu and its anil, meta_sgd and mamlpp variants. Each preset's
compiled meta-step (the one `tfmeta train` runs, on its own real batches) is timed in turn, the
median of --steps steps after 3 warm-up steps, and the presets alternate over --passes passes so
that a change in the machine's load reaches all of them alike. A preset with derivative-order
annealing is timed in both phases: first order (its first epoch) and second order (its last).
Prints one JSON line per preset and pass, then one per preset with the median over passes and
its ratio to the first preset's. Memory, over each preset's timed steps: `tensor_peak_mb`, the
peak of the tensors TensorFlow's CPU allocator holds (activations, gradients and parameters alive
at once), and `rss_mb`, the process's peak resident set so far (TensorFlow, the compiled graphs
and every preset timed before it).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmeta import config as config_lib, training
from tfmeta.run import Run, configure_threads

PRESETS = ["omniglot_5w1s-cpu", "omniglot_5w1s_anil-cpu", "omniglot_5w1s_meta_sgd-cpu",
           "omniglot_5w1s_mamlpp-cpu"]


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) / 1024


def step_timer(config: config_lib.Config, work: Path, epoch: int):
    """median_ms(steps): the median ms of `steps` meta-steps that `config`'s run (in `work`) takes
    at (0-based) `epoch`, on its own batches, after 3 warm-up steps."""
    configure_threads(config)
    run = Run(config, work)
    step = training.MetaSteps.of_run(run).step(epoch)
    batches = iter(run.training_batches(0))

    def median_ms(steps: int) -> float:
        times = []
        for i in range(steps + 3):
            if i == 3:
                tf.config.experimental.reset_memory_stats("CPU:0")
            batch = next(batches)
            start = time.perf_counter()
            metrics, _ = step(batch)
            float(metrics["loss"])
            if i >= 3:
                times.append(time.perf_counter() - start)
        return float(np.median(times) * 1e3)

    return median_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="*", default=PRESETS)
    parser.add_argument("--data-dir", help="Omniglot's folder, for the Omniglot presets")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every preset (repeatable)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    cases = []
    with tempfile.TemporaryDirectory() as work:
        for preset in args.presets:
            overrides = [f"data.omniglot.data_dir={args.data_dir}"] if args.data_dir else []
            config = config_lib.load(preset, overrides + args.set)
            epochs = [config.train.epochs - 1]
            if config.algorithms.maml.first_order_epochs:
                epochs.insert(0, 0)
            for epoch in epochs:
                order = "first" if config.adapt.first_order or epoch < (
                    config.algorithms.maml.first_order_epochs) else "second"
                cases.append((preset, order,
                              step_timer(config, Path(work) / f"{preset}-{epoch}", epoch)))
        results = {(p, o): [] for p, o, _ in cases}
        for number in range(args.passes):
            for preset, order, median_ms in cases:
                ms = median_ms(args.steps)
                results[(preset, order)].append(ms)
                peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
                print(json.dumps({"pass": number, "preset": preset, "order": order,
                                  "ms_per_iteration": round(ms, 1),
                                  "tensor_peak_mb": round(peak, 1),
                                  "rss_mb": round(peak_rss_mb(), 1)}), flush=True)
    first = float(np.median(next(iter(results.values()))))
    for (preset, order), values in results.items():
        ms = float(np.median(values))
        print(json.dumps({"preset": preset, "order": order, "ms_per_iteration": round(ms, 1),
                          "ratio_to_first": round(ms / first, 3)}), flush=True)


if __name__ == "__main__":
    main()
