"""Meta-training: epochs of meta-steps, per-epoch meta-test evaluation, checkpoints, TensorBoard.

A run directory holds everything needed to reproduce or continue a run:

    config.yaml      the resolved config
    checkpoints/     tf.train.CheckpointManager: model, Adam state and the iteration counter
    logs/            TensorBoard event files
    history.jsonl    one line of per-epoch metrics, appended as each epoch ends (a resume after a
                     kill may repeat the epoch it was in: keep the last line per iteration)

Episodes are a pure function of (seed, index) (see `tasks.sampler`), so the iteration counter is
the whole data-sampler state: `resume` restores it and the stream continues where it stopped.
A checkpoint is written at the end of each epoch; the CheckpointManager writes its index file last,
so a kill at any moment leaves the previous checkpoint intact.
"""

import copy
import json
import os
import resource
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfmeta import algorithms, config as config_lib, evaluation, models, summaries, tasks
from tfmeta import landscape as landscape_lib
from tfmeta.algorithms import finetune
from tfmeta.adaptation import AdaptConfig
from tfmeta.config import Config
from tfmeta.errors import ConfigError, DivergedError
from tfmeta.models import MetaModel, params_of


def task_strategy(config: Config, model: MetaModel) -> str:
    """The configured task-mapping strategy, resolving "auto" by architecture."""
    if config.train.task_strategy != "auto":
        return config.train.task_strategy
    return "vectorized" if len(model.example_shape) == 1 else "loop"


def make_meta_step(model: MetaModel, optimizer: keras.optimizers.Optimizer,
                   meta_gradient: Callable, adapt_config: AdaptConfig, global_batch_size: int,
                   strategy: str = "loop", jit_compile: bool = False) -> Callable:
    """Builds the compiled meta-step: one meta-gradient and one Adam update.

    A step whose meta-loss or gradient is not finite leaves the weights and Adam state untouched.

    Returns:
        step(batch: Episode with [n, ...] fields) -> (metrics dict of scalars, finite bool scalar).
    """
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        grads, metrics = meta_gradient(model, params_of(model), batch, adapt_config,
                                       global_batch_size, strategy)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t))
                                for t in [metrics["loss"], *grads]])

        def update():
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return tf.constant(True)

        return metrics, tf.cond(finite, update, lambda: tf.constant(False))

    return step


def with_absolute_paths(config: Config) -> Config:
    """A copy whose data directories are absolute, so the saved config works from any directory."""
    config = copy.deepcopy(config)
    for section, field in ((config.data.omniglot, "data_dir"),
                           (config.data.miniimagenet, "data_dir"),
                           (config.data.miniimagenet, "cache_dir")):
        if getattr(section, field):
            setattr(section, field, os.path.abspath(getattr(section, field)))
    return config


def configure_threads(config: Config) -> None:
    """Applies the config's thread counts; TensorFlow only accepts them before its first op, so a
    second run in the same process keeps the first run's settings."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(config.train.intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(config.train.inter_op_threads)
    except RuntimeError:
        pass


def build_model(config: Config, source: tasks.TaskSource, outputs: Optional[int] = None
                ) -> MetaModel:
    """The run's model, initialised from the run's seed; `outputs` overrides the head's width."""
    arch = config.model.arch
    if arch == "mlp" and len(source.example_shape) != 1:
        raise ConfigError(f"model.arch=mlp needs vector inputs, but {config.data.dataset} has "
                          f"examples of shape {source.example_shape}; use conv4")
    if arch == "conv4" and len(source.example_shape) != 3:
        raise ConfigError(f"model.arch=conv4 needs images, but {config.data.dataset} has examples "
                          f"of shape {source.example_shape}; use mlp")
    keras.utils.set_random_seed(config.train.seed)
    model = models.build(config.model, source.example_shape, outputs or source.outputs,
                         gains=config.algorithm in algorithms.WITH_GAINS)
    if model.loss_name != source.loss:
        raise ConfigError(f"model {model.name} computes {model.loss_name}, but "
                          f"{config.data.dataset} needs {source.loss}")
    return model


def default_run_dir(config: Config) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    name = config.name or f"{config.data.dataset}-{config.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path("runs") / name


class Run:
    """A run's model, task source, optimizer and checkpoint state, rebuilt from its config."""

    def __init__(self, config: Config, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.source = tasks.build(config.data, config.model.dtype)
        self.supervised = config.algorithm == "finetune"
        if self.supervised:
            # Trained with one head over every meta-train class, adapted with a fresh N-way head.
            self.model = build_model(config, self.source, self.source.classes["train"])
            self.eval_model = build_model(config, self.source)
            seed = config.algorithms.finetune.head_seed
            self.eval_params = lambda: finetune.transfer(self.model, self.eval_model, seed)
        else:
            self.model = self.eval_model = build_model(config, self.source)
            self.eval_params = None
        self.optimizer = keras.optimizers.Adam(config.train.meta_lr)
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False, name="iteration")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              iteration=self.iteration)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.run_dir / "checkpoints"),
            max_to_keep=config.train.keep_checkpoints or None)

    @classmethod
    def open(cls, run_dir: Path, overrides: Sequence[str] = ()) -> "Run":
        """The run saved in `run_dir`, from its config.yaml with "key=value" `overrides`; applies
        the config's thread counts. Raises ConfigError when `run_dir` is not a run."""
        run_dir = Path(run_dir)
        config_path = run_dir / "config.yaml"
        if not config_path.is_file():
            raise ConfigError(f"{run_dir} is not a run directory: {config_path} is missing")
        config = config_lib.load(str(config_path), overrides)
        configure_threads(config)
        return cls(config, run_dir)

    def restore(self, checkpoint: Optional[str] = None) -> str:
        """Restores `checkpoint` (default: the latest); returns its path."""
        path = checkpoint or self.manager.latest_checkpoint
        if not path:
            raise ConfigError(f"{self.run_dir}: no checkpoint to restore in "
                              f"{self.run_dir / 'checkpoints'}")
        self.checkpoint.restore(path).expect_partial()
        return path

    @property
    def target(self) -> str:
        """The tag that landscape metrics are set beside: meta-test accuracy, or loss (MSE)."""
        return "meta_test/accuracy" if self.source.loss == "cross_entropy" else "meta_test/loss"

    def landscape(self) -> landscape_lib.Landscape:
        return landscape_lib.Landscape(self.eval_model, self.source, self.config.adapt,
                                       self.config.landscape,
                                       task_strategy(self.config, self.eval_model),
                                       self.eval_params)

    def evaluator(self, steps: int, tasks_count: int, split: Optional[str] = None):
        """Evaluates on `split`, by default the one training evaluates after each epoch (val
        where there is one, else test)."""
        train = self.config.train
        return evaluation.make_evaluator(
            self.eval_model, self.source, self.config.adapt, steps, tasks_count, train.seed,
            train.eval_batch, task_strategy(self.config, self.eval_model),
            split or self.source.eval_split, self.eval_params)

    def training_batches(self, start: int) -> tf.data.Dataset:
        """The training stream from iteration `start`: meta-batches of episodes, or, for the
        supervised baseline, minibatches of labelled meta-train examples."""
        train = self.config.train
        if self.supervised:
            size = self.config.algorithms.finetune.batch_size
            return self.source.labelled("train", train.seed, size, start=start * size)
        return self.source.episodes("train", train.seed, train.meta_batch,
                                    start=start * train.meta_batch)

    @property
    def batch_size(self) -> int:
        """Tasks (or, for the supervised baseline, examples) per training step."""
        if self.supervised:
            return self.config.algorithms.finetune.batch_size
        return self.config.train.meta_batch


def train(config: Config, run_dir: Optional[Path] = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Meta-trains per `config`; returns the run directory.

    Args:
        run_dir: where to write; defaults to config.run_dir or runs/<name>.
        resume: continue from the run directory's latest checkpoint (weights, Adam state and the
            episode stream position).
        progress: show a progress bar.
        log: receives one summary line per epoch.

    Raises:
        DivergedError: the meta-loss became NaN or Inf; the last good checkpoint is kept.
    """
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    config = with_absolute_paths(config)
    configure_threads(config)
    if not resume and (run_dir / "checkpoints" / "checkpoint").exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                          f"another --run-dir")
    run = Run(config, run_dir)
    if resume:
        path = run.restore()
        log(f"resumed {path} at iteration {int(run.iteration.numpy())}")
    # A resumed run's overrides describe the run only once a checkpoint made with them exists; a
    # resume that fails before then leaves the saved config as it was.
    config_pending = resume
    if not resume:
        config_lib.save(config, run_dir / "config.yaml")
    train_cfg = config.train
    strategy = task_strategy(config, run.model)
    step = make_meta_step(run.model, run.optimizer,
                          algorithms.build(config.algorithm, config.algorithms),
                          config.adapt, run.batch_size, strategy, train_cfg.jit_compile)
    start = int(run.iteration.numpy())
    batches = iter(run.training_batches(start))
    evaluate = run.evaluator(config.adapt.eval_steps, train_cfg.eval_tasks)
    writer = summaries.writer(run_dir / "logs")
    landscape = run.landscape() if config.landscape.every else None
    if landscape:
        summaries.landscape_layout(writer, landscape_lib.METRICS, run.target)
    total = train_cfg.epochs * train_cfg.iterations
    wall_start = time.perf_counter()

    for epoch in range(start // train_cfg.iterations, train_cfg.epochs):
        first = max(start, epoch * train_cfg.iterations)
        last = (epoch + 1) * train_cfg.iterations
        sums, vectors, began = {}, {}, time.perf_counter()
        bar = tqdm(range(first, last), desc=f"epoch {epoch + 1}/{train_cfg.epochs}",
                   disable=not progress, leave=False, dynamic_ncols=True)
        for i in bar:
            metrics, finite = step(next(batches))
            values = {k: float(v) for k, v in metrics.items() if v.shape.rank == 0}
            for k, v in metrics.items():
                if v.shape.rank:
                    vectors.setdefault(k, []).append(v.numpy())
            if not bool(finite):
                raise DivergedError(
                    f"meta-loss became {values['loss']} at iteration {i + 1}; the run stopped "
                    f"without updating. Last good checkpoint: "
                    f"{run.manager.latest_checkpoint or 'none (diverged in the first epoch)'}. "
                    f"Try a lower train.meta_lr or adapt.lr.")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        bar.close()
        done = last - first
        run.iteration.assign(last)
        train_means = {k: v / done for k, v in sums.items()}
        train_means["seconds_per_iteration"] = (time.perf_counter() - began) / done
        summaries.scalars(writer, "meta_train", train_means, last)
        summaries.histograms(writer, "meta_train",
                             {k: np.concatenate(v) for k, v in vectors.items()}, last)
        system = {"rss_mb": resident_mb(), "wall_seconds": time.perf_counter() - wall_start}
        summaries.scalars(writer, "system", system, last)
        record = {"epoch": epoch + 1, "iteration": last,
                  **{f"meta_train/{k}": v for k, v in train_means.items()},
                  **{f"system/{k}": v for k, v in system.items()}}
        if train_cfg.eval_every and ((epoch + 1) % train_cfg.eval_every == 0
                                     or epoch + 1 == train_cfg.epochs):
            steps = config.adapt.eval_steps
            results = evaluation.summarize(evaluate(), [steps])
            test = test_scalars(results, steps)
            summaries.scalars(writer, "meta_test", test, last)
            record.update({f"meta_test/{k}": v for k, v in test.items()})
        if landscape and ((epoch + 1) % config.landscape.every == 0
                          or epoch + 1 == train_cfg.epochs):
            record.update(measure_landscape(landscape, writer, run_dir / "density.jsonl", last,
                                            progress))
        # History first: a kill between the two repeats this epoch on resume (a duplicate line with
        # the same numbers) rather than losing its record.
        append_jsonl(run_dir / "history.jsonl", record)
        run.manager.save(checkpoint_number=epoch + 1)
        if config_pending:
            config_lib.save(config, run_dir / "config.yaml")
            config_pending = False
        log(_epoch_line(record, total))
    return run_dir


def test_scalars(results: dict, steps: int) -> dict:
    """{metric, metric_ci95, diverged_tasks} after `steps` steps, from `evaluation.summarize`."""
    test = {}
    for metric, per_step in results.items():
        test[metric], test[f"{metric}_ci95"] = per_step[steps].mean, per_step[steps].ci95
        test["diverged_tasks"] = per_step[steps].diverged
    return test


def measure_landscape(landscape: landscape_lib.Landscape, writer, density_path: Path,
                      iteration: int, progress: bool) -> dict:
    """Measures the landscape at the current weights; writes TensorBoard scalars under landscape/
    and the eigenvalue density (when configured) to `density_path`. Returns the scalars, prefixed."""
    values = landscape.measure(progress)
    density = values.pop("density", None)
    if density is not None:
        append_jsonl(density_path, {"iteration": iteration, **density})
    summaries.scalars(writer, "landscape", values, iteration)
    return {f"landscape/{k}": v for k, v in values.items()}


def resident_mb() -> float:
    """This process's resident memory now, in MiB (peak resident memory where /proc is absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _epoch_line(record: dict, total: int) -> str:
    parts = [f"epoch {record['epoch']} (it {record['iteration']}/{total})"]
    for key in ("meta_train/loss", "meta_train/accuracy", "meta_test/loss", "meta_test/accuracy"):
        if key in record:
            ci = record.get(key + "_ci95")
            value = f"{record[key]:.4f}" + (f" ± {ci:.4f}" if ci is not None else "")
            parts.append(f"{key} {value}")
    for key in ("landscape/flatness", "landscape/trajectory_coherence"):
        if key in record:
            parts.append(f"{key.split('/')[1]} {record[key]:.4g}")
    parts.append(f"{record['meta_train/seconds_per_iteration'] * 1e3:.0f} ms/it")
    return "  ".join(parts)


def evaluate_run(run_dir: Path, steps: int, tasks_count: int, report_steps, split: str = "test",
                 checkpoint: Optional[str] = None, inner_lr: Optional[float] = None,
                 norm: Optional[str] = None) -> dict:
    """Evaluates a run's checkpoint on `tasks_count` tasks of `split`, adapting `steps` steps
    at the run's adapt.lr, or at `inner_lr` when given, normalizing query sets as the run's
    model.norm says, or as `norm` says when given.

    Returns:
        {"checkpoint", "split", "tasks", "inner_lr", "norm",
         "steps": {t: {metric: {"mean", "ci95", "diverged"}}}} for t in report_steps.
    """
    overrides = ([] if inner_lr is None else [f"adapt.lr={inner_lr}"]) + (
        [] if norm is None else [f"model.norm={norm}"])
    run = Run.open(run_dir, overrides)
    path = run.restore(checkpoint)
    per_task = run.evaluator(steps, tasks_count, split)()
    results = evaluation.summarize(per_task, report_steps)
    return {"checkpoint": path, "split": split, "tasks": tasks_count,
            "inner_lr": run.config.adapt.lr, "norm": run.config.model.norm,
            "steps": {t: {k: {"mean": v[t].mean, "ci95": v[t].ci95, "diverged": v[t].diverged}
                          for k, v in results.items()} for t in report_steps}}
