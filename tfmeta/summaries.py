"""TensorBoard logging: every number a researcher would plot, under stable tag names.

Tags: meta_train/<metric> (means over the epoch's meta-iterations) and meta_test/<metric> with
meta_test/<metric>_ci95 (95% interval half-widths over the fixed meta-test tasks). The step is the
meta-iteration.
"""

from pathlib import Path
from typing import Mapping

import tensorflow as tf


def writer(run_dir: Path) -> tf.summary.SummaryWriter:
    """The run's event-file writer, under run_dir/logs."""
    return tf.summary.create_file_writer(str(Path(run_dir) / "logs"))


def scalars(summary_writer: tf.summary.SummaryWriter, prefix: str, values: Mapping[str, float],
            step: int) -> None:
    """Writes {name: value} as scalars tagged prefix/name at `step`, and flushes."""
    with summary_writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(f"{prefix}/{name}", value)
    summary_writer.flush()
