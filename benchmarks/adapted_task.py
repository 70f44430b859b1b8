"""Adapt once, predict many, measured: what a kept task saves a stream of single-query requests.

    python benchmarks/adapted_task.py [--models omniglot_20w1s,folder_mobilenet,...]
                                      [--requests 50] [--stream 1000]

For each preset it builds the preset's network (untrained: the time and the size do not depend on
the weights; PRESET@LAYERS adapts only LAYERS, as `model.adapt_layers` says), exports it with the preset's test steps, starts `tfmeta serve --embedded` on free
ports, and prints one JSON line per measurement:
- size: a task's bytes (`task_bytes` in the export's metadata) beside the adapted parameters';
- latency: p50 and p90 ms of one request with a single query, `--requests` of each after 5
  warm-up calls: `adapt_predict` (the support set and the query) against `predict_task` (the
  task and the query), over REST and over gRPC;
- stream: `--stream` single-query requests on one task over gRPC, one after another, both ways:
  seconds and requests per second, the `adapt` call included in the kept task's.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from serving import start_server   # benchmarks/serving.py
from tfmeta import config as config_lib, export, models
from tfmeta.run import inner_loop
from tfmeta_serving.client import GrpcClient, RestClient

SHAPES = {"omniglot": (28, 28, 1), "miniimagenet": (84, 84, 3)}


def build(spec: str):
    """(model, adapt config, test steps, ways, shots) of a preset's network, untrained; a spec
    PRESET@LAYERS adapts LAYERS (`model.adapt_layers`, e.g. "head") instead of the preset's."""
    preset, _, layers = spec.partition("@")
    config = config_lib.load(preset, [f"model.adapt_layers={layers}"] if layers else [])
    folder = config.data.folder.image_size
    shape = (*folder, 3) if config.data.dataset == "folder" else SHAPES[config.data.dataset]
    model = models.build(config.model, shape, config.data.ways, inner=inner_loop(config))
    return model, config.adapt, config.adapt.eval_steps, config.data.ways, config.data.shots


def timed(call, requests: int) -> dict:
    for _ in range(5):
        call()
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": round(float(np.percentile(times, 50)), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="omniglot_20w1s,folder_mobilenet,"
                                             "miniimagenet_5w1s_resnet12@head")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--stream", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adapted-task-"))
    for preset in args.models.split(","):
        model, adapt_config, steps, ways, shots = build(preset)
        version = export.export(model, adapt_config, work / preset, steps, {"preset": preset})
        metadata = export.read_metadata(version)
        adapted = sum(int(np.prod(model.trainable_variables[i].shape))
                      for i in model.inner_indices)
        print(json.dumps({"preset": preset, "measure": "size", "task_bytes": metadata["task_bytes"],
                          "adapted_parameters": adapted, "adapted_bytes": 4 * adapted}),
              flush=True)
        rng = np.random.default_rng(0)
        shape = model.example_shape
        support = {"support_x": rng.random((ways * shots, *shape)).astype(np.float32),
                   "support_y": np.repeat(np.arange(ways, dtype=np.int32), shots)}
        query = rng.random((1, *shape)).astype(np.float32)
        process, url, target = start_server(work / preset, work / f"{preset}.log")
        try:
            for protocol, client in (("rest", RestClient(url, preset)),
                                     ("grpc", GrpcClient(target, preset))):
                task = client.adapt(**support)
                print(json.dumps({
                    "preset": preset, "measure": "latency", "protocol": protocol,
                    "steps": steps, "support": ways * shots,
                    "adapt_predict": timed(lambda: client.predict(
                        "adapt_predict", **support, query_x=query), args.requests),
                    "predict_task": timed(lambda: client.predict(task, query_x=query),
                                          args.requests)}), flush=True)
            client = GrpcClient(target, preset)
            start = time.perf_counter()
            for _ in range(args.stream):
                client.predict("adapt_predict", **support, query_x=query)
            each = time.perf_counter() - start
            start = time.perf_counter()
            task = client.adapt(**support)
            for _ in range(args.stream):
                client.predict(task, query_x=query)
            kept = time.perf_counter() - start
            print(json.dumps({"preset": preset, "measure": "stream", "protocol": "grpc",
                              "requests": args.stream,
                              "adapt_predict_s": round(each, 2),
                              "adapt_predict_per_s": round(args.stream / each, 1),
                              "kept_task_s": round(kept, 2),
                              "kept_task_per_s": round(args.stream / kept, 1),
                              "speedup": round(each / kept, 2)}), flush=True)
        finally:
            process.kill()


if __name__ == "__main__":
    sys.exit(main())
