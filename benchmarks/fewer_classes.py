"""M-way accuracy of an N-way export, on held-out tasks.

    python benchmarks/fewer_classes.py RUN_DIR [--ways 2,3,5] [--tasks 600] [--norm support]

Exports RUN_DIR (an N-way classifier) to a temporary directory, draws `--tasks` M-way tasks of the
run's shots and queries per class from its held-out (test) classes for each M, sends each task to
the export's `adapt_predict` signature with labels 0..M-1, and prints one JSON line per M with
the query accuracy (mean and 95% CI over tasks) and the largest probability any absent class got.
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmeta import config as config_lib, export, tasks
from tfmeta.evaluation import estimate


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ways", default="2,3,5")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--norm", choices=["transductive", "support"])
    args = parser.parse_args()
    config = config_lib.load(str(args.run_dir / "config.yaml"))
    with tempfile.TemporaryDirectory() as work:
        version = export.export_run(args.run_dir, Path(work) / "m", norm=args.norm)
        metadata = export.read_metadata(version)
        signature = tf.saved_model.load(str(version)).signatures["adapt_predict"]
        for ways in (int(w) for w in args.ways.split(",")):
            source = tasks.build(dataclasses.replace(config.data, ways=ways), config.model.dtype)
            accuracy, leak = [], 0.0
            for episode in source.episodes("test", config.train.seed, 1,
                                           count=args.tasks).unbatch():
                out = signature(support_x=episode.support_x, support_y=episode.support_y,
                                query_x=episode.query_x)["probabilities"].numpy()
                accuracy.append(np.mean(out.argmax(1) == episode.query_y.numpy()))
                leak = max(leak, float(out[:, ways:].max(initial=0.0)))
            e = estimate(np.asarray(accuracy))
            print(json.dumps({"run": str(args.run_dir), "head_ways": metadata["ways"],
                              "norm": metadata["norm"], "ways": ways, "shots": config.data.shots,
                              "queries_per_class": config.data.queries, "tasks": args.tasks,
                              "accuracy": round(e.mean * 100, 2), "ci95": round(e.ci95 * 100, 2),
                              "max_absent_probability": leak}), flush=True)


if __name__ == "__main__":
    main()
