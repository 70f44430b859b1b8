"""A run: its config, model, task source, optimizer and checkpoints, rebuilt from its directory.

Training creates a run; `tfmeta evaluate`, `analyze` and `export` open a saved one (`Run.open`)
without going through the training loop. Under a `tf.distribute` strategy the model, the optimizer
and the iteration counter are created in the strategy's scope, so they are mirrored on every
replica; checkpoints hold one copy and restore into any strategy.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tfmeta import (algorithms, evaluation, landscape as landscape_lib, models, record_keys,
                    rundir, tasks)
from tfmeta.config import Config
from tfmeta.config.model import patterns
from tfmeta.errors import ConfigError
from tfmeta.models import MetaModel


def task_mapping(config: Config, model: MetaModel) -> str:
    """How tasks are mapped onto ops (`meta_batch`): train.task_mapping, "auto" resolved by
    architecture."""
    if config.train.task_mapping != "auto":
        return config.train.task_mapping
    return "vectorized" if len(model.example_shape) == 1 else "loop"


def configure_threads(config: Config) -> None:
    """Applies the config's thread counts; TensorFlow only accepts them before its first op, so a
    second run in the same process keeps the first run's settings."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.train.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.train.inter_op_threads)
    except RuntimeError:
        pass


def inner_loop(config: Config) -> models.InnerLoop:
    """What the run's inner loop adapts, and at which rates, by algorithm and adapt options."""
    adapt, algorithm = config.adapt, algorithms.get(config.algorithm)
    learned = algorithm.learned_lr or ("layer_step" if adapt.per_step_lr else "")
    return models.InnerLoop(head_only=algorithm.head_only, learned_lr=learned, lr=adapt.lr,
                            steps=adapt.steps, step_norms=adapt.per_step_norm,
                            adapt=config.model.adapt_layers,
                            frozen=patterns(config.model.frozen_layers))


def meta_lr(config: Config):
    """The meta learning rate: train.meta_lr, or with train.cosine_lr MAML++'s cosine annealing to
    train.min_meta_lr over the epochs, one value per epoch (`CosineEpochs`)."""
    train = config.train
    if not train.cosine_lr:
        return train.meta_lr
    return CosineEpochs(train.meta_lr, train.min_meta_lr, train.iterations, train.epochs)


class CosineEpochs(keras.optimizers.schedules.LearningRateSchedule):
    """beta_e = min + (beta - min) (1 + cos(pi e / E)) / 2 for epoch e = step // iterations of E,
    as MAML++ steps PyTorch's CosineAnnealingLR once per epoch. The step is the optimizer's
    iteration count, which checkpoints hold, so a resumed run continues the schedule."""

    def __init__(self, initial: float, minimum: float, iterations: int, epochs: int):
        self.initial, self.minimum = initial, minimum
        self.iterations, self.epochs = iterations, epochs

    def __call__(self, step):
        epoch = tf.cast(tf.math.floordiv(step, self.iterations), tf.float32)
        cosine = 0.5 * (1.0 + tf.cos(np.pi * tf.minimum(epoch / self.epochs, 1.0)))
        return self.minimum + (self.initial - self.minimum) * cosine

    def get_config(self):
        return {"initial": self.initial, "minimum": self.minimum,
                "iterations": self.iterations, "epochs": self.epochs}


def build_model(config: Config, source: tasks.TaskSource, outputs: Optional[int] = None
                ) -> MetaModel:
    """The run's model, initialised from the run's seed; `outputs` overrides the head's width."""
    arch = config.model.arch
    if arch == "mlp" and len(source.example_shape) != 1:
        raise ConfigError(f"model.arch=mlp needs vector inputs, but {config.data.dataset} has "
                          f"examples of shape {source.example_shape}; use conv4")
    if arch in ("conv4", "resnet12") and len(source.example_shape) != 3:
        raise ConfigError(f"model.arch={arch} needs images, but {config.data.dataset} has "
                          f"examples of shape {source.example_shape}; use mlp")
    pools = arch == "resnet12" or (arch == "conv4" and config.model.pool == "max")
    if pools and min(source.example_shape[:2]) < 16:
        height, width = source.example_shape[:2]
        raise ConfigError(f"model.arch={arch} halves the images 4 times with max-pooling, so it "
                          f"needs at least 16x16, but {config.data.dataset} has {height}x{width}; "
                          "resize them (data.<dataset>.image_size)"
                          + (" or set model.pool=stride" if arch == "conv4" else ""))
    keras.utils.set_random_seed(config.train.seed)
    model = models.build(config.model, source.example_shape, outputs or source.outputs,
                         gains=algorithms.get(config.algorithm).gains,
                         inner=inner_loop(config), loss=source.loss)
    if model.inner.head_only and not model.num_feature_params:
        raise ConfigError(f"{config.algorithm} adapts the head and meta-learns the features, but "
                          f"model {model.name} has no feature parameters (model.hidden: "
                          f"{config.model.hidden}); use maml, or give the model a hidden layer")
    if model.loss_name != source.loss:
        raise ConfigError(f"model {model.name} computes {model.loss_name}, but "
                          f"{config.data.dataset} needs {source.loss}")
    return model


def run_checkpoint(model: MetaModel, optimizer: keras.optimizers.Optimizer,
                   iteration: tf.Variable) -> tf.train.Checkpoint:
    """The object graph every run's checkpoints hold: the network, Adam's state, the meta-step."""
    return tf.train.Checkpoint(model=model, optimizer=optimizer, iteration=iteration)


def checkpoint_manager(run_dir: Path, checkpoint: tf.train.Checkpoint, keep: int = 0,
                       log: Callable[[str], None] = print) -> tf.train.CheckpointManager:
    """The manager that saves `checkpoint` into a run directory, keeping `keep` (0: all). A
    state file that TensorFlow cannot read (its manager would refuse to start) is set aside as
    `checkpoint.unreadable`, said to `log`: the checkpoints themselves stay, and the manager
    lists those it saves from now on."""
    folder = rundir.checkpoints(run_dir)
    state = folder / "checkpoint"
    if state.is_file() and _listed_checkpoint(folder) is None:
        state.replace(folder / "checkpoint.unreadable")
        log(f"warning: {state} was unreadable; set aside as checkpoint.unreadable")
    return tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=keep or None)


class Run:
    """A run's model, task source, optimizer and checkpoint state, rebuilt from its config.

    Args:
        config: the run's config.
        run_dir: its directory (checkpoints in RUN/checkpoints).
        strategy: the `tf.distribute` strategy to build the variables in (default: none).
    """

    def __init__(self, config: Config, run_dir: Path,
                 strategy: Optional[tf.distribute.Strategy] = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.source = tasks.build(config.data, config.model.dtype)
        self.algorithm = algorithms.get(config.algorithm)
        with self.strategy.scope():
            # The model that meta-trains, the one that adapts at meta-test (the same but for the
            # finetune baseline) and where it starts.
            self.model, self.eval_model, self.origin = self.algorithm.networks(
                config, self.source, build_model)
            self.optimizer = keras.optimizers.Adam(meta_lr(config))
            self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration")
        self.checkpoint = run_checkpoint(self.model, self.optimizer, self.iteration)
        self._manager = None

    @classmethod
    def open(cls, run_dir: Path, overrides: Sequence[str] = (),
             values: Optional[Mapping[str, Any]] = None, config: Optional[Config] = None) -> "Run":
        """The run saved in `run_dir`, from its config with "key=value" `overrides` and
        {"key": value} `values` (`rundir.read_config`), or with `config` when given; applies the
        config's thread counts. Raises ConfigError when `run_dir` is not a run."""
        config = config or rundir.read_config(run_dir, overrides, values)
        configure_threads(config)
        return cls(config, run_dir)

    def restore(self, checkpoint: Optional[str] = None, log: Callable[[str], None] = print
                ) -> str:
        """Restores `checkpoint`, or by default the newest complete checkpoint that restores;
        returns its path. The default is read from the checkpoint files themselves: a lost or
        garbled state file, or a damaged newest checkpoint, is said in one line to `log`, and the
        newest good one is restored. Raises ConfigError when none restores, or when a checkpoint
        lacks a variable of this run's model (another algorithm's or model's checkpoint)."""
        folder = rundir.checkpoints(self.run_dir)
        if checkpoint:
            candidates = [checkpoint]
        else:
            candidates = rundir.complete_checkpoints(self.run_dir)[::-1]
            if not candidates:
                raise ConfigError(f"{self.run_dir}: no checkpoint to restore in {folder}")
            listed = _listed_checkpoint(folder)
            if listed is None:
                log(f"warning: {folder / 'checkpoint'} (TensorFlow's list of checkpoints) is "
                    f"missing or unreadable; restoring the newest complete checkpoint, "
                    f"{candidates[0]}")
            elif Path(listed).name != Path(candidates[0]).name:
                log(f"warning: {folder / 'checkpoint'} names {listed}, which is not complete on "
                    f"disk; restoring the newest complete checkpoint, {candidates[0]}")
        for number, path in enumerate(candidates):
            try:
                status = self.checkpoint.restore(path)
            except Exception as error:   # TensorFlow's errors, or its reader's IndexError
                # ("Read less bytes than requested") for a data file cut short
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(
                    error).__name__
                if checkpoint or number == len(candidates) - 1:
                    raise ConfigError(f"{path} cannot be restored ({reason}); the run has no "
                                      "other checkpoint to fall back to" if not checkpoint
                                      else f"{path} cannot be restored ({reason})") from None
                log(f"warning: {path} is damaged ({reason}); falling back to "
                    f"{candidates[number + 1]}")
                continue
            try:
                status.assert_existing_objects_matched()
            except AssertionError as error:
                raise ConfigError(
                    f"{path} lacks variables that this run's {self.config.algorithm} "
                    f"{self.model.name} model has ({str(error).splitlines()[0][:200]}); was it "
                    "saved by another algorithm or model?") from None
            status.expect_partial()   # the optimizer's state, restored when it is built
            return path
        raise AssertionError("unreachable: the last candidate returns or raises")

    @property
    def manager(self) -> tf.train.CheckpointManager:
        """The manager that saves the run's checkpoints, made when training first needs it (a
        run opened to read needs none, and its state file may be unreadable)."""
        if self._manager is None:
            self._manager = checkpoint_manager(self.run_dir, self.checkpoint,
                                               self.config.train.keep_checkpoints)
        return self._manager

    def save(self, number: int, chief: bool = True) -> None:
        """Writes checkpoint `number`. Every worker of a multi-worker job saves (TensorFlow's
        convention, as saving may need every replica); a worker other than the chief saves into
        a temporary directory that it removes at once, so only the chief's copy remains."""
        if chief:
            self.manager.save(checkpoint_number=number)
            return
        scratch = tempfile.mkdtemp(prefix="tfmeta-worker-checkpoint-")
        try:
            tf.train.CheckpointManager(self.checkpoint, scratch, max_to_keep=1).save(
                checkpoint_number=number)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def check_data(self, other_data: bool = False, log: Callable[[str], None] = print) -> None:
        """Refuses data other than what the run was trained on (`rundir.check_data`)."""
        rundir.check_data(self.run_dir, tasks.fingerprint(self.source, self.config.data),
                          other_data, log)

    @property
    def target(self) -> str:
        """The tag that landscape metrics are set beside: meta-test accuracy, or MSE."""
        return record_keys.target(self.source.loss)

    def landscape(self) -> landscape_lib.Landscape:
        return landscape_lib.Landscape(self.eval_model, self.source, self.config.adapt,
                                       self.config.landscape,
                                       task_mapping(self.config, self.eval_model),
                                       self.origin)

    def evaluator(self, steps: int, tasks_count: int, split: Optional[str] = None):
        """Evaluates on `split`, by default the one training evaluates after each epoch (val
        where there is one, else test)."""
        train = self.config.train
        return evaluation.make_evaluator(
            self.eval_model, self.source, self.config.adapt, steps, tasks_count, train.seed,
            train.eval_batch, task_mapping(self.config, self.eval_model),
            split or self.source.eval_split, self.origin)

    def training_batches(self, start: int, replica: int = 0,
                         replicas: int = 1) -> tf.data.Dataset:
        """The training stream from iteration `start`: meta-batches of episodes, or, for the
        supervised baseline, minibatches of labelled meta-train examples. Replica r of R takes
        the r-th of R equal shares of each global batch, by episode (or example) index."""
        train = self.config.train
        size = self.batch_size
        share = size // replicas
        first = start * size + replica * share
        if self.algorithm.supervised:
            return self.source.labelled("train", train.seed, share, start=first, stride=size)
        return self.source.episodes("train", train.seed, share, start=first, stride=size)

    @property
    def batch_size(self) -> int:
        """Tasks (or, for the supervised baseline, examples) per training step."""
        return self.algorithm.batch_size(self.config)


def _listed_checkpoint(folder: Path) -> Optional[str]:
    """The newest checkpoint TensorFlow's state file lists, or None when it is missing or
    unreadable."""
    try:
        state = tf.train.get_checkpoint_state(str(folder))
    except (tf.errors.OpError, ValueError, UnicodeDecodeError):
        return None
    return state.model_checkpoint_path if state and state.model_checkpoint_path else None


# Steps that `evaluate_run` reports besides the run's own test steps and the last step.
REPORT_STEPS = (0, 1, 5, 10)


def evaluate_run(run_dir: Path, steps: Optional[int], tasks_count: int, split: str = "test",
                 checkpoint: Optional[str] = None, inner_lr: Optional[float] = None,
                 norm: Optional[str] = None, episodes: Optional[str] = None,
                 other_data: bool = False, log: Callable[[str], None] = print) -> dict:
    """Evaluates a run's checkpoint on `tasks_count` tasks of `split`, adapting `steps` steps
    (default: max(10, the run's test steps)) at the run's adapt.lr, or at `inner_lr` when given,
    normalizing query sets as the run's model.norm says, or as `norm` says when given; an
    Omniglot run's tasks are drawn as its data.omniglot.episodes says, or as `episodes` says when
    given. Reports the metrics after REPORT_STEPS, the run's test steps and `steps`, those up to
    `steps`. Data other than the run's is refused unless `other_data` (`rundir.check_data`);
    warnings go to `log`.

    Returns:
        {"checkpoint", "split", "episodes" (None unless Omniglot), "tasks", "inner_lr", "norm",
         "steps": {t: {metric: {"mean", "ci95", "diverged"}}}} for t in report_steps.
    """
    values = {key: value for key, value in (("adapt.lr", inner_lr), ("model.norm", norm),
                                            ("data.omniglot.episodes", episodes))
              if value is not None}
    run = Run.open(run_dir, values=values)
    if episodes is not None and run.config.data.dataset != "omniglot":
        raise ConfigError(f"--episodes chooses how Omniglot tasks are drawn; {run_dir} is a "
                          f"{run.config.data.dataset} run")
    run.check_data(other_data, log)
    path = run.restore(checkpoint, log)
    own = run.config.adapt.eval_steps
    steps = max(10, own) if steps is None else steps
    report_steps = sorted({t for t in (*REPORT_STEPS, own, steps) if t <= steps})
    per_task = run.evaluator(steps, tasks_count, split)()
    results = evaluation.summarize(per_task, report_steps)
    return {"checkpoint": path, "split": split, "episodes": protocol(run.config),
            "tasks": tasks_count, "inner_lr": run.config.adapt.lr, "norm": run.config.model.norm,
            "steps": {t: {k: {"mean": v[t].mean, "ci95": v[t].ci95, "diverged": v[t].diverged}
                          for k, v in results.items()} for t in report_steps}}


def protocol(config: Config) -> Optional[str]:
    """How the run's tasks are drawn: data.omniglot.episodes for Omniglot, else None."""
    return config.data.omniglot.episodes if config.data.dataset == "omniglot" else None
