"""Meta-test evaluation: adapt to held-out tasks, score the query sets, report 95% intervals.

For each task, `adapt` runs from the meta-learned theta on the support set and the query metrics are
recorded after every step t = 0..T, so a single pass gives the whole accuracy-versus-steps curve.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfmeta import meta_batch
from tfmeta.adaptation import Origin, adapt
from tfmeta.config.adapt import AdaptConfig
from tfmeta.losses import query_metrics
from tfmeta.models import MetaModel
from tfmeta.stats import Estimate, estimate
from tfmeta.tasks.source import TaskSource


def make_evaluator(model: MetaModel, source: TaskSource, config: AdaptConfig, steps: int,
                   tasks: int, seed: int, batch: int, mapping: str = "loop", split: str = "test",
                   origin: Optional[Origin] = None):
    """Builds a function that evaluates the model's current weights on a fixed set of tasks.

    The tasks are episodes 0..tasks-1 of the split's stream for `seed`: the same tasks every call.
    Each task adapts from `origin` (default: the model's weights; the finetune baseline's origin
    is its trained features with a fresh head).

    Where the split's episodes have fewer classes than the head (`data.test_ways`), adaptation and
    scoring use the head's first ones.

    Returns:
        evaluate() -> {metric: [steps + 1] array of per-step values for each task, shape
        [tasks, steps + 1]}, on the query sets: "loss" and "accuracy" for classifiers, "mse" for
        regression (the loss, named for what it is in every report).
    """
    origin = origin or Origin(model)
    dataset = source.episodes(split, seed, batch, count=tasks)
    classes = source.classes_in(split)
    names = {"loss": "mse"} if model.loss_name == "mse" else {}

    @tf.function(reduce_retracing=True)
    def run(episodes):
        params = origin.params()

        def one_task(episode):
            _, trajectory = adapt(model, origin.task(params, episode.support), episode.support, config, steps=steps,
                                  observe=lambda p, t: query_metrics(model, p, episode, t - 1,
                                                                     classes),
                                  classes=classes)
            return trajectory.observations

        return meta_batch.map_tasks(one_task, episodes, mapping)

    def evaluate() -> Dict[str, np.ndarray]:
        parts = [run(episodes) for episodes in dataset]
        return {names.get(k, k): np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

    return evaluate


def summarize(per_task: Dict[str, np.ndarray], steps: Sequence[int]) -> Dict[str, Dict[int, Estimate]]:
    """{metric: {t: Estimate over tasks after t steps}} for the requested step counts."""
    return {k: {t: estimate(v[:, t]) for t in steps} for k, v in per_task.items()}
