"""A Keras face: meta-learning through `compile`, `fit` and `evaluate`.

`MetaLearner` wraps a `MetaModel` in a `keras.Model` whose `train_step` is one meta-step of a
tfmeta algorithm (the same `meta_gradient` the command line's loop calls, through the same
`adaptation.adapt`) and whose `test_step` adapts to each episode's support set and scores its
queries. It takes a `tf.data` dataset of meta-batches of episodes, as `TaskSource.episodes`
gives them, so `steps_per_execution`, Keras callbacks and `evaluate` work as for any Keras model:

    source = tasks.build(config.data)
    learner = MetaLearner.from_config(config, source)
    learner.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=10)
    learner.fit(learner.episodes(source, "train", seed=0, meta_batch=4), epochs=5,
                steps_per_epoch=100)
"""

from pathlib import Path
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tfmeta import algorithms, meta_batch, rundir
from tfmeta.adaptation import adapt
from tfmeta.config import Config
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.algorithms import AlgorithmConfig
from tfmeta.config.landscape import LandscapeConfig
from tfmeta.config.train import TASK_MAPPINGS
from tfmeta.errors import ConfigError
from tfmeta.landscape import Landscape
from tfmeta.losses import query_metrics
from tfmeta.models import MetaModel, params_of
from tfmeta.tasks.episode import Episode


class MetaLearner(keras.Model):
    """A `MetaModel` that meta-learns under `fit`.

    Args:
        model: the network, as `tfmeta.models.build` (or `run.build_model`) makes it; its inner
            loop (head only, learned rates, per-step norms) must match `algorithm`.
        algorithm: a name of `tfmeta.algorithms.REGISTRY` other than "finetune", whose minibatch
            pre-training is not episodic.
        adapt_config: the inner loop: steps, rate, first order, test steps.
        options: the algorithms' options (`AlgorithmConfig`); defaults when None.
        mapping: how tasks map onto ops: "loop", "map" or "vectorized" (`meta_batch`).
        iterations_per_epoch: meta-steps per epoch, for options counted in epochs (MAML++'s
            multi-step loss, derivative-order annealing); the optimizer's iteration count
            divided by it is the epoch.
    """

    def __init__(self, model: MetaModel, algorithm: str = "maml",
                 adapt_config: Optional[AdaptConfig] = None,
                 options: Optional[AlgorithmConfig] = None, mapping: str = "loop",
                 iterations_per_epoch: int = 1, **kwargs):
        super().__init__(**kwargs)
        if algorithm not in algorithms.REGISTRY or algorithms.get(algorithm).supervised:
            episodic = [n for n, a in algorithms.REGISTRY.items() if not a.supervised]
            raise ConfigError(f"MetaLearner: algorithm must be one of {', '.join(episodic)}, "
                              f"got {algorithm!r}")
        options = options or AlgorithmConfig()
        if options.maml.first_order_epochs:
            raise ConfigError("MetaLearner: algorithms.maml.first_order_epochs (derivative-order "
                              "annealing) is not supported yet; use tfmeta train, or set it to 0")
        if mapping not in TASK_MAPPINGS:
            raise ConfigError(f"MetaLearner: mapping must be one of {', '.join(TASK_MAPPINGS)}, "
                              f"got {mapping!r}")
        self.net = model
        self.config: Optional[Config] = None     # the tfmeta config, when from_config built it
        self.algorithm = algorithm
        self.adapt_config = adapt_config or AdaptConfig()
        self.mapping = mapping
        self._meta_gradient = algorithms.get(algorithm).meta_gradient(
            options, lambda: self.optimizer.iterations // iterations_per_epoch)
        names = ["loss"] if model.loss_name == "mse" else ["loss", "accuracy"]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = model.built    # its weights exist: callbacks may save and restore them
        # The first episode of `episodes` streams, set when fit starts (after any restore).
        self._first_episode = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._stream_batch = 0

    @classmethod
    def from_config(cls, config: Config, source) -> "MetaLearner":
        """The learner a tfmeta config describes, with the model the command line would build
        from it (same seed, architecture and inner loop)."""
        from tfmeta.run import build_model, task_mapping
        model = build_model(config, source)
        learner = cls(model, config.algorithm, config.adapt, config.algorithms,
                      task_mapping(config, model), config.train.iterations)
        learner.config = config
        return learner

    def save_run(self, run_dir) -> Path:
        """Writes a run directory that `tfmeta evaluate`, `analyze` and `export` open as if
        `tfmeta train` had written it: the config of `from_config` and a checkpoint of the
        network, Adam's state and the meta-step count. Returns the checkpoint's path."""
        config = self.config
        if config is None:
            raise ConfigError("save_run needs the learner's tfmeta config: build it with "
                              "MetaLearner.from_config")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(run_dir, config)
        from tfmeta.run import checkpoint_manager, run_checkpoint
        iterations = int(self.optimizer.iterations)
        checkpoint = run_checkpoint(self.net, self.optimizer,
                                    tf.Variable(iterations, dtype=tf.int64))
        return Path(checkpoint_manager(run_dir, checkpoint).save(checkpoint_number=iterations))

    def episodes(self, source, split: str = "train", seed: int = 0, meta_batch: int = 4
                 ) -> tf.data.Dataset:
        """The split's endless stream of meta-batches for `fit`, which starts at the meta-step
        the optimizer stands at when `fit` begins: after a `BackupAndRestore` restart, training
        continues the stream an uninterrupted run would have seen (as `tfmeta train --resume`
        does). Elements: Episodes with [meta_batch, ...] fields."""
        self._stream_batch = meta_batch
        return source.episodes(split, seed, meta_batch, start=self._first_episode)

    def fit(self, *args, shuffle: bool = False, callbacks=None, **kwargs):
        """`keras.Model.fit`. Episodes come shuffled from their seeded stream, so `shuffle` is
        off by default (Keras ignores it for a `tf.data` dataset, with a warning)."""
        callbacks = [*(callbacks or []), _StreamStart()]   # after any restore in the list
        return super().fit(*args, shuffle=shuffle, callbacks=callbacks, **kwargs)

    @property
    def metrics(self) -> list:
        return list(self._trackers.values())

    def call(self, x, training: bool = False):
        """The network's outputs at its meta-learned weights, without adaptation: [B, outputs]."""
        return self.net(x, training=training)

    def train_step(self, data: Episode) -> dict:
        """One meta-step on a meta-batch of episodes ([n, ...] fields; under a `tf.distribute`
        strategy, this replica's share of the global meta-batch)."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # Each replica divides by the global meta-batch; the optimizer sums the replicas' shares.
        n = (data.support_x.shape[0] or tf.shape(data.support_x)[0]) * replicas
        grads, metrics = self._meta_gradient(self.net, params_of(self.net), data,
                                             self.adapt_config, n, self.mapping)
        self.optimizer.apply(grads, self.net.trainable_variables)
        return self._record(metrics)

    def test_step(self, data: Episode) -> dict:
        """Adapts to each episode's support set (the test steps) and scores its queries."""
        params = params_of(self.net)

        def one_task(episode: Episode) -> dict:
            adapted, _ = adapt(self.net, params, episode.support, self.adapt_config,
                               steps=self.adapt_config.eval_steps)
            found = query_metrics(self.net, adapted, episode)
            return {name: found[name] for name in self._trackers}

        n = tf.cast(tf.shape(data.support_x)[0], params[0].dtype)
        sums = meta_batch.sum_tasks(one_task, data, self.mapping)
        return self._record({name: value / n for name, value in sums.items()})

    def _record(self, means: dict) -> dict:
        """Adds a meta-batch's per-task means to the running means; returns those."""
        for name, tracker in self._trackers.items():
            tracker.update_state(means[name])
        return {name: tracker.result() for name, tracker in self._trackers.items()}


class _StreamStart(keras.callbacks.Callback):
    """Points the learner's `episodes` streams at the optimizer's meta-step when training begins,
    after the callbacks before it (BackupAndRestore) have restored the weights and optimizer."""

    def on_train_begin(self, logs=None):
        learner = self.model
        learner._first_episode.assign(
            tf.cast(learner.optimizer.iterations, tf.int64) * learner._stream_batch)


class LandscapeMetrics(keras.callbacks.Callback):
    """Measures the landscape metrics (`tfmeta.landscape`: flatness, the coherences, trajectory
    norm) of held-out tasks after every `config.every`-th epoch, at the learner's weights, and adds
    them to the epoch's logs as "landscape/<metric>", which `History` keeps and a
    `keras.callbacks.TensorBoard` placed after this callback writes.

    Args:
        source: the learner's task source; its tasks come from its validation split where there
            is one, else from test, drawn once from `config.seed`.
        config: the landscape protocol (tasks, eigenvalue method and tolerance, opt-in metrics).
    """

    def __init__(self, source, config: Optional[LandscapeConfig] = None):
        super().__init__()
        self.source, self.config = source, config or LandscapeConfig()
        self._landscape = None

    def on_train_begin(self, logs=None):
        learner = self.model
        self._landscape = Landscape(learner.net, self.source, learner.adapt_config, self.config,
                                    learner.mapping)

    def on_epoch_end(self, epoch, logs=None):
        every = self.config.every
        if logs is None or not every or (epoch + 1) % every:
            return
        measured = self._landscape.measure(progress=False)
        logs.update({f"landscape/{name}": float(value) for name, value in measured.items()
                     if np.ndim(value) == 0})
