"""Seeded streams of episodes as `tf.data` pipelines.

Episode i of a stream is a pure function of (seed, i): it is drawn with stateless random ops from
`stateless_fold_in(seed, i)`. Two runs with the same seed see the same tasks, and a resumed run picks
up the stream at the episode where it stopped, without replaying anything.
"""

from typing import Callable

import tensorflow as tf

from tfmeta.tasks.episode import Episode

EpisodeFn = Callable[[tf.Tensor], Episode]  # stateless seed [2] int32 -> one Episode


def episode_seed(seed: int, stream: int) -> tf.Tensor:
    """The base stateless seed [2] of one stream (e.g. meta-train 0, meta-test 1) of a run."""
    return tf.constant([seed, stream], tf.int64)


def episodes(make_episode: EpisodeFn, seed: tf.Tensor, meta_batch: int, start: int = 0,
             count: int = -1, stride: int = 0) -> tf.data.Dataset:
    """Meta-batches of episodes start, start + 1, ... of the stream `seed`.

    Args:
        make_episode: draws one episode from a stateless seed.
        seed: the stream's base seed [2].
        meta_batch: tasks per element; each element is an Episode with fields [meta_batch, ...].
        start: index of the first episode (a resumed run passes iteration * meta_batch); or an
            int64 `tf.Variable` read when each element is drawn, so that a stream built before
            a restore (Keras' `BackupAndRestore`) continues where the restored run stopped.
        count: number of episodes, or -1 for an endless stream. A final partial batch is kept.
        stride: element t holds episodes start + t * stride ... + meta_batch - 1; 0 means
            meta_batch (consecutive episodes). A replica taking its share m of each global
            meta-batch of n passes meta_batch m, stride n and its own offset in `start`.

    Returns:
        A dataset of batched Episodes, prefetched.
    """
    if isinstance(start, tf.Variable):
        indices = tf.data.Dataset.range(count if count >= 0 else 2**62)
        indices, start = indices.map(lambda i: i + start.read_value()), 0
        if stride and stride != meta_batch:
            raise ValueError("a stride needs a fixed start")
    else:
        indices = tf.data.Dataset.range(start, start + count if count >= 0 else 2**62)
    if stride and stride != meta_batch:
        indices = indices.filter(lambda i: (i - start) % stride < meta_batch)
    stream = indices.map(
        lambda i: make_episode(tf.random.experimental.stateless_fold_in(seed, i)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return stream.batch(meta_batch, drop_remainder=count < 0).prefetch(tf.data.AUTOTUNE)
