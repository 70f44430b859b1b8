"""A Keras face: meta-learning through `compile`, `fit` and `evaluate`.

`MetaLearner` wraps a `MetaModel` in a `keras.Model` whose training runs the command line's own
compiled meta-steps (`training.MetaSteps`: the same meta-gradient, the same guarded update, the
same loop of several steps per call) and whose `test_step` adapts to each episode's support set
and scores its queries. It takes a `tf.data` dataset of meta-batches of episodes, as
`TaskSource.episodes` gives them, so `steps_per_execution`, Keras callbacks and `evaluate` work
as for any Keras model:

    source = tasks.build(config.data)
    learner = MetaLearner.from_run_config(config, source)
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
from tfmeta.adaptation import AdaptedTask, Origin, adapt, adapt_task
from tfmeta.config import Config
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.algorithms import AlgorithmConfig
from tfmeta.config.landscape import LandscapeConfig
from tfmeta.config.train import TASK_MAPPINGS
from tfmeta.errors import ConfigError
from tfmeta.landscape import Landscape
from tfmeta.losses import query_metrics
from tfmeta.record_keys import LANDSCAPE
from tfmeta.models import MetaModel
from tfmeta.tasks.episode import Episode
from tfmeta.tasks.source import TaskSource
from tfmeta.training import MetaSteps, StepMeans

__all__ = ["MetaLearner", "LandscapeMetrics"]

_SAVED = ("a MetaLearner is saved as a run directory, not as a Keras file, because its MetaModel "
          "and inner loop are not Keras-serializable: use learner.save_run(DIR), which tfmeta "
          "evaluate, analyze and export open, or save_weights (ModelCheckpoint with "
          "save_weights_only=True)")


class MetaLearner(keras.Model):
    """A `MetaModel` that meta-learns under `fit`.

    Args:
        model: the network, as `tfmeta.models.build` or `tfmeta.models.from_keras` makes it; its
            inner loop (head only, learned rates, gains) must be the one `algorithm` adapts.
        algorithm: a name of `tfmeta.algorithms.REGISTRY`.
        adapt_config: the inner loop: steps, rate, first order, test steps.
        options: the algorithms' options (`AlgorithmConfig`); defaults when None.
        mapping: how tasks map onto ops: "loop", "map" or "vectorized" (`meta_batch`).
        iterations_per_epoch: meta-steps per epoch, for options counted in epochs (MAML++'s
            multi-step loss, derivative-order annealing); the optimizer's iteration count
            divided by it is the epoch.
        eval_model: the network that adapts at meta-test; by default `model` (the finetune
            baseline's differs: `from_run_config`).
        origin: where meta-test adaptation starts; by default `model`'s own weights.
    """

    def __init__(self, model: MetaModel, algorithm: str = "maml",
                 adapt_config: Optional[AdaptConfig] = None,
                 options: Optional[AlgorithmConfig] = None, mapping: str = "loop",
                 iterations_per_epoch: int = 1, eval_model: Optional[MetaModel] = None,
                 origin: Optional[Origin] = None, **kwargs):
        super().__init__(**kwargs)
        _check(model, algorithm, mapping, origin)
        self.net = model
        self.eval_net = eval_model or model
        self.origin = origin or Origin(model)
        self.config: Optional[Config] = None  # the tfmeta config, when from_run_config built it
        self.algorithm = algorithm
        self.adapt_config = adapt_config or AdaptConfig()
        self.options = options or AlgorithmConfig()
        self.mapping = mapping
        self.iterations_per_epoch = iterations_per_epoch
        names = ["loss"] if model.loss_name == "mse" else ["loss", "accuracy"]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._training = _TrainingMeans()
        self.built = model.built    # its weights exist: callbacks may save and restore them
        # The first episode of `episodes` streams, set when fit starts (after any restore).
        self._first_episode = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._stream_batch = 0
        self._iteration = None   # the optimizer's meta-step, counted on the host during fit
        self._endless = False    # whether fit's dataset never ends

    @classmethod
    def from_run_config(cls, config: Config, source) -> "MetaLearner":
        """The learner a tfmeta config describes, with the networks the command line would build
        from it (same seed, architecture and inner loop)."""
        from tfmeta.run import build_model, task_mapping
        model, eval_model, origin = algorithms.get(config.algorithm).networks(
            config, source, build_model)
        learner = cls(model, config.algorithm, config.adapt, config.algorithms,
                      task_mapping(config, model), config.train.iterations, eval_model, origin)
        learner.config = config
        return learner

    def save_run(self, run_dir) -> Path:
        """Writes a run directory that `tfmeta evaluate`, `analyze` and `export` open as if
        `tfmeta train` had written it: the config of `from_run_config` and a checkpoint of the
        network, Adam's state and the meta-step count. Returns the run directory."""
        config = self.config
        if config is None:
            raise ConfigError("save_run needs the learner's tfmeta config: build it with "
                              "MetaLearner.from_run_config")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_config(run_dir, config)
        from tfmeta.run import checkpoint_manager, run_checkpoint
        iterations = int(self.optimizer.iterations)
        checkpoint = run_checkpoint(self.net, self.optimizer,
                                    tf.Variable(iterations, dtype=tf.int64))
        checkpoint_manager(run_dir, checkpoint).save(checkpoint_number=iterations)
        return run_dir

    def get_config(self):
        raise ConfigError(_SAVED)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        raise ConfigError(_SAVED)

    def save(self, *args, **kwargs):
        raise ConfigError(_SAVED)

    def export(self, *args, **kwargs):
        raise ConfigError("a MetaLearner is exported through its run: learner.save_run(DIR), "
                          "then tfmeta export DIR, whose SavedModel adapts to each request's "
                          "support set (Keras' export would serve the unadapted network)")

    def compile(self, optimizer="adam", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, **kwargs):
        """`keras.Model.compile` with the optimizer, `steps_per_execution` and `jit_compile`;
        the loss and metrics are the algorithm's, so any other is refused, as is mixed
        precision, whose loss scaling Keras would apply to the meta-gradient."""
        given = [name for name, value in (("loss", loss), ("loss_weights", loss_weights),
                                          ("metrics", metrics),
                                          ("weighted_metrics", weighted_metrics)) if value]
        if given:
            raise ConfigError(f"MetaLearner.compile takes no {given[0]}: the objective is the "
                              f"algorithm's ({self.algorithm}) query loss after adaptation, and "
                              f"the metrics are its {' and '.join(self._trackers)}")
        policy = keras.mixed_precision.global_policy().name
        if "mixed" in (policy + self.dtype_policy.name) or isinstance(
                optimizer, keras.optimizers.LossScaleOptimizer):
            raise ConfigError(f"MetaLearner does not meta-train in mixed precision (the global "
                              f"policy is {policy}): Keras' loss scaling would divide every "
                              "meta-gradient by the scale; set the policy to float32 before "
                              "building the learner")
        super().compile(optimizer=optimizer, **kwargs)

    def episodes(self, source, split: str = "train", seed: int = 0, meta_batch: int = 4
                 ) -> tf.data.Dataset:
        """The split's endless stream for `fit`: meta-batches of episodes (for the finetune
        baseline, minibatches of `meta_batch` labelled examples), which starts at the meta-step
        the optimizer stands at when `fit` begins: after a `BackupAndRestore` restart, training
        continues the stream an uninterrupted run would have seen (as `tfmeta train --resume`
        does). Elements: Episodes with [meta_batch, ...] fields, or (x, y) minibatches."""
        self._stream_batch = meta_batch
        if algorithms.get(self.algorithm).supervised:
            return source.labelled(split, seed, meta_batch, start=self._first_episode)
        return source.episodes(split, seed, meta_batch, start=self._first_episode)

    def fit(self, *args, shuffle: bool = False, callbacks=None, **kwargs):
        """`keras.Model.fit`. Episodes come shuffled from their seeded stream, so `shuffle` is
        off by default; `class_weight` and `sample_weight` are refused (every task counts
        alike in the meta-objective); `LandscapeMetrics` runs before the other callbacks
        wherever it is listed, so that TensorBoard and History see its values. A meta-step
        whose loss is not finite changes nothing and stops training with `DivergedError`."""
        for name in ("class_weight", "sample_weight"):
            if kwargs.get(name) is not None:
                raise ConfigError(f"MetaLearner.fit takes no {name}: the meta-objective weighs "
                                  "every task of a meta-batch alike (gradient-agreement weighs "
                                  "them by its own rule)")
        callbacks = list(callbacks or [])
        first = [c for c in callbacks if isinstance(c, LandscapeMetrics)]
        callbacks = [*first, *(c for c in callbacks if c not in first),
                     _StreamStart()]   # after any restore in the list
        data = args[0] if args else kwargs.get("x")
        endless = isinstance(data, tf.data.Dataset) and int(
            data.cardinality()) == tf.data.INFINITE_CARDINALITY
        if endless != self._endless:   # a stream that never ends needs no check for its end
            self.train_function, self._endless = None, endless
        self._iteration = None
        return super().fit(*args, shuffle=shuffle, callbacks=callbacks, **kwargs)

    def make_train_function(self, force: bool = False):
        """The command line's compiled meta-steps (`training.MetaSteps`), up to
        `steps_per_execution` per call, under the learner's strategy."""
        if self.train_function is not None and not force:
            return self.train_function
        steps = MetaSteps(self.net, self.optimizer, self.algorithm, self.options,
                          self.adapt_config, None, self.mapping, self.iterations_per_epoch,
                          self.steps_per_execution, bool(self.jit_compile),
                          self.distribute_strategy, self._endless)

        def train_function(iterator) -> dict:
            if self._iteration is None:   # read once per fit, after any restore
                self._iteration = int(self.optimizer.iterations.numpy())
            metrics, finite = steps(self._iteration // self.iterations_per_epoch)(
                iterator, self.steps_per_execution)
            self._iteration += self._training.steps.add(
                metrics, finite, self._iteration, "; that step changed nothing: the weights "
                "and Adam's state are those before it. Try a lower learning rate or adapt.lr.")
            return self._training.result()

        self.train_function = train_function
        return train_function

    @property
    def metrics(self) -> list:
        return [*self._trackers.values(), self._training]

    def adapt(self, support: tuple, steps: Optional[int] = None) -> AdaptedTask:
        """Adapts to one task's support set (x [K, ...], y [K] or [K, 1]) once, from where
        meta-test adaptation starts, by the test steps (or `steps`); the returned task's
        `predict(x)` runs only the forward pass at the adapted weights."""
        support = tuple(tf.convert_to_tensor(v) for v in support)
        params = self.origin.params()
        return adapt_task(self.eval_net, self.origin.task(params, support), support,
                          self.adapt_config, steps)

    def call(self, x, training: bool = False):
        """The network's outputs at its meta-learned weights, without adaptation: [B, outputs]."""
        return self.net(x, training=training)

    def test_step(self, data: Episode) -> dict:
        """Adapts to each episode's support set (the test steps) and scores its queries."""
        params = self.origin.params()

        def one_task(episode: Episode) -> dict:
            adapted, _ = adapt(self.eval_net, self.origin.task(params, episode.support),
                               episode.support, self.adapt_config,
                               steps=self.adapt_config.eval_steps)
            found = query_metrics(self.eval_net, adapted, episode)
            return {name: found[name] for name in self._trackers}

        n = tf.cast(tf.shape(data.support_x)[0], params[0].dtype)
        sums = meta_batch.sum_tasks(one_task, data, self.mapping)
        for name, tracker in self._trackers.items():
            tracker.update_state(sums[name] / n)
        return {name: tracker.result() for name, tracker in self._trackers.items()}


def _check(model, algorithm: str, mapping: str, origin: Optional[Origin]) -> None:
    """Refuses a network the learner cannot meta-train as `algorithm`, in one sentence."""
    if not isinstance(model, MetaModel):
        raise ConfigError(f"MetaLearner takes a tfmeta MetaModel, got the "
                          f"{type(model).__name__} {getattr(model, 'name', '')!r}: convert it "
                          "with tfmeta.models.from_keras(model, example_shape, outputs, loss), "
                          "or build the learner with MetaLearner.from_run_config(config, source)")
    if algorithm not in algorithms.REGISTRY:
        raise ConfigError(f"MetaLearner: algorithm must be one of "
                          f"{', '.join(algorithms.REGISTRY)}, got {algorithm!r}")
    if mapping not in TASK_MAPPINGS:
        raise ConfigError(f"MetaLearner: mapping must be one of {', '.join(TASK_MAPPINGS)}, "
                          f"got {mapping!r}")
    spec, inner = algorithms.get(algorithm), model.inner
    if spec.supervised and origin is None:
        raise ConfigError(f"MetaLearner: {algorithm} trains one wide head on minibatches and "
                          "adapts a fresh N-way head at meta-test; build it with "
                          "MetaLearner.from_run_config(config, source)")
    wanted = {"adapts the head only": (spec.head_only, inner.head_only),
              "learns a rate per parameter element": (spec.learned_lr == "element",
                                                      inner.learned_lr == "element"),
              "meta-learns a gain per parameter tensor": (spec.gains, model.gains is not None)}
    for what, (needed, has) in wanted.items():
        if needed != has:
            raise ConfigError(
                f"MetaLearner: {algorithm} {'' if needed else 'never '}{what}, but model "
                f"{model.name}'s inner loop {'does not' if needed else 'does'}; build the model "
                "for the algorithm (models.from_keras or models.build with its InnerLoop, "
                "gains), or use MetaLearner.from_run_config(config, source)")


class _TrainingMeans(keras.metrics.Metric):
    """The epoch's running means of the meta-steps' metrics, kept where the steps' results
    arrive (`training.StepMeans`); a vector metric (gradient agreement's task weights) shows
    as its epoch's least and greatest value."""

    def __init__(self):
        super().__init__(name="meta_train")
        self.steps = StepMeans()

    def update_state(self, *args, **kwargs):
        raise NotImplementedError("filled by MetaLearner's train function")

    def reset_state(self):
        self.steps = StepMeans()

    def result(self) -> dict:
        return {**self.steps.means(),
                **{f"{k}_{end}": value for k, pair in self.steps.extremes.items()
                   for end, value in zip(("min", "max"), pair)}}


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
    them to the epoch's logs as "landscape/<metric>", which `History` keeps and
    `keras.callbacks.TensorBoard` writes (`MetaLearner.fit` runs it before the other callbacks).

    Args:
        source: the learner's task source; its tasks come from its validation split where there
            is one, else from test, drawn once from `config.seed`.
        config: the landscape protocol (tasks, eigenvalue method and tolerance, opt-in metrics).
    """

    def __init__(self, source: TaskSource, config: Optional[LandscapeConfig] = None):
        super().__init__()
        self.source, self.config = source, config or LandscapeConfig()
        self._landscape = None

    def on_train_begin(self, logs=None):
        learner = self.model
        self._landscape = Landscape(learner.eval_net, self.source, learner.adapt_config,
                                    self.config, learner.mapping, learner.origin)

    def on_epoch_end(self, epoch, logs=None):
        every = self.config.every
        if logs is None or not every or (epoch + 1) % every:
            return
        measured = self._landscape.measure(progress=False)
        logs.update({LANDSCAPE + name: float(value) for name, value in measured.items()
                     if np.ndim(value) == 0})
