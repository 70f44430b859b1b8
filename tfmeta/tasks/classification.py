"""N-way K-shot classification episodes drawn from a pool of classes.

A pool holds C classes of uint8 images, stored flat: `images` [total, H, W, ch] in class order and
`counts` [C] images per class (a uniform array [C, M, H, W(, ch)] converts with `as_pool`). An
episode picks N distinct classes, relabels them 0..N-1 in the order drawn, and takes K support and Q
query images of each, all distinct. A pool in memory (Omniglot with rotations is about 100 MB)
becomes one tensor and an episode is two small random permutations and a gather; a memory-mapped
pool (MiniImagenet, 0.8 GB for its train split) stays on disk and an episode reads only its own
images. Both draw the same indices from the same seed.
"""

from typing import NamedTuple, Sequence, Union

import numpy as np
import tensorflow as tf

from tfmeta.errors import DataError
from tfmeta.tasks.episode import Episode


class Pool(NamedTuple):
    """Classes of images, flat.

    Attributes:
        images: uint8 [total, H, W, ch], class by class; a np.memmap is read lazily.
        counts: [C] images of each class, summing to total.
        names: C class names, for messages (default: the class indices).
    """
    images: np.ndarray
    counts: np.ndarray
    names: Sequence[str] = ()

    @property
    def classes(self) -> int:
        return len(self.counts)

    def name(self, c: int) -> str:
        return str(self.names[c]) if len(self.names) else str(c)


def as_pool(pool: Union[Pool, np.ndarray]) -> Pool:
    """A Pool from a Pool, or from a uniform array [C, M, H, W] or [C, M, H, W, ch]."""
    if isinstance(pool, Pool):
        return pool
    classes, per_class = pool.shape[:2]
    images = pool.reshape(classes * per_class, *pool.shape[2:])
    if images.ndim == 3:
        images = images[..., None]
    return Pool(images, np.full(classes, per_class, np.int64))


def check_pool(pool: Union[Pool, np.ndarray], ways: int, shots: int, queries: int,
               what: str) -> None:
    """Raises DataError when `pool` cannot supply N-way (K + Q)-example episodes, naming the
    classes that are too small."""
    pool = as_pool(pool)
    if ways > pool.classes:
        raise DataError(f"{what}: {ways}-way episodes need at least {ways} classes, but the "
                        f"split has {pool.classes}.")
    need = shots + queries
    small = [c for c in range(pool.classes) if pool.counts[c] < need]
    if small:
        listed = ", ".join(f"{pool.name(c)} ({pool.counts[c]})" for c in small[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        raise DataError(f"{what}: {len(small)} of {pool.classes} classes have fewer examples "
                        f"than shots + queries = {shots} + {queries} = {need}: {listed}{more}. "
                        "Lower data.shots or data.queries.")


def _gather(pool: Pool):
    """A function from indices [...] int64 to uint8 images [..., H, W, ch] of the pool."""
    shape = pool.images.shape[1:]
    if isinstance(pool.images, np.memmap):
        images = pool.images

        def read(index):
            return tf.ensure_shape(
                tf.numpy_function(lambda i: images[i], [index], tf.uint8, stateful=False),
                [*index.shape, *shape])
        return read
    images = tf.constant(pool.images)
    return lambda index: tf.gather(images, index)


def episode_fn(pool: Union[Pool, np.ndarray], ways: int, shots: int, queries: int,
               dtype=tf.float32, augment: bool = False):
    """Returns a function drawing one Episode from a stateless seed.

    Episode fields: support_x [N*K, H, W, ch] of `dtype` in [0, 1], support_y [N*K] int32 (class-major
    order: K examples of class 0, then of class 1, ...), query_x [N*Q, H, W, ch], query_y [N*Q].
    `augment` flips each image left-right with probability 1/2 and shifts it by up to 1/8 of its
    size (a random crop of the zero-padded image), from the episode's seed.
    """
    pool = as_pool(pool)
    gather = _gather(pool)
    counts = tf.constant(pool.counts, tf.int64)
    offsets = tf.constant(np.cumsum([0, *pool.counts[:-1]]), tf.int64)
    most = int(np.max(pool.counts))
    example_shape = pool.images.shape[1:]
    labels = lambda k: tf.repeat(tf.range(ways, dtype=tf.int32), k)  # noqa: E731

    def make_episode(seed: tf.Tensor) -> Episode:
        class_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        chosen = tf.argsort(tf.random.stateless_uniform([pool.classes], class_seed))[:ways]
        keys = tf.random.stateless_uniform([ways, most], example_seed)
        # A class with fewer images than the largest never picks past its own count.
        present = tf.range(most, dtype=tf.int64)[None, :] < tf.gather(counts, chosen)[:, None]
        picks = tf.argsort(tf.where(present, keys, 2.0), axis=1)[:, :shots + queries]
        index = tf.gather(offsets, chosen)[:, None] + tf.cast(picks, tf.int64)
        images = tf.cast(gather(index), dtype) / 255.0  # [N, K+Q, H, W, ch]
        if augment:
            images = _augment(tf.reshape(images, [-1, *example_shape]),
                              tf.random.experimental.stateless_fold_in(seed, 1))
            images = tf.reshape(images, [ways, shots + queries, *example_shape])
        flat = lambda x, k: tf.reshape(x, [ways * k, *example_shape])  # noqa: E731
        return Episode(flat(images[:, :shots], shots), labels(shots),
                       flat(images[:, shots:], queries), labels(queries))

    return make_episode


def _augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Random left-right flips and shifts of images [B, H, W, ch], from a stateless seed."""
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    count, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    flip = tf.random.stateless_uniform([count], flip_seed) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    pad_h, pad_w = height // 8, width // 8
    padded = tf.pad(images, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    top = tf.random.stateless_uniform([count], crop_seed, maxval=2 * pad_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([count], crop_seed[::-1], maxval=2 * pad_w + 1,
                                       dtype=tf.int32)
    rows = top[:, None] + tf.range(height)[None, :]                      # [B, H]
    cols = left[:, None] + tf.range(width)[None, :]                      # [B, W]
    images = tf.gather(padded, rows, batch_dims=1)                      # [B, H, W + 2pw, ch]
    return tf.gather(images, cols, axis=2, batch_dims=1)                # [B, H, W, ch]


def labelled_fn(pool: Union[Pool, np.ndarray], dtype=tf.float32):
    """Returns a function drawing one (image [H, W, ch] in [0, 1], class int32 []) uniformly from
    the pool's examples; the class is the pool index, 0..C-1."""
    pool = as_pool(pool)
    gather = _gather(pool)
    offsets = tf.constant(np.cumsum([0, *pool.counts[:-1]]), tf.int64)
    total = int(np.sum(pool.counts))

    def make_example(seed: tf.Tensor) -> tuple:
        index = tf.cast(tf.random.stateless_uniform([], seed, maxval=total, dtype=tf.int32),
                        tf.int64)
        label = tf.searchsorted(offsets, index[None], side="right")[0] - 1
        return tf.cast(gather(index), dtype) / 255.0, tf.cast(label, tf.int32)

    return make_example
