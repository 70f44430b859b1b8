"""TensorBoard logging: every number a researcher would plot, under stable tag names.

Tags: meta_train/<metric> (means over the epoch's meta-iterations), meta_test/<metric> with
meta_test/<metric>_ci95 (95% interval half-widths over the fixed meta-test tasks), landscape/<metric>
and system/<metric>. The step is the meta-iteration.
"""

from pathlib import Path
from typing import Mapping

import numpy as np
import tensorflow as tf

from tfmeta import algorithms
from tfmeta.config.data import find, section_of
from tfmeta.record_keys import LANDSCAPE


def writer(log_dir: Path) -> tf.summary.SummaryWriter:
    """An event-file writer into `log_dir` (a run's is RUN/logs)."""
    return tf.summary.create_file_writer(str(log_dir))


def scalars(summary_writer: tf.summary.SummaryWriter, prefix: str, values: Mapping[str, float],
            step: int) -> None:
    """Writes {name: value} as scalars tagged prefix/name at `step`, and flushes."""
    with summary_writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(f"{prefix}/{name}", value)
    summary_writer.flush()


def histograms(summary_writer: tf.summary.SummaryWriter, prefix: str,
               values: Mapping[str, np.ndarray], step: int) -> None:
    """Writes {name: values [k]} as histograms tagged prefix/name at `step`."""
    with summary_writer.as_default(step=step):
        for name, data in values.items():
            tf.summary.histogram(f"{prefix}/{name}", data)
    summary_writer.flush()


def landscape_layout(summary_writer: tf.summary.SummaryWriter, metrics, target: str) -> None:
    """A TensorBoard custom-scalars layout: one category per landscape metric, holding two charts
    side by side, landscape/<metric> and the target (meta_test/accuracy, or meta_test/mse for
    regression), each on its own y-axis.

    One chart holding both would put them on one axis: flatness (~100) flattens an accuracy or
    loss (~1) into a line at 0, and a coherence (~0.01) vanishes under it.
    """
    from tensorboard.plugins.custom_scalar import layout_pb2, summary as layout_summary

    def chart(tag: str) -> layout_pb2.Chart:
        return layout_pb2.Chart(title=tag, multiline=layout_pb2.MultilineChartContent(
            tag=[rf"^{tag}$"]))

    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title=f"landscape: {metric} | {target}",
                            chart=[chart(LANDSCAPE + metric), chart(target)])
        for metric in metrics])
    with summary_writer.as_default(step=0):
        tf.summary.experimental.write_raw_pb(layout_summary.pb(layout).SerializeToString(), step=0)
    summary_writer.flush()


def hparams_of(config) -> dict:
    """The run's hyperparameters as TensorBoard HParams values (bool, int, float or str): what
    runs are compared by."""
    c = config
    values = {"algorithm": c.algorithm, "dataset": c.data.dataset, "ways": c.data.ways,
              "shots": c.data.shots, "queries": c.data.queries, "inner_lr": c.adapt.lr,
              "steps": c.adapt.steps, "test_steps": c.adapt.eval_steps,
              "first_order": c.adapt.first_order, "meta_batch": c.train.meta_batch,
              "meta_lr": c.train.meta_lr, "seed": c.train.seed, "iterations": c.train.iterations,
              "model": c.model.arch, "filters": c.model.filters, "hidden": str(c.model.hidden),
              "dtype": c.model.dtype, "norm": c.model.norm, "cosine_lr": c.train.cosine_lr,
              "per_step_lr": c.adapt.per_step_lr, "per_step_norm": c.adapt.per_step_norm}
    values.update(algorithms.get(c.algorithm).hparams(c))
    # The dataset's own, such as the protocol of every meta_test/* scalar of an Omniglot run.
    section = section_of(c.data.dataset)
    values.update(find(c.data.dataset).hparams(getattr(c.data, section, None)))
    return values


def hparams(summary_writer: tf.summary.SummaryWriter, values: Mapping) -> None:
    """Writes the HParams session of a run (once, when it starts); its final metrics are the last
    values of its scalars, which the HParams dashboard reads from the same run."""
    from tensorboard.plugins.hparams import api as hp

    with summary_writer.as_default(step=0):
        hp.hparams(dict(values))
    summary_writer.flush()
