"""Accuracy with all of a task's queries in one request against one query per request, per norm mode.

    python benchmarks/query_independence.py RUN_DIR [RUN_DIR ...] [--tasks 600] [--time-steps 30]
                                            [--verify 3]

For each run it scores the held-out tasks that `tfmeta evaluate` scores (the first --tasks of the
test stream), adapted for the run's test steps, two ways: every query of a task normalized
together (one request with all queries), and each query alone (one request per query). A
transductive run is also scored as `tfmeta export --norm support` serves it. It prints one JSON
line per (run, served norm) with both accuracies (mean and 95% CI over tasks) and the training
time per meta-iteration of the run's preset (median of --time-steps meta-steps after 3 warm-up
steps). The numbers come from the library (`adapt`, then `models.query_outputs` on all queries or
on each query alone); --verify N checks them on N tasks against the exported SavedModel, one
request per query.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from maml_family import step_timer

from tfmeta import config as config_lib, export
from tfmeta.adaptation import adapt
from tfmeta.models import query_outputs
from tfmeta.run import Run
from tfmeta.stats import estimate


def score(run: Run, tasks: int) -> tuple:
    """Per-task query accuracy [tasks] with all queries together and with each query alone, and
    the one-query logits of every task."""
    model, config = run.eval_model, run.config

    @tf.function(reduce_retracing=True)
    def one_task(episode):
        params = run.origin.params()
        adapted, _ = adapt(model, params, episode.support, config.adapt,
                           steps=config.adapt.eval_steps)
        together = query_outputs(model, adapted, episode.support_x, episode.query_x)
        alone = tf.vectorized_map(
            lambda q: query_outputs(model, adapted, episode.support_x, q[None])[0],
            episode.query_x)
        return together, alone

    rows = {"together": [], "alone": []}
    logits = []
    for episode in run.source.episodes("test", config.train.seed, 1, count=tasks).unbatch():
        together, alone = one_task(episode)
        labels = episode.query_y.numpy()
        rows["together"].append(np.mean(together.numpy().argmax(1) == labels))
        rows["alone"].append(np.mean(alone.numpy().argmax(1) == labels))
        logits.append(alone.numpy())
    return {k: np.asarray(v) for k, v in rows.items()}, logits


def verify(run_dir: Path, norm: str, run: Run, logits: list, count: int) -> dict:
    """The exported model, one request per query, against the library's one-query logits."""
    with tempfile.TemporaryDirectory() as work:
        version = export.export_run(run_dir, Path(work) / "m", norm=norm)
        signature = tf.saved_model.load(str(version)).signatures["adapt_predict"]
        worst, differing = 0.0, 0
        episodes = run.source.episodes("test", run.config.train.seed, 1, count=count).unbatch()
        for episode, expected in zip(episodes, logits):
            for i in range(len(expected)):
                got = signature(support_x=episode.support_x, support_y=episode.support_y,
                                query_x=episode.query_x[i:i + 1])["logits"].numpy()[0]
                worst = max(worst, float(np.abs(got - expected[i]).max()))
                differing += int(got.argmax() != expected[i].argmax())
    return {"verified_tasks": count, "max_logit_difference": worst,
            "predictions_differing": differing}


def step_ms(run_dir: Path, steps: int) -> float:
    """Median ms of the run's meta-step (its preset, its norm) over `steps` steps."""
    config = config_lib.load(str(run_dir / "config.yaml"))
    with tempfile.TemporaryDirectory() as work:
        return step_timer(config, Path(work), config.train.epochs - 1)(steps)

def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--time-steps", type=int, default=30)
    parser.add_argument("--verify", type=int, default=3)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        trained = config_lib.load(str(run_dir / "config.yaml")).model.norm
        milliseconds = step_ms(run_dir, args.time_steps) if args.time_steps else None
        if not args.tasks:
            print(json.dumps({"run": str(run_dir), "trained_norm": trained,
                              "training_ms_per_iteration": milliseconds}), flush=True)
            continue
        for norm in dict.fromkeys([trained, "support"]):
            run = Run.open(run_dir, [f"model.norm={norm}"])
            run.restore()
            accuracy, logits = score(run, args.tasks)
            line = {"run": str(run_dir), "preset": run.config.name or run_dir.name,
                    "ways": run.config.data.ways, "shots": run.config.data.shots,
                    "trained_norm": trained, "served_norm": norm, "tasks": args.tasks,
                    "steps": run.config.adapt.eval_steps,
                    "training_ms_per_iteration": milliseconds if norm == trained else None}
            for key, values in accuracy.items():
                e = estimate(values)
                line[f"accuracy_{key}"] = round(e.mean * 100, 2)
                line[f"accuracy_{key}_ci95"] = round(e.ci95 * 100, 2)
            if args.verify:
                line.update(verify(run_dir, norm, run, logits, args.verify))
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
