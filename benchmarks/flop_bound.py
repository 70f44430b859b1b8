"""The hardware bound of the conv4 and ResNet-12 meta-steps: their multiply-accumulate count, this
machine's sgemm rate, and each measured time's share of the bound.

MACs of one conv4 forward pass per image are counted from the model's own layer shapes (F; F1 of
the first layer; BN, ReLU and pooling are not counted). A meta-iteration with K support and Q
query images per task, T inner steps and n tasks takes, per task:

    query forward and backward:            Q (3F - F1)        (no input gradient at the images)
    each inner step, forward and backward: K (3F - F1)
    second order, the outer backward pass through each inner step's backward pass:
                                           K (6F - 4F1)      (each of its convolutions has two
                                                              of its own, bar those of the images)

so n (Q (3F - F1) + T K (9F - 5F1)) MACs, or n (Q + T K) (3F - F1) first-order, and 2 FLOPs a MAC.
The rate is two float32 2048x2048 matmuls at once, one per thread with the benchmarks' threading
(2 inter-op threads of one intra-op thread each), best of 10. With `--results FILE` (JSON lines of
`maml_tfmeta.py`) it prints each conv4 workload's share of the bound.

    python benchmarks/flop_bound.py [--results results.jsonl]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import maml_tfmeta  # noqa: E402
from tfmeta import models  # noqa: E402


def forward_macs(model) -> list:
    """(MACs per image, whether the layer reads the input images) of each conv and dense layer of
    a MetaModel, any graph, in order: from each layer's own input and output shapes."""
    macs = []
    for layer in models.leaves(model.features):
        if isinstance(layer, keras.layers.Conv2D):
            (kh, kw), out = layer.kernel_size, tuple(layer.output.shape)
            macs.append((out[1] * out[2] * out[3] * kh * kw * layer.input.shape[-1],
                         layer.input is model.features.inputs[0]))
        elif isinstance(layer, keras.layers.Dense):
            macs.append((layer.units * layer.input.shape[-1], False))
    return macs + [(int(model.head.kernel.shape[0]) * model.head.units, False)]


def meta_step_flops(model, steps: int, first_order: bool, tasks: int, support: int = 5,
                    query: int = 75) -> float:
    """2 x the MACs of one meta-step: a layer of m MACs costs m (3 Q + T K 9) second order, and
    one that reads the input images needs no input gradient: m (2 Q + T K 4) (the reference's
    `resnet12_gflop_per_step`; for conv4 the same as n (Q (3F - F1) + T K (9F - 5F1)))."""
    total = 0
    for m, first in forward_macs(model):
        if first_order:
            total += m * (query + steps * support) * (2 if first else 3)
        else:
            total += m * ((2 * query + steps * support * 4) if first
                          else (3 * query + steps * support * 9))
    return 2.0 * tasks * total


def sgemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = tf.random.normal([size, size]), tf.random.normal([size, size])
    c, d = tf.random.normal([size, size]), tf.random.normal([size, size])
    pair = tf.function(lambda: (tf.matmul(a, b), tf.matmul(c, d)))
    pair()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        [t.numpy() for t in pair()]
        best = min(best, time.perf_counter() - start)
    return 2 * 2 * size**3 / best / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    maml_tfmeta.configure()
    networks = {"conv4": models.conv4(5, pool="max"),
                "resnet12": models.resnet12(5, (32, 32, 3))}
    rate = sgemm_gflops()
    print(json.dumps(dict(sgemm_gflops=round(rate, 1), forward_macs_per_image={
        arch: sum(m for m, _ in forward_macs(net)) for arch, net in networks.items()})))
    measured = {}
    if args.results:
        with open(args.results) as f:
            for line in f:
                if line.startswith("{") and '"framework": "tfmeta"' in line:
                    row = json.loads(line)
                    measured[row["workload"]] = row["median_ms"]
    for name, (arch, steps, first_order, n, _) in maml_tfmeta.WORKLOADS.items():
        if arch not in networks:
            continue
        flops = meta_step_flops(networks[arch], steps, first_order, n)
        row = dict(workload=name, gflop=round(flops / 1e9, 1),
                   bound_ms=round(flops / rate / 1e6, 1))
        if name in measured:
            row.update(median_ms=measured[name],
                       share_of_bound=round(row["bound_ms"] / measured[name], 3))
        print(json.dumps(row))


if __name__ == "__main__":
    main()
