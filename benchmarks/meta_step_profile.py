"""Where a meta-step's time goes: a per-op-type profile of one peer workload's meta-iteration.

Traces `--calls` meta-iterations with the TensorFlow profiler (after 2 warm-up calls), reads the
host plane of the trace (XPlane protos), and prints one JSON line per op type: total milliseconds
per call, share of the op time, count per call. Op time is the sum of the ops' own durations over
both threads, so it can exceed the wall time by up to 2x; `busy` is their ratio (2.0 = both
threads always in an op).

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

import maml_tfmeta  # noqa: E402


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
                if not op.lstrip("_")[:1].isupper():
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
    op_ms = sum(totals.values()) / 1e3 / args.calls
    print(json.dumps(dict(workload=args.workload, wall_ms=round(wall, 1),
                          op_ms=round(op_ms, 1), busy=round(op_ms / wall, 2))))
    for op, us in totals.most_common(args.top):
        ms = us / 1e3 / args.calls
        print(json.dumps(dict(op=op, ms=round(ms, 1), share=round(ms / op_ms, 3),
                              count=counts[op] // args.calls)))


if __name__ == "__main__":
    main()
