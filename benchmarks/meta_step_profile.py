"""Where a meta-step's time goes: a per-op-type profile of one peer workload's meta-iteration.

Traces `--calls` meta-iterations with the TensorFlow profiler (after 2 warm-up calls) and reads
the host plane of the trace (XPlane protos). Op time is the sum of the ops' own durations over
both threads, so it can reach twice the wall time; `busy` is their ratio (2.0 = both threads
always in an op). It prints one JSON line for the whole call, one per category (convolutions,
matmuls, pooling and ReLU, and the rest: batch norm's and the loss's elementwise ops and
reductions, Adam), with the convolutions' GFLOP/s per thread for conv4 (`flop_bound.py`'s count),
then one per op type: milliseconds per call, share of the op time, count per call.

    python benchmarks/meta_step_profile.py [--workload omniglot-conv4-t1] [--calls 1] [--top 15]
        [--jit]
"""

import argparse
import collections
import glob
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import flop_bound  # noqa: E402
import maml_tfmeta  # noqa: E402
from tfmeta import models  # noqa: E402

# Events of the executor and the profiler around the ops, not ops.
WRAPPERS = {"Process", "Run", "Record", "StartRegion", "StopRegion"}
CATEGORIES = (("convolution", ("Conv2D",)), ("matmul", ("MatMul",)),
              ("pooling and relu", ("MaxPool", "Relu")))


def category(op: str) -> str:
    return next((name for name, keys in CATEGORIES if any(k in op for k in keys)),
                "elementwise and other")


def op_times(logdir: str) -> collections.Counter:
    """{op type: (microseconds, count)} summed over the trace's TensorFlow op events."""
    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Executor op events are named "op_name:OpType".
                if ":" not in name or name.startswith(("$", "tf_data", "Iterator")):
                    continue
                op = name.rsplit(":", 1)[1]
                if not op.lstrip("_")[:1].isupper() or op in WRAPPERS:
                    continue
                totals[op] += event.duration_ps / 1e6
                counts[op] += 1
    return totals, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="omniglot-conv4-t1")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--jit", action="store_true", help="compile the meta-step with XLA")
    args = parser.parse_args()
    maml_tfmeta.configure()
    fn = maml_tfmeta.workload(args.workload, jit=args.jit)[0]
    fn(), fn()
    logdir = tempfile.mkdtemp(prefix="tfmeta-profile-")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    for _ in range(args.calls):
        fn()
    wall = (time.perf_counter() - start) / args.calls * 1e3
    tf.profiler.experimental.stop()
    totals, counts = op_times(logdir)
    ms = {op: us / 1e3 / args.calls for op, us in totals.items()}
    op_ms = sum(ms.values())
    print(json.dumps(dict(workload=args.workload, wall_ms=round(wall, 1),
                          op_ms=round(op_ms, 1), busy=round(op_ms / wall, 2))))
    arch, steps, first_order, n, _ = maml_tfmeta.WORKLOADS[args.workload]
    for name in [c for c, _ in CATEGORIES] + ["elementwise and other"]:
        total = sum(v for op, v in ms.items() if category(op) == name)
        row = dict(category=name, ms=round(total, 1), share=round(total / op_ms, 3))
        if name == "convolution" and arch == "conv4" and total:
            flops = flop_bound.meta_step_flops(models.conv4(5, pool="max"), steps, first_order, n)
            row["gflops_per_thread"] = round(flops / total / 1e6, 1)
        print(json.dumps(row))
    for op, value in sorted(ms.items(), key=lambda item: -item[1])[:args.top]:
        print(json.dumps(dict(op=op, ms=round(value, 1), share=round(value / op_ms, 3),
                              count=counts[op] // args.calls)))

if __name__ == "__main__":
    main()
