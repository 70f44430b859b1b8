"""N-way K-shot classification episodes drawn from a pool of classes.

A pool is a uint8 array [C, M, H, W] or [C, M, H, W, ch]: C classes with M examples each. An episode
picks N distinct classes, relabels them 0..N-1 in the order drawn, and takes K support and Q query
examples of each, all distinct. The pool lives in memory as one tensor (Omniglot with rotations is
about 100 MB), so drawing an episode is two small random permutations and a gather.
"""

import numpy as np
import tensorflow as tf

from tfmeta.errors import DataError
from tfmeta.tasks.episode import Episode


def check_pool(pool: np.ndarray, ways: int, shots: int, queries: int, what: str) -> None:
    """Raises DataError when `pool` cannot supply N-way (K + Q)-example episodes."""
    classes, per_class = pool.shape[:2]
    if ways > classes:
        raise DataError(f"{what}: {ways}-way episodes need at least {ways} classes, but the "
                        f"split has {classes}.")
    if shots + queries > per_class:
        raise DataError(f"{what}: each class has {per_class} examples, fewer than shots + queries "
                        f"= {shots} + {queries} = {shots + queries}. Lower data.shots or "
                        f"data.queries.")


def episode_fn(pool: np.ndarray, ways: int, shots: int, queries: int, dtype=tf.float32):
    """Returns a function drawing one Episode from a stateless seed.

    Episode fields: support_x [N*K, H, W, ch] of `dtype` in [0, 1], support_y [N*K] int32 (class-major
    order: K examples of class 0, then of class 1, ...), query_x [N*Q, H, W, ch], query_y [N*Q].
    """
    pool = tf.constant(pool if pool.ndim == 5 else pool[..., None])
    classes, per_class = pool.shape[:2]
    example_shape = pool.shape[2:]
    labels = lambda k: tf.repeat(tf.range(ways, dtype=tf.int32), k)  # noqa: E731

    def make_episode(seed: tf.Tensor) -> Episode:
        class_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        chosen = tf.argsort(tf.random.stateless_uniform([classes], class_seed))[:ways]
        picks = tf.argsort(tf.random.stateless_uniform([ways, per_class], example_seed),
                           axis=1)[:, :shots + queries]
        images = tf.gather(tf.gather(pool, chosen), picks, batch_dims=1)  # [N, K+Q, H, W, ch]
        images = tf.cast(images, dtype) / 255.0
        flat = lambda x, k: tf.reshape(x, [ways * k, *example_shape])  # noqa: E731
        return Episode(flat(images[:, :shots], shots), labels(shots),
                       flat(images[:, shots:], queries), labels(queries))

    return make_episode


def labelled_fn(pool: np.ndarray, dtype=tf.float32):
    """Returns a function drawing one (image [H, W, ch] in [0, 1], class int32 []) uniformly from
    the pool's C x M examples; the class is the pool index, 0..C-1."""
    pool = tf.constant(pool if pool.ndim == 5 else pool[..., None])
    classes, per_class = pool.shape[:2]

    def make_example(seed: tf.Tensor) -> tuple:
        index = tf.random.stateless_uniform([], seed, maxval=classes * per_class, dtype=tf.int32)
        image = pool[index // per_class, index % per_class]
        return tf.cast(image, dtype) / 255.0, index // per_class

    return make_example
