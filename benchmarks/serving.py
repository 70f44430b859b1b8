"""Serving figures: request latency, a concurrent load run, and accuracy through REST.

    python benchmarks/serving.py RUN_DIR [--requests 200] [--clients 8] [--per-client 200] \
                                         [--tasks 600] [--norm support]

From a trained Omniglot 5-way 1-shot run it exports to a temporary model directory, starts
`tfmeta serve --embedded` on free ports, and prints one JSON line per measurement:
- latency: p50/p99 ms of one 5-way 1-shot request with 75 queries, in-process (the loaded
  SavedModel's signature), over REST and over gRPC, `--requests` each after 10 warm-up calls;
  then of a request with a single query, and of an image-files request (`adapt_predict_images`:
  the held-out task's 5 support PNGs and 1 query PNG, base64 in REST), over REST and gRPC;
- load: `--clients` concurrent REST clients x `--per-client` requests (throughput, p50, p99, errors);
- e2e: the held-out episodes `tfmeta evaluate` scores, classified through REST; mean accuracy of
  both and the number of tasks whose accuracy differs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmeta import config as config_lib, export
from tfmeta.ports import free_ports
from tfmeta.run import Run
from tfmeta.tasks.omniglot_files import file_tasks
from tfmeta_serving.client import GrpcClient, RestClient, encode


def start_server(models: Path, log: Path, *flags: str) -> tuple:
    """`tfmeta serve --embedded FLAGS` on free ports of 127.0.0.1: (process, REST URL, gRPC
    target), once it answers."""
    port, grpc_port = free_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "tfmeta_cli.main", "serve", "--model-base-path", str(models),
         "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port),
         "--embedded", *flags],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{url}/v1/models/{models.name}", timeout=5)
            return process, url, f"127.0.0.1:{grpc_port}"
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def percentiles(seconds) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "n": len(ms)}


def timed(call, requests: int, warmup: int = 10) -> list:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def load_run(url: str, name: str, inputs: dict, clients: int, per_client: int) -> dict:
    payload = encode({"inputs": inputs})
    times, errors, lock = [], [0], threading.Lock()

    def client():
        rest = RestClient(url, name)
        for _ in range(per_client):
            start = time.perf_counter()
            try:
                rest._call(rest.base + ":predict", payload)
                elapsed = time.perf_counter() - start
                with lock:
                    times.append(elapsed)
            except Exception:
                with lock:
                    errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": clients * per_client, "errors": errors[0],
            "throughput_rps": round(len(times) / wall, 2), "wall_s": round(wall, 1),
            **percentiles(times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--norm", choices=["transductive", "support"],
                        help="export with this query normalization (default: the run's)")
    args = parser.parse_args()

    config = config_lib.load(str(args.run_dir / "config.yaml"))
    run = Run(config, args.run_dir)
    work = Path(tempfile.mkdtemp(prefix="tfmeta-serving-bench-"))
    models = work / "omniglot"
    version = export.export_run(args.run_dir, models, norm=args.norm)
    steps = export.read_metadata(version)["steps"]
    episodes = list(run.source.episodes("test", config.train.seed, 1, count=args.tasks)
                    .unbatch())
    first = episodes[0]
    inputs = {"support_x": first.support_x.numpy(), "support_y": first.support_y.numpy(),
              "query_x": first.query_x.numpy()}
    print(json.dumps({"request": {k: list(v.shape) for k, v in inputs.items()},
                      "steps": steps, "run": str(args.run_dir)}), flush=True)

    signature = tf.saved_model.load(str(version)).signatures["adapt_predict"]
    tensors = {k: tf.constant(v) for k, v in inputs.items()}
    print(json.dumps({"latency": "in-process",
                      **percentiles(timed(lambda: signature(**tensors), args.requests))}),
          flush=True)

    process, url, target = start_server(models, work / "server.log")
    try:
        rest, grpc_client = RestClient(url, "omniglot"), GrpcClient(target, "omniglot")
        print(json.dumps({"latency": "REST", **percentiles(
            timed(lambda: rest.predict(**inputs), args.requests))}), flush=True)
        print(json.dumps({"latency": "gRPC", **percentiles(
            timed(lambda: grpc_client.predict(**inputs), args.requests))}), flush=True)
        single = {**inputs, "query_x": inputs["query_x"][:1]}
        for name, client in (("REST", rest), ("gRPC", grpc_client)):
            print(json.dumps({"latency": f"{name}, one query", **percentiles(
                timed(lambda: client.predict(**single), args.requests))}), flush=True)
        task = file_tasks(config.data.omniglot, config.data.ways, config.data.shots, 1,
                          count=1)[0]
        files = {"support_images": task.support_png, "support_y": task.support_y,
                 "query_images": task.query_png[:1]}
        for name, client in (("REST", rest), ("gRPC", grpc_client)):
            print(json.dumps({"latency": f"{name}, image files", "support": len(task.support_png),
                              "queries": 1, "bytes": sum(map(len, task.support_png))
                              + len(task.query_png[0]), **percentiles(
                timed(lambda: client.predict("adapt_predict_images", **files), args.requests))}),
                  flush=True)
        print(json.dumps({"load": "REST", **load_run(url, "omniglot", inputs, args.clients,
                                                      args.per_client)}), flush=True)

        served = []
        for episode in episodes:
            out = rest.predict(support_x=episode.support_x.numpy(),
                               support_y=episode.support_y.numpy(),
                               query_x=episode.query_x.numpy())
            served.append(np.mean(out["probabilities"].argmax(-1) == episode.query_y.numpy()))
        evaluated = run.evaluator(steps, args.tasks, "test")
        run.restore()
        reference = evaluated()["accuracy"][:, steps]
        served = np.asarray(served)
        print(json.dumps({"e2e": "REST vs tfmeta evaluate", "tasks": args.tasks,
                          "steps": steps, "rest_accuracy": round(float(served.mean()), 5),
                          "evaluate_accuracy": round(float(reference.mean()), 5),
                          "tasks_differing": int(np.sum(np.abs(served - reference) > 1e-6))}),
              flush=True)
        grpc_client.close()
    finally:
        process.terminate()
        process.wait(20)


if __name__ == "__main__":
    main()
