"""Meta-training: epochs of meta-steps, per-epoch meta-test evaluation, checkpoints, TensorBoard.

A run directory holds everything needed to reproduce or continue a run:

    config.yaml      the resolved config
    checkpoints/     tf.train.CheckpointManager: model, Adam state and the iteration counter
    logs/            TensorBoard event files
    history.jsonl    one line of per-epoch metrics, appended as each epoch ends (a resume after a
                     kill may repeat the epoch it was in: keep the last line per iteration); with
                     `train.eval_at_start`, a line for epoch 0 before any meta-step

Episodes are a pure function of (seed, index) (see `tasks.sampler`), so the iteration counter is
the whole data-sampler state: `resume` restores it and the stream continues where it stopped.
A checkpoint is written at the end of each epoch; the CheckpointManager writes its index file last,
so a kill at any moment leaves the previous checkpoint intact, and a run killed before its first
checkpoint resumes from its beginning.

The loop is written once; `train.strategy` puts a `tf.distribute` strategy around it
(`tfmeta.distribute`): the compiled meta-step runs each replica's share of the meta-batch and sums
them. In a multi-worker job the chief evaluates, measures the landscape and writes the config,
checkpoints, TensorBoard and history; the other workers train and write nothing that stays.
"""

import contextlib
import copy
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from tfmeta import algorithms, distribute, landscape as landscape_lib, records, rundir, summaries, tasks
from tfmeta.config import Config
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.algorithms import AlgorithmConfig
from tfmeta.config.data import absolute_paths
from tfmeta.errors import ConfigError, DivergedError
from tfmeta.models import MetaModel, params_of
from tfmeta.record_keys import META_TRAIN, SYSTEM, prefixed
from tfmeta.run import Run, configure_threads, task_mapping


def make_meta_step(model: MetaModel, optimizer: keras.optimizers.Optimizer,
                   meta_gradient: Callable, adapt_config: AdaptConfig,
                   global_batch_size: Optional[int] = None, mapping: str = "loop",
                   jit_compile: bool = False,
                   distribution: Optional[tf.distribute.Strategy] = None) -> Callable:
    """Builds the compiled meta-step: one meta-gradient and one guarded Adam update, the one
    update both `tfmeta train` and `MetaLearner.fit` apply.

    Under `distribution` (default: none), each replica computes the meta-gradient of its share,
    already divided by the global batch size (`global_batch_size`, or by default the replica's
    share times the replicas); the shares are summed across replicas, and Adam applies the sum
    once. A step whose meta-loss or gradient is not finite leaves the weights and Adam state
    untouched, on every replica alike.

    Returns:
        step(batch: Episode with [n, ...] fields, or a distributed value of the replicas' shares)
        -> (metrics dict: scalars summed over replicas, vectors joined; finite bool scalar).
    """
    distribution = distribution or tf.distribute.get_strategy()
    if not optimizer.built:  # a second step (derivative-order annealing) shares the Adam state
        with distribution.scope():
            optimizer.build(model.trainable_variables)
    total = lambda value: distribution.reduce(tf.distribute.ReduceOp.SUM, value,  # noqa: E731
                                              axis=None)

    def replica_step(batch):
        share = tf.shape(tf.nest.flatten(batch)[0])[0]
        size = global_batch_size or share * distribution.num_replicas_in_sync
        return meta_gradient(model, params_of(model), batch, adapt_config, size, mapping)

    @tf.function(jit_compile=jit_compile)
    def step(batch):
        grads, metrics = distribution.run(replica_step, args=(batch,))
        grads = [total(g) for g in grads]
        metrics = {k: (total(v) if distribution.experimental_local_results(v)[0].shape.rank == 0
                       else distribution.gather(v, axis=0)) for k, v in metrics.items()}
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t))
                                for t in [metrics["loss"], *grads]])

        def update():
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return tf.constant(True)

        return metrics, tf.cond(finite, update, lambda: tf.constant(False))

    return step


class MetaSteps:
    """The compiled meta-steps of a training, by (0-based) epoch, for both doors: `steps(epoch)`
    is `repeat` of `make_meta_step` for the epoch's phase (`phase`); each is built on first use,
    and all share the optimizer.

    Args:
        algorithm: a name of `algorithms.REGISTRY`; `options` are its options.
        batch_size: tasks (or examples) per meta-step, or None to read it from each batch.
        iterations: meta-steps per epoch, for options counted in epochs.
        endless: the batches never end (`repeat`).
    """

    def __init__(self, model: MetaModel, optimizer: keras.optimizers.Optimizer, algorithm: str,
                 options: AlgorithmConfig, adapt_config: AdaptConfig,
                 batch_size: Optional[int], mapping: str, iterations: int,
                 steps_per_execution: int = 1, jit_compile: bool = False,
                 strategy: Optional[tf.distribute.Strategy] = None, endless: bool = True):
        self.model, self.optimizer, self.adapt_config = model, optimizer, adapt_config
        self.options, self.batch_size, self.mapping = options, batch_size, mapping
        self.steps_per_execution, self.jit_compile, self.strategy, self.endless = (
            steps_per_execution, jit_compile, strategy, endless)
        self.algorithm, self.iterations = algorithm, iterations
        self.executions = {}

    @classmethod
    def of_run(cls, run: Run, strategy: Optional[tf.distribute.Strategy] = None) -> "MetaSteps":
        config = run.config
        return cls(run.model, run.optimizer, config.algorithm, config.algorithms, config.adapt,
                   run.batch_size, task_mapping(config, run.model), config.train.iterations,
                   config.train.steps_per_execution, config.train.jit_compile, strategy)

    def phase(self, epoch: int) -> tuple:
        """(first order, multi-step loss) at `epoch`: derivative-order annealing
        (`algorithms.maml.first_order_epochs`) and MAML++'s multi-step loss
        (`multi_step_epochs`) each hold for their first epochs. After the multi-step loss's
        epochs its weights are 0 but the last step's, so the plain step, which neither computes
        nor differentiates the other query losses, gives the same update at about half the cost
        of a second-order step of 5 inner steps."""
        maml = self.options.maml
        return (self.adapt_config.first_order or epoch < maml.first_order_epochs,
                epoch < maml.multi_step_epochs)

    def step(self, epoch: int) -> Callable:
        """The epoch's single compiled meta-step (`make_meta_step`)."""
        return self(epoch).step

    def __call__(self, epoch: int) -> Callable:
        phase = first_order, multi_step = self.phase(epoch)
        if phase not in self.executions:   # built once: a compiled loop traces on first call
            options = self.options if multi_step else dataclasses.replace(
                self.options, maml=dataclasses.replace(self.options.maml, multi_step_epochs=0))
            meta_gradient = algorithms.get(self.algorithm).meta_gradient(
                options, lambda: self.optimizer.iterations // self.iterations)
            step = make_meta_step(
                self.model, self.optimizer, meta_gradient,
                dataclasses.replace(self.adapt_config, first_order=first_order), self.batch_size,
                self.mapping, self.jit_compile, self.strategy)
            self.executions[phase] = repeat(step, self.steps_per_execution, self.endless)
        return self.executions[phase]


def with_absolute_paths(config: Config) -> Config:
    """A copy whose data directories are absolute, so the saved config works from any directory."""
    config = copy.deepcopy(config)
    absolute_paths(config.data)
    return config


def default_run_dir(config: Config) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    name = config.name or f"{config.data.dataset}-{config.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    return Path("runs") / name


def train(config: Config, run_dir: Optional[Path] = None, resume: bool = False,
          progress: bool = True, log: Callable[[str], None] = print,
          other_data: bool = False) -> Path:
    """Meta-trains per `config`; returns the run directory.

    The process that writes the run (the chief of a multi-worker job) holds its lock
    (`rundir.lock`) throughout, so that no second training, resume, evaluation or analysis writes
    to it at the same time.

    Args:
        run_dir: where to write; defaults to config.run_dir or runs/<name>.
        resume: continue from the run directory's newest complete checkpoint (weights, Adam state
            and the episode stream position), or from the beginning when it has none yet.
        progress: show a progress bar (on the chief).
        log: receives one summary line per epoch, and any warning.
        other_data: resume on data other than the run's (`rundir.check_data`).

    Raises:
        DivergedError: the meta-loss became NaN or Inf; the last good checkpoint is kept.
        ConfigError: a bad config, strategy or cluster; a run directory in use, or whose
            checkpoints cannot be restored; data other than the run's.
        LostWorkerError: a peer of a multi-worker job died; restart the job to continue.
    """
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    config = with_absolute_paths(config)
    configure_threads(config)
    strategy = distribute.make_strategy(config.train.strategy, config.train.devices)
    chief = distribute.is_chief(strategy)
    created = chief and not run_dir.exists()
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with rundir.lock(run_dir, "trained") if chief else contextlib.nullcontext():
            return _train(config, run_dir, strategy, chief, resume, progress, log, other_data)
    except BaseException:
        # A start that failed before writing anything (no data, a bad model) leaves no empty
        # run directory behind.
        if created and not any(p.name != rundir.LOCK for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _train(config: Config, run_dir: Path, strategy: tf.distribute.Strategy, chief: bool,
           resume: bool, progress: bool, log: Callable[[str], None], other_data: bool) -> Path:
    if not resume and rundir.has_checkpoint(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                          f"another --run-dir")
    run = Run(config, run_dir, strategy)
    distribute.check_divisible(run.batch_size, strategy, run.algorithm.batch_key)
    start = _starting_iteration(run, resume, log)
    iterations, epochs = config.train.iterations, config.train.epochs
    if start >= epochs * iterations:
        log(f"{run_dir} has trained its {start // iterations} epochs (iteration {start}); "
            f"nothing to do (pass --epochs N above {start // iterations} to train on)")
        return run_dir
    if chief:
        for path in rundir.remove_partial_checkpoints(run_dir):
            log(f"removed {path}, left by a save that was interrupted")
        data = tasks.fingerprint(run.source, config.data)
        if start:
            rundir.check_data(run_dir, data, other_data, log)
        rundir.write_data(run_dir, data)
    # A resumed run's overrides describe the run only once a checkpoint made with them exists; a
    # resume that fails before then leaves the saved config as it was.
    config_pending = start > 0
    if chief and not config_pending:
        rundir.write_config(run_dir, config)
    steps = MetaSteps.of_run(run, strategy)
    batches = distribute.replica_batches(
        strategy, lambda replica, replicas: run.training_batches(start, replica, replicas))
    epoch_end = EpochEnd(run, chief, progress, fresh=start == 0, log=log)
    if start == 0 and config.train.eval_at_start:
        log(records.epoch_line(epoch_end(0, 0, {}, {}), epochs * iterations))
    # Read when the error comes: on a worker other than the chief, the chief wrote it.
    with distribute.peers_watched(
            strategy, lambda: tf.train.latest_checkpoint(str(rundir.checkpoints(run_dir)))):
        for epoch in range(start // iterations, epochs):
            first, last = max(start, epoch * iterations), (epoch + 1) * iterations
            good = (rundir.complete_checkpoints(run_dir) or [None])[-1]
            means, vectors = run_steps(
                steps(epoch), batches, last - first, first, f"epoch {epoch + 1}/{epochs}",
                progress and chief, "; the run stopped without updating. Last good checkpoint: "
                f"{good or 'none (diverged in the first epoch)'}. Try a lower train.meta_lr or "
                "adapt.lr.")
            run.iteration.assign(last)
            record = epoch_end(epoch + 1, last, means, vectors)
            run.save(epoch + 1, chief)
            if chief and config_pending:
                rundir.write_config(run_dir, config)
                config_pending = False
            log(records.epoch_line(record, epochs * iterations))
    return run_dir


def _starting_iteration(run: Run, resume: bool, log: Callable[[str], None]) -> int:
    """The iteration to start from: the newest complete checkpoint's when resuming, else 0. A
    run whose checkpoint files are there but none complete is refused, never started over."""
    if not resume:
        return 0
    if not rundir.complete_checkpoints(run.run_dir):
        partial = sorted(p.name for p in rundir.checkpoints(run.run_dir).glob("ckpt-*"))
        if partial:
            raise ConfigError(f"{rundir.checkpoints(run.run_dir)} holds {', '.join(partial)} but "
                              "no complete checkpoint (an index and every data shard); restore "
                              "the missing files, or train a new run")
        log(f"{run.run_dir}: no checkpoint yet (the run stopped in its first epoch); starting "
            "it from the beginning")
        return 0
    path = run.restore(log=log)
    iteration = int(run.iteration.numpy())
    log(f"resumed {path} at iteration {iteration}")
    return iteration


class repeat:   # noqa: N801 (a function's name: it builds the execution of `step`)
    """Runs `make_meta_step`'s `step` on inputs drawn from `batches`, up to `steps_per_execution`
    at a time: above 1, in one compiled call whose loop draws them from a `tf.data` iterator (or
    a Keras `DistributedIterator`, or `distribute.replica_batches`) inside the graph, which
    spares the per-call overhead that dominates small models. A call stops after a step whose
    meta-loss is not finite (that step changed nothing), or, unless `endless`, where a finite
    dataset ends, so the weights are those of the same steps taken one at a time. `endless`
    (the command line's streams, a Keras dataset that repeats forever) draws without checking
    for the end, which costs a conditional per step.

    Call it as execute(batches, count: 1..steps_per_execution) -> (metrics {name: NumPy array
    [steps run, ...] per step}, finite: bool, False when the last step run was not finite); a
    dataset that has ended before the call raises `tf.errors.OutOfRangeError`.
    """

    def __init__(self, step: Callable, steps_per_execution: int = 1, endless: bool = True):
        self.step, self.steps_per_execution, self.endless = step, steps_per_execution, endless
        # One step per call draws its episode in the graph too, without a loop whose body
        # would trace the meta-step a second time.
        self._compiled = tf.function(self._loop if steps_per_execution > 1 else self._once)

    def __call__(self, batches, count: int = 1) -> tuple:
        metrics, finite = self._compiled(batches, tf.constant(count, tf.int32))
        return {k: v.numpy() for k, v in metrics.items()}, bool(finite)

    def _once(self, batches, count):
        metrics, finite = self.step(next(batches))
        return {k: v[tf.newaxis] for k, v in metrics.items()}, finite

    def _loop(self, batches, count):
        step = self.step
        first, finite = step(next(batches))
        arrays = {k: tf.TensorArray(v.dtype, size=0, dynamic_size=True, element_shape=v.shape
                                    ).write(0, v) for k, v in first.items()}
        # A finite Keras dataset may end inside the call: draw optionally, and stop there.
        optional = not self.endless

        def body(i, arrays, finite, more):
            if optional:
                drawn = batches.get_next_as_optional()
                more = drawn.has_value()
                metrics, finite = tf.cond(
                    more, lambda: step(drawn.get_value()),
                    lambda: ({k: tf.zeros_like(v) for k, v in first.items()}, finite))
            else:
                metrics, finite = step(next(batches))
            arrays = {k: a.write(i, metrics[k]) for k, a in arrays.items()}
            return i + tf.cast(more, tf.int32), arrays, finite, more

        ran, arrays, finite, _ = tf.while_loop(
            lambda i, _, finite, more: (i < count) & finite & more, body,
            (tf.constant(1), arrays, finite, tf.constant(True)))
        return {k: a.stack()[:ran] for k, a in arrays.items()}, finite


class StepMeans:
    """The running means of the meta-steps' scalar metrics, one step at a time (the same sums
    however many steps a call ran), and their vector metrics joined."""

    def __init__(self):
        self.sums, self.vectors, self.count = {}, {}, 0
        self.extremes = {}   # {name: (least, greatest)} of each vector metric, kept as it comes

    def add(self, metrics: dict, finite: bool, first: int, remedy: str = "") -> int:
        """Adds one execution's `metrics` ({name: NumPy [steps, ...]}); returns the steps it ran.
        Raises DivergedError, its message ending with `remedy`, when its last step (meta-step
        `first` + its number) was not finite."""
        ran = len(metrics["loss"])
        if not finite:
            raise DivergedError(f"meta-loss became {float(metrics['loss'][-1])} at iteration "
                                f"{first + ran}{remedy}")
        for k, v in metrics.items():
            if v.ndim == 1:
                for value in v:
                    self.sums[k] = self.sums.get(k, 0.0) + float(value)
            else:
                self.vectors.setdefault(k, []).extend(v)
                low, high = self.extremes.get(k, (np.inf, -np.inf))
                self.extremes[k] = (min(low, float(v.min())), max(high, float(v.max())))
        self.count += ran
        return ran

    def means(self) -> dict:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}

    def joined(self) -> dict:
        return {k: np.concatenate(v) for k, v in self.vectors.items()}


def run_steps(execute: repeat, batches, count: int, first: int = 0, label: str = "",
              progress: bool = False, remedy: str = "") -> tuple:
    """Runs `count` meta-steps of `execute` on `batches`, numbered from `first`, as many per
    call as it takes; a step whose meta-loss is not finite raises DivergedError, its message
    ending with `remedy`.

    Returns:
        (means of the scalar metrics, with seconds_per_iteration; {name: [values]} of the vector
        metrics).
    """
    steps, began = StepMeans(), time.perf_counter()
    bar = tqdm(total=count, desc=label, disable=not progress, leave=False, dynamic_ncols=True)
    while steps.count < count:
        metrics, finite = execute(batches, min(execute.steps_per_execution, count - steps.count))
        bar.update(steps.add(metrics, finite, first + steps.count, remedy))
        bar.set_postfix({k: f"{float(v[-1]):.4g}" for k, v in metrics.items() if v.ndim == 1},
                        refresh=False)
    bar.close()
    return ({**steps.means(), "seconds_per_iteration": (time.perf_counter() - began) / count},
            steps.joined())


class EpochEnd:
    """What happens after an epoch's meta-steps: on the chief, TensorBoard scalars, the per-epoch
    evaluation and landscape measurements (as often as configured) and a history.jsonl line;
    elsewhere, only the record of the epoch's training means.

    Call it as epoch_end(epoch, iteration, train_means, train_vectors) -> the epoch's record.
    `fresh`: the run starts here, so its HParams session is written.
    """

    def __init__(self, run: Run, chief: bool, progress: bool, fresh: bool = True,
                 log: Callable[[str], None] = print):
        config = run.config
        self.run, self.chief, self.progress, self.log = run, chief, progress and chief, log
        self.wall_start = time.perf_counter()
        if not chief:
            return
        self.writer = summaries.writer(rundir.logs(run.run_dir))
        self.evaluate = (run.evaluator(config.adapt.eval_steps, config.train.eval_tasks)
                         if config.train.eval_every or config.train.eval_at_start else None)
        self.landscape = run.landscape() if config.landscape.every else None
        if self.landscape:
            summaries.landscape_layout(self.writer, landscape_lib.METRICS, run.target)
        if fresh:  # a resumed run has its HParams session already
            summaries.hparams(self.writer, summaries.hparams_of(config))

    def __call__(self, epoch: int, iteration: int, means: dict, vectors: dict) -> dict:
        system = {"rss_mb": records.resident_mb(),
                  "wall_seconds": time.perf_counter() - self.wall_start}
        record = {"epoch": epoch, "iteration": iteration,
                  **prefixed(META_TRAIN, means), **prefixed(SYSTEM, system)}
        if not self.chief:
            return record
        config, writer = self.run.config, self.writer
        summaries.scalars(writer, "meta_train", means, iteration)
        summaries.histograms(writer, "meta_train", vectors, iteration)
        summaries.scalars(writer, "system", system, iteration)
        per_task = None
        if _due(epoch, config.train.eval_every, config.train.epochs):
            scalars, per_task = records.evaluate(self.evaluate, writer, config.adapt.eval_steps,
                                                 iteration)
            record.update(scalars)
        if self.landscape and _due(epoch, config.landscape.every, config.train.epochs):
            record.update(records.measure_landscape(
                self.landscape, writer, rundir.density_path(self.run.run_dir), iteration,
                self.progress))
        # History first: a kill between this and the checkpoint repeats this epoch on resume (a
        # duplicate line with the same numbers) rather than losing its record.
        if per_task is not None:
            rundir.append_per_task(self.run.run_dir, {"epoch": epoch, "iteration": iteration,
                                                      **per_task}, self.log)
        rundir.append_history(self.run.run_dir, record, self.log)
        return record


def _due(epoch: int, every: int, epochs: int) -> bool:
    """Whether a measurement taken every `every` epochs (0: never) falls on `epoch`; the last
    epoch always gets one."""
    return bool(every) and (epoch % every == 0 or epoch == epochs)
