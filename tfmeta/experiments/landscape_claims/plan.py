"""The experiment's settings and the runs it trains: the pilot, the main settings, the pools, the
sine sweep and the regularizer comparison. Pure: no TensorFlow, no files."""

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tfmeta.errors import ConfigError

PARTS = ("pilot", "main", "pools", "sine", "regularizer")
ALGORITHMS = {"maml": "adapt.first_order=false", "fomaml": "adapt.first_order=true"}


@dataclasses.dataclass
class ClaimsConfig:
    """The experiment. Defaults: the full run, at the power `tfmeta.power` asks (8 seeds, 2,000
    meta-test tasks per evaluation): hours on 2 CPU cores, resumable.

    Attributes:
        data_dir: the Omniglot zips (the small background sets: 242 characters).
        seeds: training seeds of each main setting and of each k of the sine sweep.
        pool_seeds: seeds per pool of the across-pools comparison (the pilot's run is seed 0).
        regularizer_seeds: seed pairs of MAML against angle-regularized MAML.
        jobs: runs trained side by side, one process and one thread each.
        algorithm: the main settings' algorithm, "maml" (second order) or "fomaml"; the pilot
            sweeps both.
        pools: the meta-training pools the pilot sweeps, [characters, drawings per character]
            (x4 rotations); every other character is meta-test.
        filters: conv4 width (paper: 64).
        meta_batch: tasks per meta-step (paper: 16 for 1-shot).
        queries: query examples per class.
        epochs, iterations: meta-training length; an epoch is `iterations` meta-steps (paper:
            500): short epochs give the accuracy curve's rise and fall enough points.
        eval_tasks: fixed meta-test tasks for accuracy at epoch 0 and after each epoch.
        rise_epochs: the pilot's rule: accuracy rises for at least this many epochs, peaks in the
            middle third of the run, then meta-overfits by `verdicts.meta_overfitting` (the
            split-half rule of the main settings).
        flatness_tasks, coherence_tasks: the landscape protocol (paper: 60 and 500).
        max_hvps: most Hessian-vector products per spectral norm.
        finetune_iterations: minibatches of 64 per finetune epoch (paper: 25).
        sine_shots: the k of the sine sweep (Figure 8e).
        sine_epochs, sine_iterations: sine meta-training length.
        regularizer_ways: ways of the regularizer comparison (paper: 20-way 1-shot).
        regularizer_epochs, regularizer_iterations: its meta-training length (6 x 1,000: MAML's
            held-out accuracy still rose from 1,000 to 2,000 meta-steps).
        regularizer_eval_tasks: held-out tasks that score each of its runs after every epoch.
        noise_draws: re-drawn meta-test task sets for the metric-noise check.
        pool_steps: meta-steps at which every pool run's landscape is also measured, the same
            for every pool (each at its own peak would set early points of training against
            late ones); multiples of `iterations`.
    """
    data_dir: str = ""
    seeds: int = 8
    pool_seeds: int = 3
    regularizer_seeds: int = 5
    jobs: int = 2
    algorithm: str = "maml"
    pools: list = dataclasses.field(default_factory=lambda: [[3, 6], [4, 8], [6, 10], [12, 12]])
    filters: int = 32
    meta_batch: int = 4
    queries: int = 5
    epochs: int = 30
    iterations: int = 25
    eval_tasks: int = 2000
    rise_epochs: int = 8
    pool_steps: list = dataclasses.field(default_factory=lambda: [250, 500, 750])
    flatness_tasks: int = 60
    coherence_tasks: int = 500
    max_hvps: int = 100
    finetune_iterations: int = 25
    sine_shots: list = dataclasses.field(default_factory=lambda: [2, 3, 5, 8, 10, 15])
    sine_epochs: int = 20
    sine_iterations: int = 250
    regularizer_ways: int = 20
    regularizer_epochs: int = 6
    regularizer_iterations: int = 1000
    regularizer_eval_tasks: int = 600
    noise_draws: int = 5


def default_data_dir() -> str:
    """Where the Omniglot zips are when --data-dir is not given: $TFMETA_OMNIGLOT_DIR, else
    ../shared/data/omniglot when it exists (a checkout beside the shared data), else ""."""
    shared = Path("../shared/data/omniglot")
    return os.environ.get("TFMETA_OMNIGLOT_DIR") or (str(shared) if shared.is_dir() else "")


def quick(config: ClaimsConfig) -> ClaimsConfig:
    """A minutes-long version with the same parts and rules, for the test suite: 2 seeds, a few
    short epochs, few tasks, narrow models and short sweeps."""
    return dataclasses.replace(
        config, seeds=2, pool_seeds=2, regularizer_seeds=2, filters=8, meta_batch=2, queries=2,
        pools=[[3, 6], [6, 6]], epochs=5, iterations=3, eval_tasks=10, rise_epochs=2,
        pool_steps=[3, 9, 15],
        flatness_tasks=1, coherence_tasks=6, max_hvps=4, finetune_iterations=3,
        sine_shots=[2, 5, 10], sine_epochs=3, sine_iterations=4, regularizer_ways=5,
        regularizer_epochs=1, regularizer_iterations=3, regularizer_eval_tasks=10,
        noise_draws=2)


@dataclasses.dataclass
class RunSpec:
    """One training run: a preset with overrides, and what the experiment does with it.
    `at_peak`: once trained, its landscape is measured at its accuracy peak, and at each epoch
    of `at_epochs` (the pools)."""
    name: str
    part: str
    setting: str
    seed: int
    preset: str
    overrides: list
    epochs: int
    at_peak: bool = False
    at_epochs: tuple = ()


def pool_name(pool: Sequence[int]) -> str:
    return f"c{pool[0]}x{pool[1]}"


def check(config: ClaimsConfig, characters: int) -> None:
    """Refuses settings the data or the rules cannot support, naming the field."""
    if config.algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got "
                          f"{config.algorithm!r}")
    for pool in config.pools:
        if len(pool) != 2 or not 0 < pool[0] < characters:
            raise ConfigError(f"pools: {pool} must be [characters, drawings] with characters "
                              f"between 1 and {characters - 1} (the data has {characters})")
        if not 1 + config.queries <= pool[1] <= 20:
            raise ConfigError(f"pools: {pool} keeps {pool[1]} drawings per character; 1-shot "
                              f"episodes with {config.queries} queries need {1 + config.queries} "
                              "to 20")
    for key in ("seeds", "pool_seeds", "regularizer_seeds"):
        if getattr(config, key) < 2:
            raise ConfigError(f"{key} must be at least 2 for an interval across seeds, got "
                              f"{getattr(config, key)}")
    for steps in config.pool_steps:
        if steps % config.iterations or not 0 < steps <= config.epochs * config.iterations:
            raise ConfigError(f"pool_steps: {steps} must be a multiple of iterations "
                              f"({config.iterations}) between {config.iterations} and "
                              f"{config.epochs * config.iterations}")
    if config.rise_epochs * 3 > 2 * config.epochs:
        raise ConfigError(f"rise_epochs ({config.rise_epochs}) cannot fit before the end of the "
                          f"middle third of {config.epochs} epochs")


def _landscape(config: ClaimsConfig, every: int) -> list:
    c = config
    return [f"landscape.every={every}", f"landscape.flatness_tasks={c.flatness_tasks}",
            f"landscape.coherence_tasks={c.coherence_tasks}", f"landscape.max_iters={c.max_hvps}",
            "train.intra_op_threads=1", "train.inter_op_threads=1"]


def _omniglot(config: ClaimsConfig, pool: Sequence[int], characters: int) -> list:
    c = config
    return [f"data.omniglot.data_dir={c.data_dir}", "data.omniglot.split=character",
            f"data.omniglot.holdout={characters - pool[0]}",
            f"data.omniglot.train_drawings={pool[1]}", "data.omniglot.rotations=true",
            f"model.filters={c.filters}", f"data.queries={c.queries}",
            f"train.epochs={c.epochs}", f"train.eval_tasks={c.eval_tasks}",
            "train.eval_at_start=true", "adapt.lr=0.1", "train.meta_lr=0.001"]


def _maml(config: ClaimsConfig, algorithm: str, steps: int) -> list:
    return [ALGORITHMS[algorithm], f"train.meta_batch={config.meta_batch}",
            f"train.iterations={config.iterations}", f"adapt.steps={steps}",
            f"adapt.test_steps={steps}"]


def _runs(name: str, part: str, seeds: Sequence[int], preset: str, overrides: list,
          epochs: int, at_peak: bool = False, at_epochs: tuple = ()) -> List[RunSpec]:
    return [RunSpec(f"{name}-s{seed}", part, name, seed, preset,
                    [*overrides, f"train.seed={seed}"], epochs, at_peak, at_epochs)
            for seed in seeds]


def pool_epochs(config: ClaimsConfig) -> tuple:
    """The epochs at which every pool run is measured: `pool_steps` in epochs."""
    return tuple(steps // config.iterations for steps in config.pool_steps)


def pilot_runs(config: ClaimsConfig, characters: int) -> List[RunSpec]:
    """Accuracy only, one seed, every pool, both algorithms at T = 5 and the main one at T = 1
    ("<algorithm>_t1"); every epoch's checkpoint of the main algorithm's T = 5 runs is kept, so
    that they are seed 0 of the across-pools comparison."""
    specs = []
    for algorithm in ALGORITHMS:
        for pool in config.pools:
            overrides = [*_omniglot(config, pool, characters), *_maml(config, algorithm, 5),
                         *_landscape(config, 0), "train.keep_checkpoints=0"]
            main = algorithm == config.algorithm
            specs += _runs(f"pilot-{algorithm}-{pool_name(pool)}", "pilot", [0], "omniglot_5w1s",
                           overrides, config.epochs, at_peak=main,
                           at_epochs=pool_epochs(config) if main else ())
    # C5's setting, T = 1, has a pool of its own: a regime at T = 5 need not be one at T = 1.
    for pool in config.pools:
        overrides = [*_omniglot(config, pool, characters), *_maml(config, config.algorithm, 1),
                     *_landscape(config, 0), "train.keep_checkpoints=1"]
        specs += _runs(f"pilot-{config.algorithm}_t1-{pool_name(pool)}", "pilot", [0],
                       "omniglot_5w1s", overrides, config.epochs)
    return specs


def main_runs(config: ClaimsConfig, characters: int, pool: Sequence[int],
              t1_pool: Optional[Sequence[int]] = None) -> List[RunSpec]:
    """The settings measured at epoch 0 and after every epoch, on the pilot's pool (T = 1 on the
    pilot's T = 1 pool, `t1_pool`, when given)."""
    c, seeds = config, range(config.seeds)
    on = lambda p: [*_omniglot(c, p, characters), *_landscape(c, 1),  # noqa: E731
                    "train.keep_checkpoints=1"]
    omniglot, omniglot_t1 = on(pool), on(t1_pool or pool)
    return [*_runs("maml-t5", "main", seeds, "omniglot_5w1s",
                   [*omniglot, *_maml(c, c.algorithm, 5)], c.epochs),
            *_runs("maml-t1", "main", seeds, "omniglot_5w1s",
                   [*omniglot_t1, *_maml(c, c.algorithm, 1)], c.epochs),
            *_runs("finetune", "main", seeds, "omniglot_5w1s_finetune",
                   [*omniglot, f"train.iterations={c.finetune_iterations}", "adapt.steps=5",
                    "adapt.test_steps=5"], c.epochs),
            *_runs("sine", "main", seeds, "sine_disjoint", _sine(c, 1), c.sine_epochs)]


def _sine(config: ClaimsConfig, every: int) -> list:
    c = config
    return [f"train.epochs={c.sine_epochs}", f"train.iterations={c.sine_iterations}",
            f"train.eval_tasks={c.eval_tasks}", "train.eval_at_start=true",
            *_landscape(c, every), "train.keep_checkpoints=1"]


def pool_runs(config: ClaimsConfig, characters: int) -> List[RunSpec]:
    """Seeds 1.. of the main algorithm on every pool (seed 0 is the pilot's run): accuracy after
    every epoch, every checkpoint kept, the landscape measured afterwards at the peak and at the
    same meta-steps for every pool (`pool_steps`)."""
    specs = []
    for pool in config.pools:
        overrides = [*_omniglot(config, pool, characters), *_maml(config, config.algorithm, 5),
                     *_landscape(config, 0), "train.keep_checkpoints=0"]
        specs += _runs(f"pilot-{config.algorithm}-{pool_name(pool)}", "pools",
                       range(1, config.pool_seeds), "omniglot_5w1s", overrides, config.epochs,
                       at_peak=True, at_epochs=pool_epochs(config))
    return specs


def sine_runs(config: ClaimsConfig) -> List[RunSpec]:
    """The sine k-sweep, each model measured once, after its last epoch (Figure 8e)."""
    specs = []
    for k in config.sine_shots:
        overrides = [*_sine(config, config.sine_epochs), f"data.shots={k}",
                     "train.eval_at_start=false", f"train.eval_every={config.sine_epochs}"]
        specs += _runs(f"sine-k{k}", "sine", range(config.seeds), "sine_disjoint", overrides,
                       config.sine_epochs)
    return specs


def regularizer_runs(config: ClaimsConfig) -> List[RunSpec]:
    """MAML and angle-regularized MAML (Algorithm 1, gamma 0.5) on the 20-way 1-shot CPU
    preset, paired by seed, scored after every epoch on `regularizer_eval_tasks` held-out tasks,
    so that the gap is seen along training and MAML's plateau checked."""
    c = config
    shared = [f"data.omniglot.data_dir={c.data_dir}", f"data.ways={c.regularizer_ways}",
              f"train.epochs={c.regularizer_epochs}",
              f"train.iterations={c.regularizer_iterations}",
              f"train.eval_tasks={c.regularizer_eval_tasks}",
              "train.eval_every=1", *_landscape(c, 0),
              "train.keep_checkpoints=1"]
    seeds = range(c.regularizer_seeds)
    return [*_runs("regularizer-maml", "regularizer", seeds, "omniglot_20w1s-cpu", shared,
                   c.regularizer_epochs),
            *_runs("regularizer-maml-reg", "regularizer", seeds, "omniglot_20w1s_maml_reg-cpu",
                   shared, c.regularizer_epochs)]


def every_run(config: ClaimsConfig, characters: int, pool: Optional[Sequence[int]],
              parts: Sequence[str] = PARTS,
              t1_pool: Optional[Sequence[int]] = None) -> List[RunSpec]:
    """The runs of `parts`, the main settings on `pool` and T = 1 on `t1_pool` (the pilot's
    choices)."""
    builders: Dict[str, callable] = {
        "pilot": lambda: pilot_runs(config, characters),
        "main": lambda: main_runs(config, characters, pool, t1_pool),
        "pools": lambda: pool_runs(config, characters),
        "sine": lambda: sine_runs(config),
        "regularizer": lambda: regularizer_runs(config)}
    return [spec for part in parts for spec in builders[part]()]


def parse_parts(text: str) -> Tuple[str, ...]:
    """"--only main,pools" -> ("main", "pools"), in the experiment's order; ConfigError else."""
    wanted = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown or not wanted:
        raise ConfigError(f"--only takes a comma-separated list of {', '.join(PARTS)}; got "
                          f"{text!r}")
    return tuple(p for p in PARTS if p in wanted)
