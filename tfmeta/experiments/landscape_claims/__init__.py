"""Do the findings of Guiroy, Verma & Pal (2019) hold? Their claims, each with a verdict.

The experiment has five parts, each of which can run on its own (`parts`; an interrupted one
continues where it stopped, every run being an ordinary run directory under OUT/runs):

- pilot: one seed per meta-training pool (characters x drawings) and algorithm (first- and
  second-order MAML), accuracy only, to find a pool where meta-test accuracy rises, peaks in the
  middle of the run and then falls: a natural meta-overfitting regime (`plan.pilot_runs`,
  `judge.select_pool`);
- main: on that pool, MAML (T = 5), MAML (T = 1), the finetune baseline, and sine regression, the
  landscape measured at epoch 0 and after every epoch;
- pools: more seeds on every pool, each run's landscape measured at its accuracy peak, set
  against the peak accuracy across pools (Figures 10 and 8e);
- sine: the sine k-sweep, measured after the last epoch (Figure 8e);
- regularizer: MAML against angle-regularized MAML (Algorithm 1) on 20-way 1-shot, paired seeds.

`plan` lists the runs, `runner` trains them and reads their curves, `judge` turns curves into
verdicts (pure functions, tested on synthetic curves), `write` writes claims.md, claims.json and
the figures. OUT/claims.md is rewritten after every finished run.
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np

from tfmeta import rundir
from tfmeta.errors import ConfigError
from tfmeta.experiments.landscape_claims import judge as judge_lib, plan, runner, write
from tfmeta.experiments.landscape_claims.judge import CLAIMS
from tfmeta.experiments.landscape_claims.plan import PARTS, ClaimsConfig, quick
from tfmeta.experiments.landscape_claims.runner import MEASURED, curves
from tfmeta.files import atomic_open

__all__ = ["CLAIMS", "MEASURED", "PARTS", "ClaimsConfig", "curves", "quick", "run"]
MAIN = ("maml-t5", "maml-t1", "finetune", "sine")


def omniglot_characters(data_dir: str) -> int:
    """How many characters the Omniglot zips in `data_dir` hold."""
    from tfmeta.tasks import omniglot_split
    return len(omniglot_split.load(omniglot_split.OmniglotConfig(data_dir=data_dir)).alphabets)


def run(config: ClaimsConfig, out_dir, quick_run: bool = False, parts: Sequence[str] = PARTS,
        log: Callable[[str], None] = print) -> dict:
    """Trains every run of `parts` not yet finished under OUT/runs, then judges the claims.

    The main settings and the pools need the pilot's choice of pool, so the pilot runs first
    (with the sine sweep and the regularizer beside it) whenever one of them is asked for. Writes OUT/claims.md and OUT/claims.json (rewritten after
    each run), OUT/pilot.json, OUT/noise.json, the twin-axis figures per setting under
    OUT/figures/<setting>/, OUT/figures/pools.png and OUT/figures/sine_sweep.png.
    Returns {"claims": rows, "table": path, "json": path, "figures": [paths]}.
    """
    if quick_run:
        config = quick(config)
    if not config.data_dir:
        raise ConfigError("the Omniglot data directory is not set: pass --data-dir DIR (the "
                          "Omniglot zips)")
    config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).resolve()))
    characters = omniglot_characters(config.data_dir)
    plan.check(config, characters)
    out = Path(out_dir).resolve()
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    _check_plan(config, out)
    experiment = _Experiment(config, out, characters, log)
    # The parts that do not need the pilot's choice train beside it.
    needs_pilot = [p for p in ("main", "pools") if p in parts]
    first = [p for p in ("sine", "regularizer") if p in parts]
    if needs_pilot or "pilot" in parts:
        first = ["pilot", *first]
    if first:
        runner.train(plan.every_run(config, characters, None, first), runs_dir, config.jobs,
                     log, experiment.write)
    if needs_pilot:
        runner.train(plan.every_run(config, characters, experiment.chosen_pool(), needs_pilot,
                                    experiment.chosen_pool(t1=True)),
                     runs_dir, config.jobs, log, experiment.write)
    rows = experiment.write(final=True)
    for row in rows:
        log(f"{row['id']}: {row['verdict']}")
    return {"claims": rows, "table": str(out / "claims.md"), "json": str(out / "claims.json"),
            "figures": experiment.figures()}


class _Experiment:
    """What the finished runs under OUT/runs say so far."""

    def __init__(self, config: ClaimsConfig, out: Path, characters: int, log):
        self.config, self.out, self.characters, self.log = config, out, characters, log
        self.runs_dir = out / "runs"
        self._pilot = None

    def pilot(self):
        """(table rows, {algorithm: choice}) once every pilot run has finished, else None."""
        if self._pilot is None:
            self._pilot = self._read_pilot()
        return self._pilot

    def _read_pilot(self):
        specs = plan.pilot_runs(self.config, self.characters)
        finished = runner.done(specs, self.runs_dir)
        if len(finished) < len(specs):
            return None
        by_algorithm: Dict[str, dict] = {}
        for spec in specs:
            algorithm, name = spec.setting.split("-")[1:]
            by_algorithm.setdefault(algorithm, {})[name] = curves(finished[spec.name])
        rows = judge_lib.pilot_table(by_algorithm, self.config)
        selected = {a: judge_lib.select_pool(rows, a, self.config.pools) for a in by_algorithm}
        with atomic_open(self.out / "pilot.json") as f:
            json.dump({"rows": rows, "selected": selected}, f, indent=1, default=float)
        return rows, selected

    def chosen_pool(self, t1: bool = False):
        """The pilot's pool for the main settings, or with `t1` for T = 1 (C5)."""
        pilot = self.pilot()
        key = f"{self.config.algorithm}_t1" if t1 else self.config.algorithm
        return pilot[1][key]["pool"] if pilot else None

    def main(self) -> Dict[str, list]:
        pool = self.chosen_pool()
        if pool is None:
            return {}
        specs = plan.main_runs(self.config, self.characters, pool, self.chosen_pool(t1=True))
        finished = runner.done(specs, self.runs_dir)
        out = {}
        for setting in MAIN:
            names = [s.name for s in specs if s.setting == setting]
            if all(n in finished for n in names):
                out[setting] = [curves(finished[n]) for n in names]
        return out

    def pools(self):
        """Per seed across pools, each run's landscape at its accuracy peak (measured by the
        process that trained it); None until every pool run has finished and been measured."""
        c = self.config
        names = [[f"pilot-{c.algorithm}-{plan.pool_name(p)}-s{seed}" for p in c.pools]
                 for seed in range(c.pool_seeds)]
        dirs = [[self.runs_dir / n for n in seed] for seed in names]
        every = [d for seed in dirs for d in seed]
        if not all(runner.finished(d, c.epochs) for d in every):
            return None
        epochs = plan.pool_epochs(c)
        if not all((d / runner.PEAK).is_file() and all(
                (d / runner.epoch_file(e)).is_file() for e in epochs) for d in every):
            return None
        keys = ("epoch", "generalization", *MEASURED)
        as_arrays = lambda values: {k: np.array([v[k] for v in values], float)  # noqa: E731
                                    for k in keys}
        return [{"pool": [plan.pool_name(p) for p in c.pools],
                 **as_arrays([runner.at_peak(d) for d in seed]),
                 "at_steps": {e * c.iterations: as_arrays([runner.at_epoch(d, e) for d in seed])
                              for e in epochs}}
                for seed in dirs]

    def sweep(self):
        specs = plan.sine_runs(self.config)
        finished = runner.done(specs, self.runs_dir)
        if len(finished) < len(specs):
            return None
        per_seed = []
        for seed in range(self.config.seeds):
            finals = [runner.final(finished[f"sine-k{k}-s{seed}"]) for k in self.config.sine_shots]
            per_seed.append({"k": np.array(self.config.sine_shots, float),
                             **{key: np.array([f[key] for f in finals])
                                for key in ("generalization", *MEASURED)}})
        return per_seed

    def regularizer(self):
        specs = plan.regularizer_runs(self.config)
        finished = runner.done(specs, self.runs_dir)
        if len(finished) < len(specs):
            return None
        return {method: [runner.curves(finished[f"regularizer-{method}-s{s}"])["generalization"]
                         for s in range(self.config.regularizer_seeds)]
                for method in ("maml", "maml-reg")}

    def write(self, final: bool = False) -> list:
        """Judges what has finished and rewrites claims.md and claims.json. `final`: also the
        metric-noise check and the pools figure."""
        config = self.config
        pilot, main = self.pilot(), self.main()
        pools, sweep, regularizer = self.pools(), self.sweep(), self.regularizer()
        rows = judge_lib.judge(main, pools, sweep, regularizer)
        noise = scale = None
        if final and "maml-t5" in main:
            noise, scale = self._noise_and_scale()
        total = self.expected_runs()
        finished = sum(1 for d in self.runs_dir.iterdir() if d.is_dir()
                       and rundir.has_history(d)
                       and runner.finished(d, _epochs_of(d)))
        status = (f"{finished} of {total} runs finished." if finished < total else
                  f"All {total} runs finished.")
        peaks, powers = {}, {}
        for setting, title in (("maml-t5", "MAML, T = 5"), ("maml-t1", "MAML, T = 1 (C5)")):
            if setting in main:
                peaks[title] = judge_lib.falls_of(main[setting])
                found = judge_lib.power_at(main[setting])
                if found:
                    powers[title] = found
        correlations = (judge_lib.across_pools(pools, MEASURED), pools,
                        str(self.out / "figures" / "pools.png"),
                        judge_lib.across_pools_at_steps(pools, MEASURED)) if pools else None
        if pools and final:
            self._pools_figure(pools)
        with atomic_open(self.out / "claims.md") as f:
            f.write(write.format_markdown(rows, config, status, pilot, peaks, correlations,
                                          regularizer, noise, scale, self.chosen_pool(), powers))
        with atomic_open(self.out / "claims.json") as f:
            json.dump({"config": dataclasses.asdict(config), "status": status,
                       "pilot": pilot[0] if pilot else None, "noise": noise, "scale": scale,
                       "claims": write.jsonable(rows)}, f, indent=1, default=_plain)
        return rows

    def expected_runs(self) -> int:
        pool = self.chosen_pool() or self.config.pools[0]
        return len(plan.every_run(self.config, self.characters, pool,
                                  t1_pool=self.chosen_pool(t1=True)))

    def _noise_and_scale(self) -> tuple:
        run_dir = self.runs_dir / "maml-t5-s0"

        def noise():
            self.log(f"metric noise: {self.config.noise_draws} re-drawn task sets at {run_dir}")
            c = curves(run_dir)
            return {"run": "maml-t5-s0",
                    "metrics": runner.metric_noise(run_dir, self.config.noise_draws),
                    "ranges": {m: float(np.nanmax(c[m]) - np.nanmin(c[m])) for m in MEASURED}}

        settings = {}
        for setting in ("maml-t5", "maml-t1", "finetune"):
            tc = np.concatenate([curves(self.runs_dir / f"{setting}-s{s}")["trajectory_coherence"]
                                 for s in range(self.config.seeds)])
            settings[setting] = [float(np.nanmin(tc)), float(np.nanmedian(tc)),
                                 float(np.nanmax(tc))]
        dimension = runner.parameter_count(run_dir)
        scale = {"parameters": dimension, "random": math.sqrt(2 / (math.pi * dimension)),
                 "settings": settings}
        return runner.cached(self.out / "noise.json", noise), scale

    def _pools_figure(self, pools: list) -> None:
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        write.scatter_figure([(m, f"{m.replace('_', ' ')} at the accuracy peak")
                              for m in MEASURED], pools, "pool", "peak meta-test accuracy",
                             self.out / "figures" / "pools.png")

    def figures(self) -> list:
        from tfmeta.report import write_report
        figures = []
        main = self.main()
        pool = self.chosen_pool()
        specs = plan.main_runs(self.config, self.characters, pool,
                               self.chosen_pool(t1=True)) if pool else []
        for setting in main:
            dirs = [self.runs_dir / s.name for s in specs if s.setting == setting]
            figures += write_report(dirs, self.out / "figures" / setting,
                                    tensorboard=False)["figures"]
        sweep = self.sweep()
        if sweep:
            path = self.out / "figures" / "sine_sweep.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write.scatter_figure([("gradient_coherence", "sine: final gradient coherence")],
                                 sweep, "k", "final -MSE", path)
            figures.append(str(path))
        pools_png = self.out / "figures" / "pools.png"
        return figures + ([str(pools_png)] if pools_png.is_file() else [])


def _epochs_of(run_dir: Path) -> int:
    return rundir.read_config(run_dir).train.epochs


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return float(value)


def _check_plan(config: ClaimsConfig, out: Path) -> None:
    """An OUT directory keeps the experiment's settings: continuing it with others would mix
    runs of two experiments in one table. More seeds only add runs, so the seed counts and the
    jobs may change."""
    path = out / "experiment.json"
    free = ("jobs", "seeds", "pool_seeds", "regularizer_seeds")
    want = {k: v for k, v in dataclasses.asdict(config).items() if k not in free}
    if path.is_file():
        have = json.loads(path.read_text())
        differ = [k for k in want if have.get(k) != want[k]]
        if differ:
            raise ConfigError(f"{out} holds an experiment with other settings ({differ[0]}: "
                              f"{have.get(differ[0])!r} there, {want[differ[0]]!r} now); choose "
                              f"another --out, or pass the same options")
        return
    with atomic_open(path) as f:
        json.dump(want, f, indent=1)
