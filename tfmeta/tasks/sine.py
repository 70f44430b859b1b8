"""Sine regression (Finn et al., 2017): y = A sin(x + phi) with K support and Q query points.

Each task draws A, phi uniformly from its split's ranges and x uniformly from `x_range`. The MAML
paper draws A in [0.1, 5], phi in [0, pi] and x in [-5, 5] for every split; the landscape paper's
regression experiment uses disjoint meta-train and meta-test ranges (preset `sine_disjoint`).
"""

import tensorflow as tf

from tfmeta.config.data import DataConfig, SineConfig
from tfmeta.tasks.episode import Episode
from tfmeta.tasks.source import TaskSource


def episode_fn(config: SineConfig, shots: int, queries: int, split: str, dtype=tf.float32):
    """Returns a function drawing one sine Episode (x [shots, 1], y [shots, 1], ...) from a seed."""
    amplitude = config.test_amplitude if split == "test" else config.amplitude
    phase = config.test_phase if split == "test" else config.phase

    def make_episode(seed: tf.Tensor) -> Episode:
        seeds = tf.random.experimental.stateless_split(seed, 3)
        a, phi = tf.unstack(tf.random.stateless_uniform(
            [2], seeds[0], minval=[amplitude[0], phase[0]], maxval=[amplitude[1], phase[1]],
            dtype=dtype))
        x = tf.random.stateless_uniform([shots + queries, 1], seeds[1], minval=config.x_range[0],
                                        maxval=config.x_range[1], dtype=dtype)
        y = a * tf.sin(x + phi)
        return Episode(x[:shots], y[:shots], x[shots:], y[shots:])

    return make_episode


def labelled_fn(config: SineConfig, split: str, dtype=tf.float32):
    """Returns a function drawing one (x [1], y [1]) point of a fresh task of the split."""
    make_episode = episode_fn(config, 1, 0, split, dtype)

    def make_example(seed: tf.Tensor) -> tuple:
        episode = make_episode(seed)
        return episode.support_x[0], episode.support_y[0]

    return make_example


def source(config: DataConfig, dtype=tf.float32) -> TaskSource:
    """Sine regression's TaskSource: train and test splits, and labelled points of each."""
    splits = ("train", "test")
    fns = {s: episode_fn(config.sine, config.shots, config.queries, s, dtype) for s in splits}
    labelled = {s: labelled_fn(config.sine, s, dtype) for s in splits}
    return TaskSource((1,), 1, "mse", fns, labelled_fns=labelled, classes={s: 1 for s in splits})
