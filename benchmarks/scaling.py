"""Multi-worker scaling of the meta-step on this machine, and what it projects for a cluster.

    python benchmarks/scaling.py [--iters 5] [--workers 2] [--allreduce-iters 50]

The workload is ../shared/bench's omniglot-conv4: conv4 with max-pooling, 5-way 1-shot, 15 queries
per class, meta-batch 32, T = 5 second-order inner steps, Adam; random images, as the peers use.
It prints one JSON line per measurement, run one after another:

- `one-process`: ms per meta-iteration of one process with 2 threads (at most 2 ops at a time,
  each on one thread: tfmeta's default);
- `multi-worker`: the same global meta-batch on --workers `tfmeta` processes of one thread each,
  `MultiWorkerMirroredStrategy` over TF_CONFIG on 127.0.0.1, each worker taking its share of the
  meta-batch; the job's ms per iteration is the slowest worker's median;
- `allreduce`: in that job, the all-reduce of one meta-gradient alone: its bytes (float32
  parameters) and median ms, and its share of the step; and of a single float, its latency;
- `per-task`: the one-process time divided by the meta-batch, the compute a replica spends per task;
- `projection`: the scaling efficiency t_compute / (t_compute + t_allreduce) at 8 and 32 workers of
  one replica each. t_compute is the measured one-thread compute per task times the tasks per
  replica (32 / W). t_allreduce is a ring all-reduce, 2 (W - 1) hops of latency h plus
  2 (W - 1) / W of the gradient's bytes at throughput b, with h and b fitted from the two
  measured all-reduces (2 hops, W = 2), and again for an assumed 10 Gb/s network with 50 us hops.
  The step does not overlap the all-reduce with compute, so this is the whole cost.

Median of --iters meta-iterations after 2 warm-up iterations.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

META_BATCH, STEPS, LR = 32, 5, 0.4


def conv_shares(replica: int, replicas: int):
    """Replica r's share of the peers' conv4 meta-batch (the same random images)."""
    import tensorflow as tf
    from maml_tfmeta import conv_batch
    share = META_BATCH // replicas
    whole = conv_batch(META_BATCH)
    return tf.nest.map_structure(lambda t: tf.constant(t[replica * share:(replica + 1) * share]),
                                 whole)


def measure(strategy_name: str, iters: int, allreduce_iters: int) -> dict:
    """Runs in a worker process: times the meta-step (and the all-reduce) under the strategy."""
    import keras
    import tensorflow as tf

    from tfmeta import distribute, models, training
    from tfmeta.algorithms import maml
    from tfmeta.config.adapt import AdaptConfig

    strategy = distribute.make_strategy(strategy_name)
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = models.conv4(5, pool="max")
        optimizer = keras.optimizers.Adam(1e-3)
    step = training.make_meta_step(model, optimizer, maml.meta_gradient,
                                   AdaptConfig(steps=STEPS, lr=LR), META_BATCH, "loop",
                                   distribution=strategy)
    batch = (conv_shares(0, 1) if replicas == 1 else
             strategy.experimental_distribute_values_from_function(
                 lambda context: conv_shares(context.replica_id_in_sync_group, replicas)))
    times = []
    for i in range(iters + 2):
        start = time.perf_counter()
        float(step(batch)[0]["loss"])
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    out = {"replicas": replicas, "median_ms": round(statistics.median(times), 1),
           "min_ms": round(min(times), 1), "iters": iters}
    if replicas > 1:
        variables = model.trainable_variables

        @tf.function
        def all_reduce():
            return strategy.run(lambda: distribute.all_sum(
                [tf.ones_like(tf.convert_to_tensor(v)) for v in variables]))

        @tf.function
        def all_reduce_one_float():
            return strategy.run(lambda: distribute.all_sum(tf.ones([1])))

        def median_ms(call) -> float:
            times = []
            for i in range(allreduce_iters + 5):
                start = time.perf_counter()
                result = call()
                float(tf.reduce_sum(tf.nest.flatten(
                    strategy.experimental_local_results(result))[0]))
                if i >= 5:
                    times.append((time.perf_counter() - start) * 1e3)
            return round(statistics.median(times), 3)

        count = sum(int(tf.size(v)) for v in variables)
        out.update(parameters=count, allreduce_bytes=4 * count,
                   allreduce_ms=median_ms(all_reduce),
                   allreduce_one_float_ms=median_ms(all_reduce_one_float))
    return out


def ring_ms(workers: int, nbytes: float, hop_ms: float, bytes_per_ms: float) -> float:
    """A ring all-reduce: 2 (W - 1) hops, each of latency `hop_ms`, moving 2 (W - 1) / W of the
    bytes at `bytes_per_ms`."""
    return 2 * (workers - 1) * hop_ms + 2 * (workers - 1) / workers * nbytes / bytes_per_ms


def run_processes(workers: int, iters: int, allreduce_iters: int, threads: int) -> list:
    """`workers` processes of this script's --measure mode; their JSON results."""
    command = [sys.executable, __file__, "--measure", "--iters", str(iters),
               "--allreduce-iters", str(allreduce_iters), "--threads", str(threads)]
    from tfmeta import distribute
    configs = distribute.local_cluster(workers)
    processes = []
    for index in range(workers):
        env = dict(os.environ)
        if workers > 1:
            env["TF_CONFIG"] = configs[index]
        processes.append(subprocess.Popen(command + (["--multi-worker"] if workers > 1 else []),
                                          env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"a worker failed (exit {process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--allreduce-iters", type=int, default=50)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--multi-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        print(json.dumps(measure("multi-worker" if args.multi_worker else "default", args.iters,
                                 args.allreduce_iters)), flush=True)
        return
    one = run_processes(1, args.iters, args.allreduce_iters, threads=2)[0]
    print(json.dumps({"measurement": "one-process", "threads": 2, **one}), flush=True)
    job = run_processes(args.workers, args.iters, args.allreduce_iters, threads=1)
    slowest = max(w["median_ms"] for w in job)
    print(json.dumps({"measurement": "multi-worker", "workers": args.workers,
                      "threads_per_worker": 1, "median_ms": slowest,
                      "per_worker_median_ms": [w["median_ms"] for w in job],
                      "ratio_to_one_process": round(slowest / one["median_ms"], 3)}), flush=True)
    reduce_ms = max(w["allreduce_ms"] for w in job)
    latency_ms = max(w["allreduce_one_float_ms"] for w in job)
    nbytes = job[0]["allreduce_bytes"]
    print(json.dumps({"measurement": "allreduce", "workers": args.workers,
                      "parameters": job[0]["parameters"], "bytes": nbytes,
                      "median_ms": reduce_ms, "one_float_ms": latency_ms,
                      "share_of_step": round(reduce_ms / slowest, 4)}), flush=True)
    task_ms = one["median_ms"] * 2 / META_BATCH  # two threads ran two tasks at a time
    print(json.dumps({"measurement": "per-task", "meta_batch": META_BATCH,
                      "ms_per_task_one_thread": round(task_ms, 1)}), flush=True)
    hops = 2 * (args.workers - 1)
    fitted = {"hop_ms": latency_ms / hops,
              "bytes_per_ms": (hops / args.workers) * nbytes / max(reduce_ms - latency_ms, 1e-3)}
    assumed = {"hop_ms": 0.05, "bytes_per_ms": 10e9 / 8 / 1e3}
    for name, network in (("measured here", fitted), ("10 Gb/s, 50 us hops", assumed)):
        for workers in (8, 32):
            compute = task_ms * META_BATCH / workers
            communicate = ring_ms(workers, nbytes, **network)
            print(json.dumps({"measurement": "projection", "network": name, "workers": workers,
                              "tasks_per_replica": META_BATCH // workers,
                              "compute_ms": round(compute, 1),
                              "allreduce_ms": round(communicate, 2),
                              "efficiency": round(compute / (compute + communicate), 4),
                              **{k: round(v, 4) for k, v in network.items()}}), flush=True)


if __name__ == "__main__":
    main()
