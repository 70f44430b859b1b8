"""N-way K-shot classification episodes drawn from a pool of classes.

A pool holds C classes of uint8 images, stored flat: `images` [total, H, W, ch] in class order and
`counts` [C] images per class (a uniform array [C, M, H, W(, ch)] converts with `as_pool`). An
episode picks N distinct classes, relabels them 0..N-1 in the order drawn, and takes K support and Q
query images of each, all distinct. A pool in memory (Omniglot with rotations is about 100 MB)
becomes one tensor and an episode is two small random permutations and a gather; a memory-mapped
pool (MiniImagenet, 0.8 GB for its train split) stays on disk and an episode reads only its own
images. Both draw the same indices from the same seed.

A pool may also name a group for each class (Omniglot's alphabets): episodes drawn `within_groups`
take all N classes from one group, as Lake et al.'s one-shot protocol takes the 20 characters of a
task from one alphabet.
"""

import warnings
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfmeta.config.data import DataConfig
from tfmeta.errors import DataError
from tfmeta.tasks.augment import Augment
from tfmeta.tasks.episode import Episode
from tfmeta.tasks.image_format import ImageFormat, unit_pixels
from tfmeta.tasks.source import TaskSource


class Pool(NamedTuple):
    """Classes of images, flat.

    Attributes:
        images: uint8 [total, H, W, ch], class by class; a np.memmap is read lazily.
        counts: [C] images of each class, summing to total.
        names: C class names, for messages (default: the class indices).
        groups: C group names (e.g. each character's alphabet), or () when ungrouped.
    """
    images: np.ndarray
    counts: np.ndarray
    names: Sequence[str] = ()
    groups: Sequence[str] = ()

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


def group_sizes(pool: Pool) -> dict:
    """{group: number of classes}, in order of first appearance."""
    sizes: dict = {}
    for group in pool.groups:
        sizes[group] = sizes.get(group, 0) + 1
    return sizes


def check_pool(pool: Union[Pool, np.ndarray], ways: int, shots: int, queries: int,
               what: str, within_groups: bool = False) -> None:
    """Raises DataError when `pool` cannot supply N-way (K + Q)-example episodes, naming the
    classes that are too small; `within_groups`, when no group has N classes, naming each group.
    Groups with fewer than N classes are left out of within-group episodes, with a warning that
    names them."""
    pool = as_pool(pool)
    if within_groups:
        if not len(pool.groups):
            raise DataError(f"{what}: within-group episodes need a pool whose classes are grouped")
        sizes = group_sizes(pool)
        small = {g: n for g, n in sizes.items() if n < ways}
        listed = ", ".join(f"{g} ({n})" for g, n in small.items())
        if len(small) == len(sizes):
            raise DataError(f"{what}: {ways}-way episodes within one alphabet need an alphabet "
                            f"with at least {ways} characters, but every one has fewer: {listed}. "
                            "Lower data.ways, hold out other alphabets, or set "
                            "data.omniglot.episodes=any.")
        if small:
            warnings.warn(f"{what}: {len(small)} of {len(sizes)} alphabets have fewer than "
                          f"{ways} characters and are left out of its {ways}-way within-alphabet "
                          f"episodes: {listed}", stacklevel=2)
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
               dtype=tf.float32, augment: Optional[Augment] = None, within_groups: bool = False):
    """Returns a function drawing one Episode from a stateless seed.

    Episode fields: support_x [N*K, H, W, ch] of `dtype` in [0, 1], support_y [N*K] int32 (class-major
    order: K examples of class 0, then of class 1, ...), query_x [N*Q, H, W, ch], query_y [N*Q].
    `augment` maps the episode's images [N, K+Q, H, W, ch] from a seed folded from the episode's.
    `within_groups` first draws one of the groups with at least N classes, uniformly, then N of its
    classes.
    """
    pool = as_pool(pool)
    choose = _group_chooser(pool, ways) if within_groups else None
    gather = _gather(pool)
    counts = tf.constant(pool.counts, tf.int64)
    offsets = tf.constant(np.cumsum([0, *pool.counts[:-1]]), tf.int64)
    most = int(np.max(pool.counts))
    example_shape = pool.images.shape[1:]
    labels = lambda k: tf.repeat(tf.range(ways, dtype=tf.int32), k)  # noqa: E731

    def make_episode(seed: tf.Tensor) -> Episode:
        class_seed, example_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        keys = tf.random.stateless_uniform([pool.classes], class_seed)
        if choose is not None:
            keys = tf.where(choose(tf.random.experimental.stateless_fold_in(seed, 2)), keys, 2.0)
        chosen = tf.argsort(keys)[:ways]
        keys = tf.random.stateless_uniform([ways, most], example_seed)
        # A class with fewer images than the largest never picks past its own count.
        present = tf.range(most, dtype=tf.int64)[None, :] < tf.gather(counts, chosen)[:, None]
        picks = tf.argsort(tf.where(present, keys, 2.0), axis=1)[:, :shots + queries]
        index = tf.gather(offsets, chosen)[:, None] + tf.cast(picks, tf.int64)
        images = unit_pixels(gather(index), dtype)  # [N, K+Q, H, W, ch]
        if augment is not None:
            images = augment(images, tf.random.experimental.stateless_fold_in(seed, 1))
        flat = lambda x, k: tf.reshape(x, [ways * k, *example_shape])  # noqa: E731
        return Episode(flat(images[:, :shots], shots), labels(shots),
                       flat(images[:, shots:], queries), labels(queries))

    return make_episode


def _group_chooser(pool: Pool, ways: int):
    """A function from a stateless seed to a mask [C] bool of the classes of one group with at
    least `ways` classes, drawn uniformly among them."""
    names = sorted(g for g, n in group_sizes(pool).items() if n >= ways)
    member = tf.constant(np.array([[g == name for g in pool.groups] for name in names]))  # [G, C]

    def choose(seed: tf.Tensor) -> tf.Tensor:
        return tf.gather(member, tf.random.stateless_uniform([], seed, maxval=len(names),
                                                             dtype=tf.int32))
    return choose


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
        return unit_pixels(gather(index), dtype), tf.cast(label, tf.int32)

    return make_example


def source(config: DataConfig, pools: dict, dtype, name: str, example_shape: tuple,
           image_format: Optional[ImageFormat] = None, eval_split: str = "test",
           augment: Optional[Augment] = None, within_groups: bool = False) -> TaskSource:
    """The TaskSource of N-way classification episodes from `pools` ({split: Pool}), checked to
    hold enough classes and images for them; `augment` applies to the train split only."""
    fns, labelled = {}, {}
    for split, pool in pools.items():
        ways = config.split_ways(split)
        check_pool(pool, ways, config.shots, config.queries, f"{name} {split} split",
                   within_groups=within_groups)
        fns[split] = episode_fn(pool, ways, config.shots, config.queries, dtype,
                                augment=augment if split == "train" else None,
                                within_groups=within_groups)
        labelled[split] = labelled_fn(pool, dtype)
    # The splits whose episodes have fewer classes than the head (`data.test_ways`).
    fewer = {s: config.split_ways(s) for s in pools if config.split_ways(s) < config.ways}
    return TaskSource(tuple(example_shape), config.ways, "cross_entropy", fns, labelled,
                      {s: p.classes for s, p in pools.items()}, eval_split=eval_split,
                      image_format=image_format, ways=fewer)
