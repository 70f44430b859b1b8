"""Lake et al.'s one-shot protocol through `tfmeta serve`: within-alphabet runs on held-out alphabets,
sent as the original PNG files, one query per request.

    python benchmarks/alphabet_serving.py RUN_DIR [--runs 20] [--seed 0]

Exports RUN_DIR with its own norm, starts `tfmeta serve --embedded` on free ports and draws `--runs`
tasks of the run's ways, 1 shot and 1 query per class, each from one held-out alphabet
(`omniglot_files.file_tasks`), as Lake et al.'s 20 runs are drawn. Every query goes alone, with its
task's support files, through REST `adapt_predict_images`. The same tasks are also adapted in this
process from tfmeta's own preprocessing of the files, all queries at once, as `tfmeta evaluate`
scores an episode. Prints one JSON line: the served accuracy (mean over runs with a t interval), the
in-process accuracy, the predictions that differ and the largest logit difference.
"""

import argparse
import dataclasses
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from serving import start_server
from tfmeta import config as config_lib, export, stats
from tfmeta.adaptation import adapt
from tfmeta.models import query_outputs
from tfmeta.run import Run
from tfmeta.tasks.omniglot_files import file_tasks
from tfmeta_serving.client import RestClient


def floats(files, image_format) -> tf.Tensor:
    """tfmeta's preprocessing of PNG files, as training stores images, in [0, 1]."""
    return tf.constant(np.stack([image_format.from_pil(Image.open(io.BytesIO(f)))
                                 for f in files]).astype(np.float32) / 255.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = config_lib.load(str(args.run_dir / "config.yaml"))
    run = Run(config, args.run_dir)
    run.restore()
    omniglot = dataclasses.replace(config.data.omniglot, episodes="within_alphabet")
    ways = config.data.ways
    tasks = file_tasks(omniglot, ways, 1, 1, count=args.runs, seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix="tfmeta-alphabet-serving-"))
    version = export.export_run(args.run_dir, work / "omniglot")
    metadata = export.read_metadata(version)
    image_format = run.source.image_format
    process, url, _ = start_server(work / "omniglot", work / "server.log")
    try:
        rest = RestClient(url, "omniglot")
        served_accuracy, local_accuracy, differing, largest = [], [], 0, 0.0
        for task in tasks:
            support_x = floats(task.support_png, image_format)
            adapted, _ = adapt(run.eval_model, [tf.convert_to_tensor(v) for v in
                                                run.eval_model.trainable_variables],
                               (support_x, tf.constant(task.support_y)), config.adapt,
                               steps=metadata["steps"])
            local = query_outputs(run.eval_model, adapted, support_x,
                                  floats(task.query_png, image_format)).numpy()
            served = np.concatenate([
                rest.predict("adapt_predict_images", support_images=task.support_png,
                             support_y=task.support_y, query_images=[query])["logits"]
                for query in task.query_png])
            served_accuracy.append(np.mean(served.argmax(1) == task.query_y))
            local_accuracy.append(np.mean(local.argmax(1) == task.query_y))
            differing += int(np.sum(served.argmax(1) != local.argmax(1)))
            largest = max(largest, float(np.abs(served - local).max()))
    finally:
        process.terminate()
        process.wait(20)
    over_runs = stats.interval(served_accuracy)
    print(json.dumps({"run": str(args.run_dir), "runs": args.runs, "ways": ways, "shots": 1,
                      "queries_per_run": ways, "norm": metadata["norm"],
                      "query_independent": metadata["query_independent"],
                      "served_accuracy": round(over_runs.mean, 4),
                      "ci95": round(over_runs.mean - over_runs.low, 4),
                      "in_process_accuracy": round(float(np.mean(local_accuracy)), 4),
                      "predictions_differing": differing,
                      "largest_logit_difference": largest}), flush=True)


if __name__ == "__main__":
    main()
