"""Linear regression on a mixture of easy and hard tasks (Collins, Mokhtari & Shakkottai).

Task i is y = x^T w_i + eps with x ~ N(0, rho_g I) in R^d and eps ~ N(0, sigma^2). It belongs to
the hard group with probability `hard_fraction`, otherwise to the easy group. A group g fixes the
data covariance rho_g I, whose size sets how fast gradient descent converges on the task (the
easy group's rho is the larger), and the distribution of the task optimum, w_i ~ N(c_g, nu_g^2 I).
The easy centre is the origin and the hard centre lies `centre_distance` away along
(1, ..., 1) / sqrt(d). Inputs have mean zero, so E[y] = 0 and a model's optimal bias is 0.

Drawing an episode costs (K + Q) * d normal draws and one [K + Q, d] x [d, 1] product.
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfmeta.config.data import DataConfig, LinearTasksConfig
from tfmeta.tasks.episode import Episode
from tfmeta.tasks.source import TaskSource


class Group(NamedTuple):
    """One group of the mixture: tasks with input covariance Sigma_g and w_i ~ N(c_g, nu_g^2 I).

    Attributes:
        probability: the group's share of the tasks.
        covariance: Sigma_g [d, d].
        centre: c_g [d].
        spread: nu_g.
    """
    probability: float
    covariance: np.ndarray
    centre: np.ndarray
    spread: float


def groups(config: LinearTasksConfig) -> tuple:
    """The (easy, hard) groups of `config`, in float64."""
    d = config.dim
    hard_centre = np.full(d, config.centre_distance / math.sqrt(d))
    easy = Group(1.0 - config.hard_fraction, config.rho_easy * np.eye(d), np.zeros(d),
                 config.spread_easy)
    hard = Group(config.hard_fraction, config.rho_hard * np.eye(d), hard_centre,
                 config.spread_hard)
    return easy, hard


def episode_fn(config: LinearTasksConfig, shots: int, queries: int, dtype=tf.float32):
    """Returns a function drawing one Episode from a stateless seed [2].

    The episode has support x [shots, d], y [shots, 1] and query x [queries, d], y [queries, 1],
    all from the same task.
    """
    easy, hard = groups(config)
    d, n = config.dim, shots + queries
    centres = tf.constant(np.stack([easy.centre, hard.centre]), dtype)
    spreads = tf.constant([easy.spread, hard.spread], dtype)
    scales = tf.constant([math.sqrt(config.rho_easy), math.sqrt(config.rho_hard)], dtype)

    def make_episode(seed: tf.Tensor) -> Episode:
        seeds = tf.random.experimental.stateless_split(seed, 4)
        is_hard = tf.random.stateless_uniform([], seeds[0], dtype=dtype) < config.hard_fraction
        g = tf.cast(is_hard, tf.int32)
        w = centres[g] + spreads[g] * tf.random.stateless_normal([d], seeds[1], dtype=dtype)
        x = scales[g] * tf.random.stateless_normal([n, d], seeds[2], dtype=dtype)
        eps = config.noise * tf.random.stateless_normal([n, 1], seeds[3], dtype=dtype)
        y = tf.matmul(x, w[:, None]) + eps
        return Episode(x[:shots], y[:shots], x[shots:], y[shots:])

    return make_episode


def task_source(config: LinearTasksConfig, shots: int, queries: int,
                dtype: str = "float32") -> TaskSource:
    """A TaskSource of `config`'s tasks (the same distribution for the train and test splits)."""
    make_episode = episode_fn(config, shots, queries, tf.as_dtype(dtype))
    return TaskSource((config.dim,), 1, "mse", {"train": make_episode, "test": make_episode})


def source(config: DataConfig, dtype=tf.float32) -> TaskSource:
    """The TaskSource of data.linear's tasks, with data.shots and data.queries points."""
    return task_source(config.linear, config.shots, config.queries, dtype)
