"""MiniImagenet input pipeline against the meta-step: is the pipeline the bottleneck?

    python benchmarks/miniimagenet_pipeline.py [--cache DIR] [--batches 200] [--steps 10]

Without --cache it writes a full-size synthetic prepared cache to a temporary folder (the standard
64/16/20 classes of 600 random 84x84x3 images: 1.3 GB), so the pipeline reads exactly as much as on
the real data. Prints one JSON line each for:
- pipeline: 5-way 1-shot episodes with 15 queries per class in meta-batches of 4, drawn from the
  train split's memory-mapped cache through the same tf.data stream training uses (episodes/s);
- meta_step: ms per meta-iteration of the miniimagenet_5w1s-cpu preset (conv4-48, T=5 second
  order, meta-batch 4), the median of --steps after 2 warm-up steps, on batches taken beforehand;
- ratio: how many meta-iterations' worth of episodes the pipeline makes in one meta-iteration.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfmeta import config as config_lib, training  # noqa: E402
from tfmeta.algorithms import maml  # noqa: E402
from tfmeta.run import Run, configure_threads, task_mapping  # noqa: E402
from tfmeta.tasks import miniimagenet  # noqa: E402


def synthetic_cache(folder: Path) -> Path:
    """A prepared cache of the standard shape, filled with random pixels."""
    rng = np.random.default_rng(0)
    manifest = {"format": miniimagenet.FORMAT, "layout": "synthetic", "source": "random",
                "image_size": 84, "splits": {}, "warnings": []}
    for split, classes in miniimagenet.STANDARD_CLASSES.items():
        total = classes * miniimagenet.STANDARD_IMAGES
        array = np.lib.format.open_memmap(folder / f"{split}.npy", "w+", np.uint8,
                                          (total, 84, 84, 3))
        for start in range(0, total, 4800):
            stop = min(total, start + 4800)
            array[start:stop] = rng.integers(0, 256, (stop - start, 84, 84, 3), np.uint8)
        array.flush()
        del array
        manifest["splits"][split] = {
            "file": f"{split}.npy", "classes": [f"{split}{c:03d}" for c in range(classes)],
            "counts": [miniimagenet.STANDARD_IMAGES] * classes}
    (folder / miniimagenet.MANIFEST).write_text(json.dumps(manifest))
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, help="a prepared cache (default: synthetic)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    work = None
    if args.cache is None:
        work = Path(tempfile.mkdtemp(prefix="tfmeta-mini-"))
        start = time.perf_counter()
        args.cache = synthetic_cache(work)
        print(json.dumps({"synthetic_cache": str(work),
                          "write_s": round(time.perf_counter() - start, 1)}), flush=True)
    try:
        config = config_lib.load("miniimagenet_5w1s-cpu",
                                 [f"data.miniimagenet.data_dir={args.cache}"])
        configure_threads(config)
        run = Run(config, Path(tempfile.mkdtemp(prefix="tfmeta-mini-run-")))
        stream = iter(run.training_batches(0))
        for _ in range(5):
            next(stream)
        start = time.perf_counter()
        for _ in range(args.batches):
            next(stream)
        seconds = time.perf_counter() - start
        per_second = args.batches * config.train.meta_batch / seconds
        print(json.dumps({"pipeline": "train split, 5-way 1-shot, 15 queries, meta-batch 4",
                          "episodes_per_s": round(per_second, 1),
                          "ms_per_meta_batch": round(1e3 * seconds / args.batches, 2)}),
              flush=True)

        keras.utils.set_random_seed(0)
        step = training.make_meta_step(
            run.model, run.optimizer, maml.meta_gradient, config.adapt, config.train.meta_batch,
            task_mapping(config, run.model))
        batches = [next(stream) for _ in range(args.steps + 2)]
        times = []
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            metrics, _ = step(batch)
            float(metrics["loss"])
            if i >= 2:
                times.append(time.perf_counter() - start)
        step_ms = 1e3 * statistics.median(times)
        print(json.dumps({"meta_step": "miniimagenet_5w1s-cpu (conv4-48, T=5, meta-batch 4)",
                          "median_ms": round(step_ms, 1), "iters": len(times)}), flush=True)
        batch_ms = 1e3 * seconds / args.batches
        print(json.dumps({"ratio": "meta-step time / time to draw its meta-batch",
                          "value": round(step_ms / batch_ms, 1)}), flush=True)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
