"""Do the findings of Guiroy, Verma & Pal (2019) hold? Their claims C1-C8, each with a verdict.

The runs follow the paper's protocol (Appendix A, Section 5): Omniglot 5-way 1-shot with alpha 0.1
and T = 5 inner steps in meta-training and at meta-test (T = 1 for gradient coherence), Adam 1e-3
without a schedule, the finetune baseline adapted by the same inner loop, sine regression with
disjoint meta-train and meta-test ranges on an MLP 40-40, and the k-sweeps of Figures 10 and 8e.
After every epoch `tfmeta.landscape.Landscape` measures flatness on `flatness_tasks` fixed
meta-test tasks and the coherences, trajectory norm and support loss on `coherence_tasks`.

Meta-overfitting is induced on purpose: meta-training draws its tasks from a pool of only
`train_characters` Omniglot characters (x4 rotations), so the learner memorizes them, and meta-test
accuracy on the held-out characters peaks and then falls.

Each run is an ordinary tfmeta run directory under OUT/runs, trained in a fresh process (`jobs` at
a time, one thread each). A finished run is reused and an unfinished one resumed, so an interrupted
experiment continues where it stopped. After each run, OUT/claims.md is rewritten from the runs
finished so far; `tfmeta.verdicts` applies the verdict rules.
"""

import dataclasses
import json
import math
import multiprocessing
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from tfmeta import config as config_lib, verdicts as V
from tfmeta.errors import ConfigError, TfmetaError
from tfmeta.files import atomic_open
from tfmeta.report import column, load_records

METRICS = ("flatness", "trajectory_coherence", "gradient_coherence", "representation_coherence",
           "trajectory_norm", "support_loss")


@dataclasses.dataclass
class ClaimsConfig:
    """The experiment. Defaults: the full run, about an hour on 2 CPU cores.

    Attributes:
        data_dir: the Omniglot zips (the small background sets: 242 characters).
        seeds: training seeds per setting (and per k of the sweeps).
        jobs: runs trained side by side, one process and one thread each.
        train_characters: meta-train pool; every other character is meta-test.
        train_drawings: drawings kept per meta-train character (of 20).
        filters: conv4 width (paper: 64).
        meta_batch: tasks per meta-step (paper: 16 for 1-shot).
        queries: query examples per class.
        epochs, iterations: meta-training length; an epoch is `iterations` meta-steps (paper: 500).
        eval_tasks: fixed meta-test tasks for accuracy after each epoch.
        flatness_tasks, coherence_tasks: the landscape protocol (paper: 60 and 500).
        representation_inputs: meta-test images for representation coherence (0: all of them).
        max_hvps: most Hessian-vector products per spectral norm.
        omniglot_shots: the k of the Omniglot sweep (Figure 10), trained like the T = 5 setting.
        sweep_queries: query examples per class in the Omniglot sweep (k + queries drawings of
            each meta-train character are needed).
        sine_shots: the k of the sine sweep (Figure 8e).
        sine_epochs, sine_iterations: sine meta-training length.
        finetune_iterations: minibatches of 64 per finetune epoch.
        noise_draws: re-drawn meta-test task sets for the metric-noise check.
    """
    data_dir: str = ""
    seeds: int = 5
    jobs: int = 2
    train_characters: int = 3
    train_drawings: int = 6
    filters: int = 32
    meta_batch: int = 4
    queries: int = 5
    epochs: int = 16
    iterations: int = 50
    eval_tasks: int = 300
    flatness_tasks: int = 60
    coherence_tasks: int = 500
    representation_inputs: int = 0
    max_hvps: int = 100
    omniglot_shots: list = dataclasses.field(default_factory=lambda: [1, 2, 3, 4, 5])
    sweep_queries: int = 1
    sine_shots: list = dataclasses.field(default_factory=lambda: [2, 3, 5, 8, 10, 15])
    sine_epochs: int = 20
    sine_iterations: int = 250
    finetune_iterations: int = 25
    noise_draws: int = 5


def quick(config: ClaimsConfig) -> ClaimsConfig:
    """A minutes-long version with the same runs and rules, for the test suite: 2 seeds, a few
    short epochs, few tasks, narrow models and short sweeps."""
    return dataclasses.replace(
        config, seeds=2, filters=8, meta_batch=2, queries=2, epochs=4, iterations=4,
        eval_tasks=20, flatness_tasks=3, coherence_tasks=12, representation_inputs=200,
        max_hvps=8, omniglot_shots=[1, 2, 3], sine_shots=[2, 4, 8], sine_epochs=4,
        sine_iterations=4, finetune_iterations=4, noise_draws=2)


@dataclasses.dataclass
class RunSpec:
    """One training run: a preset with overrides."""
    name: str
    setting: str
    seed: int
    preset: str
    overrides: list


# ---------------------------------------------------------------------------------------------
# The runs


def omniglot_characters(data_dir: str) -> int:
    """How many characters the Omniglot zips in `data_dir` hold."""
    from tfmeta.tasks import omniglot_split
    return len(omniglot_split.load(omniglot_split.OmniglotConfig(data_dir=data_dir)).alphabets)


def plan(config: ClaimsConfig, characters: int) -> List[RunSpec]:
    """Every run of the experiment, main settings first (each seed), then the sweeps."""
    if not 0 < config.train_characters < characters:
        raise ConfigError(f"train_characters must be between 1 and {characters - 1} (the data "
                          f"has {characters} characters), got {config.train_characters}")
    c = config
    if 1 + c.queries > c.train_drawings:
        raise ConfigError(f"1-shot episodes with {c.queries} queries need {1 + c.queries} "
                          f"drawings per character; train_drawings is {c.train_drawings}")
    if max(c.omniglot_shots) + c.sweep_queries > c.train_drawings:
        raise ConfigError(f"the Omniglot sweep needs k + sweep_queries <= train_drawings: "
                          f"{max(c.omniglot_shots)} + {c.sweep_queries} > {c.train_drawings}")
    landscape = [f"landscape.flatness_tasks={c.flatness_tasks}",
                 f"landscape.coherence_tasks={c.coherence_tasks}",
                 f"landscape.representation_inputs={c.representation_inputs}",
                 f"landscape.max_iters={c.max_hvps}", "train.intra_op_threads=1",
                 "train.inter_op_threads=1", "train.keep_checkpoints=1"]
    omniglot = [f"data.omniglot.data_dir={c.data_dir}", "data.omniglot.split=character",
                f"data.omniglot.holdout={characters - c.train_characters}",
                f"data.omniglot.train_drawings={c.train_drawings}",
                "data.omniglot.rotations=true", f"model.filters={c.filters}",
                f"data.queries={c.queries}", f"train.epochs={c.epochs}",
                f"train.eval_tasks={c.eval_tasks}", "adapt.lr=0.1", "train.meta_lr=0.001"]
    maml = [*omniglot, f"train.meta_batch={c.meta_batch}", f"train.iterations={c.iterations}"]
    at_end = [f"landscape.every={c.epochs}", f"train.eval_every={c.epochs}"]
    sine = [f"train.epochs={c.sine_epochs}", f"train.iterations={c.sine_iterations}",
            f"train.eval_tasks={c.eval_tasks}"]
    settings = {
        "maml-t5": ("omniglot_5w1s", [*maml, "adapt.steps=5", "adapt.test_steps=5"]),
        "maml-t1": ("omniglot_5w1s", [*maml, "adapt.steps=1", "adapt.test_steps=1"]),
        "finetune": ("omniglot_5w1s_finetune",
                     [*omniglot, f"train.iterations={c.finetune_iterations}", "adapt.steps=5",
                      "adapt.test_steps=5"]),
        "sine": ("sine_disjoint", sine),
    }
    for k in c.omniglot_shots:
        settings[f"omniglot-k{k}"] = ("omniglot_5w1s", [*settings["maml-t5"][1], f"data.shots={k}",
                                                        f"data.queries={c.sweep_queries}", *at_end])
    for k in c.sine_shots:
        settings[f"sine-k{k}"] = ("sine_disjoint", [*sine, f"data.shots={k}", *at_end[:1],
                                                    f"train.eval_every={c.sine_epochs}"])
    return [RunSpec(f"{name}-s{seed}", name, seed, preset,
                    [*overrides, *landscape, f"train.seed={seed}"])
            for name, (preset, overrides) in settings.items() for seed in range(c.seeds)]


def run_config(spec: RunSpec, run_dir: Path):
    """The tfmeta Config of `spec`, with absolute paths, written to run in `run_dir`."""
    from tfmeta.training import with_absolute_paths
    return with_absolute_paths(config_lib.load(spec.preset, [*spec.overrides,
                                                             f"run_dir={run_dir}"]))


def run_epochs(spec: RunSpec, config: ClaimsConfig) -> int:
    """Epochs of a run: the sine settings have their own length."""
    return config.sine_epochs if spec.setting.startswith("sine") else config.epochs


def finished(run_dir: Path, epochs: int) -> bool:
    """Whether `run_dir` holds a record of its last epoch."""
    try:
        return any(int(r.get("epoch", 0)) >= epochs for r in load_records(run_dir))
    except TfmetaError:  # no records yet
        return False


def _check_same(spec: RunSpec, run_dir: Path) -> None:
    """A run directory made with other settings must not be continued as if it were this run."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    want = config_lib.flat_dict(run_config(spec, run_dir))
    have = config_lib.flat_dict(config_lib.load(str(saved)))
    for key, value in want.items():
        if have.get(key) != value:
            raise ConfigError(f"{saved} was made with other settings ({key}: {have.get(key)!r} "
                              f"there, {value!r} now); choose another --out or delete {run_dir}")


def train_one(spec: RunSpec, run_dir: str) -> str:
    """Trains (or resumes) one run; executed in a fresh process so that its thread settings apply.
    Its epoch lines go to RUN_DIR.log."""
    from tfmeta import quiet, training
    quiet.start()
    run_dir = Path(run_dir)
    config = run_config(spec, run_dir)
    resume = (run_dir / "checkpoints" / "checkpoint").exists()
    with open(str(run_dir) + ".log", "a") as log:
        training.train(config, run_dir, resume=resume, progress=False,
                       log=lambda line: print(line, file=log, flush=True))
    return spec.name


# ---------------------------------------------------------------------------------------------
# Curves


def curves(run_dir: Path) -> Dict[str, np.ndarray]:
    """A run's per-epoch curves: `generalization` (accuracy, or -MSE for regression), its 95%
    half-width, and the landscape METRICS; index 0 is epoch 1."""
    records = load_records(run_dir)
    out = {m: column(records, f"landscape/{m}") for m in METRICS}
    accuracy = column(records, "meta_test/accuracy")
    if np.isfinite(accuracy).any():
        out["generalization"] = accuracy
        out["generalization_ci95"] = column(records, "meta_test/accuracy_ci95")
    else:
        out["generalization"] = -column(records, "meta_test/mse")
        out["generalization_ci95"] = column(records, "meta_test/mse_ci95")
    out["epoch"] = column(records, "epoch")
    return out


def final(run_dir: Path) -> Dict[str, float]:
    """The last measured value of each curve."""
    values = {}
    for name, curve in curves(run_dir).items():
        finite = curve[np.isfinite(curve)]
        values[name] = float(finite[-1]) if finite.size else math.nan
    return values


# ---------------------------------------------------------------------------------------------
# The claims


CLAIMS = {
    "C1": "Flatness: MAML first finds sharper adapted solutions up to a peak, then flatter ones.",
    "C2": "Past meta-overfitting, flatness keeps improving: it does not track generalization.",
    "C3": "Meta-test support loss falls monotonically; flatness follows it more than accuracy.",
    "C4": "Trajectory coherence rises and falls with accuracy, also past the peak; ~0 for "
          "finetune.",
    "C5": "Gradient coherence (T = 1) correlates with accuracy, and with -MSE on sine; very low "
          "for finetune.",
    "C6": "Representation coherence reflects meta-overfitting; across k = 1..5 it correlates "
          "with final accuracy.",
    "C7": "Trajectory norm grows during MAML training, not during finetune, and does not "
          "reflect generalization.",
    "C8": "Sine, across k = 2..15: final gradient coherence correlates with final -MSE.",
}


@dataclasses.dataclass
class Part:
    """One tested statement of a claim: the per-seed statistic, its interval and verdict."""
    test: str
    spearman: Optional[V.Interval] = None
    pearson: Optional[V.Interval] = None
    value: Optional[V.Interval] = None
    verdict: str = V.INCONCLUSIVE


def _rank_part(test: str, xs, ys, threshold: float, above: bool, start=None) -> Part:
    """Spearman (verdict) and Pearson of metric x with y over epochs, per seed; `start` gives
    each seed's first epoch (e.g. its accuracy peak)."""
    starts = start or [1] * len(xs)
    rho = V.correlation_interval([V.rank_correlation(x, y, s) for x, y, s in zip(xs, ys, starts)])
    r = V.correlation_interval([V.linear_correlation(x, y, s) for x, y, s in zip(xs, ys, starts)])
    return Part(test, spearman=rho, pearson=r, verdict=V.side(rho, threshold, above))


def _trend_part(test: str, ys, threshold: float, above: bool, start=None) -> Part:
    epochs = [np.arange(1, len(y) + 1, dtype=float) for y in ys]
    return _rank_part(test, ys, epochs, threshold, above, start)


def _ratio_part(test: str, baseline, maml, bound: float) -> Part:
    """mean |baseline metric| / mean |MAML metric| over epochs, per seed pair; below `bound`."""
    ratios = [np.nanmean(np.abs(b)) / np.nanmean(np.abs(m)) for b, m in zip(baseline, maml)]
    iv = V.interval(ratios)
    return Part(test, value=iv, verdict=V.side(iv, bound, above=False))


def _sweep_part(test: str, sweep: Sequence[Dict[str, np.ndarray]], metric: str) -> Part:
    """Per seed, across the sweep's k: the final metric against the final generalization."""
    xs = [s[metric] for s in sweep]
    ys = [s["generalization"] for s in sweep]
    rho = V.correlation_interval([V.spearman(x, y) for x, y in zip(xs, ys)])
    r = V.correlation_interval([V.pearson(x, y) for x, y in zip(xs, ys)])
    return Part(test, spearman=rho, pearson=r, verdict=V.side(rho, V.CORRELATION, True))


def judge(main: Dict[str, list], sweeps: Dict[str, list]) -> List[dict]:
    """Verdicts for C1-C8.

    Args:
        main: {setting: [per-seed curves]} for "maml-t5", "maml-t1", "finetune", "sine" (any may
            be missing: its claims are then pending).
        sweeps: {"omniglot" | "sine": [per-seed {"k", "generalization", metric: [per-k finals]}]}.

    Returns:
        One dict per claim: id, claim, parts (list of Part), verdict, and for C1-C3 `peaks`.
    """
    rows = []
    t5, t1, ft, sine = (main.get(k) for k in ("maml-t5", "maml-t1", "finetune", "sine"))
    rho, post = V.CORRELATION, None
    if t5:
        acc = [c["generalization"] for c in t5]
        peaks = [V.peak(c["generalization"], c["generalization_ci95"]) for c in t5]
        overfit = sum(p.overfits for p in peaks) * 2 > len(peaks)
        post = [p.epoch for p in peaks]
        flat = [c["flatness"] for c in t5]
        flat_peaks = [int(np.nanargmax(f)) + 1 for f in flat]
        flattest = [int(np.nanargmin(f)) + 1 for f in flat]
        peak_text = (f"accuracy peak: epoch {', '.join(map(str, post))}; sharpest (flatness "
                     f"maximum): {', '.join(map(str, flat_peaks))}; flattest (flatness minimum): "
                     f"{', '.join(map(str, flattest))} of {len(flat[0])}")

    def row(claim: str, parts: list, needs: Sequence, extra: Optional[dict] = None) -> None:
        missing = [name for name, data in needs if not data]
        if missing:
            rows.append({"id": claim, "claim": CLAIMS[claim], "parts": [],
                         "verdict": f"pending ({', '.join(missing)} not finished)"})
            return
        verdict = V.combine([p.verdict for p in parts])
        rows.append({"id": claim, "claim": CLAIMS[claim], "parts": parts, "verdict": verdict,
                     **(extra or {})})

    def no_overfit(test: str) -> Part:
        return Part(f"{test}: no meta-overfitting in most seeds, so untestable")

    def tracks_accuracy(name: str) -> list:
        """rho(metric, accuracy) > 0.3 over all epochs, and from each seed's peak on."""
        curves = [c[name] for c in t5]
        return [_rank_part(f"rho({name.replace('_', ' ')}, accuracy) > 0.3", curves, acc, rho,
                           True),
                _rank_part("the same after the accuracy peak", curves, acc, rho, True, post)
                if overfit else no_overfit("after the peak")]

    if t5:
        rise = V.interval([f[p - 1] / f[0] - 1 for f, p in zip(flat, flat_peaks)])
        c1 = [Part("relative rise of flatness from epoch 1 to its maximum > 10%", value=rise,
                   verdict=V.side(rise, V.RISE, True)),
              _trend_part("flatness vs epoch after its maximum: rho < -0.3", flat, -rho, False,
                          flat_peaks)]
        c2 = [_trend_part("flatness vs epoch after the accuracy peak: rho < -0.3", flat, -rho,
                          False, post) if overfit else no_overfit("flatness after the peak")]
        losses = [c["support_loss"] for c in t5]
        follows = V.interval([V.rank_correlation(f, s) - abs(V.rank_correlation(f, a))
                              for f, s, a in zip(flat, losses, acc)])
        c3 = [_trend_part("support loss vs epoch: rho < -0.8 (monotone fall)", losses,
                          -V.MONOTONE, False),
              Part("rho(flatness, support loss) - |rho(flatness, accuracy)| > 0", value=follows,
                   verdict=V.side(follows, 0.0, True))]
    else:
        c1 = c2 = c3 = []
    extra = {"peaks": peak_text} if t5 else {}
    row("C1", c1, [("maml-t5", t5)], extra)
    row("C2", c2, [("maml-t5", t5)], extra)
    row("C3", c3, [("maml-t5", t5)], extra)

    if t5 and ft:
        c4 = [*tracks_accuracy("trajectory_coherence"),
              _ratio_part("finetune / MAML mean |trajectory coherence| < 0.25",
                          [c["trajectory_coherence"] for c in ft],
                          [c["trajectory_coherence"] for c in t5], V.LOW)]
    row("C4", c4 if t5 and ft else [], [("maml-t5", t5), ("finetune", ft)])

    if t1 and sine and ft:
        c5 = [_rank_part("T = 1: rho(gradient coherence, accuracy) > 0.3",
                         [c["gradient_coherence"] for c in t1],
                         [c["generalization"] for c in t1], rho, True),
              _rank_part("sine: rho(gradient coherence, -MSE) > 0.3",
                         [c["gradient_coherence"] for c in sine],
                         [c["generalization"] for c in sine], rho, True),
              _ratio_part("finetune / MAML (T = 1) mean |gradient coherence| < 0.25",
                          [c["gradient_coherence"] for c in ft],
                          [c["gradient_coherence"] for c in t1], V.LOW)]
    row("C5", c5 if t1 and sine and ft else [], [("maml-t1", t1), ("sine", sine),
                                                   ("finetune", ft)])

    omniglot_sweep, sine_sweep = sweeps.get("omniglot"), sweeps.get("sine")
    if t5 and omniglot_sweep:
        c6 = [*tracks_accuracy("representation_coherence"),
              _sweep_part("across k: rho(final representation coherence, final accuracy) > 0.3",
                          omniglot_sweep, "representation_coherence")]
    row("C6", c6 if t5 and omniglot_sweep else [], [("maml-t5", t5),
                                                      ("the Omniglot k-sweep", omniglot_sweep)])

    if t5 and ft:
        tn = [c["trajectory_norm"] for c in t5]
        ft_trend = V.correlation_interval([V.epoch_trend(c["trajectory_norm"]) for c in ft])
        reflects = V.correlation_interval([V.rank_correlation(n, a) for n, a in zip(tn, acc)])
        c7 = [_trend_part("MAML trajectory norm vs epoch: rho > 0.3", tn, rho, True),
              Part("finetune trajectory norm vs epoch: rho < 0.3", spearman=ft_trend,
                   verdict=V.side(ft_trend, rho, False)),
              Part("|rho(trajectory norm, accuracy)| < 0.3", spearman=reflects,
                   verdict=V.within(reflects, rho))]
    row("C7", c7 if t5 and ft else [], [("maml-t5", t5), ("finetune", ft)])

    c8 = [_sweep_part("across k: rho(final gradient coherence, final -MSE) > 0.3", sine_sweep,
                      "gradient_coherence")] if sine_sweep else []
    row("C8", c8, [("the sine k-sweep", sine_sweep)])
    if t5:
        for r in rows:
            r["overfitting"] = peaks
    return rows


# ---------------------------------------------------------------------------------------------
# Metric noise and the scale of trajectory coherence


def metric_noise(run_dir: Path, draws: int) -> dict:
    """Each landscape metric at the run's last checkpoint, measured on `draws` re-drawn meta-test
    task sets (landscape.seed = 101, 102, ...).

    Returns:
        {metric: {"mean", "half", "values"}}: `half` is the 95% prediction half-width of one
        measurement, t * sd * sqrt(1 + 1/draws), i.e. how far one epoch's value can move by the
        draw of its tasks alone.
    """
    from tfmeta.run import Run
    values: Dict[str, list] = {m: [] for m in METRICS}
    for draw in range(draws):
        run = Run.open(run_dir, [f"landscape.seed={101 + draw}"])
        run.restore()
        measured = run.landscape().measure(progress=False)
        for m in METRICS:
            values[m].append(measured[m])
    half = lambda v: V.t975(len(v) - 1) * float(np.std(v, ddof=1)) * math.sqrt(1 + 1 / len(v))  # noqa: E731
    return {m: {"mean": float(np.mean(v)), "half": half(v), "values": v}
            for m, v in values.items()}


def parameter_count(run_dir: Path) -> int:
    """Trainable parameters of the run's model (the dimension D of the trajectory directions)."""
    from tfmeta.run import Run
    return int(sum(np.prod(p.shape) for p in Run.open(run_dir).model.trainable_variables))


# ---------------------------------------------------------------------------------------------
# Writing


DEVIATIONS = (
    "Meta-overfitting is induced: meta-training draws from {train_characters} characters (x4 "
    "rotations = {classes} classes), the first {train_drawings} of each one's 20 drawings; the "
    "paper meta-trains on 1,200 characters and meta-overfits later.",
    "Omniglot: the small background sets (242 characters), every character outside the pool is "
    "meta-test; the paper holds out 423 of 1,623.",
    "conv4 with {filters} filters (paper: 64); meta-batch {meta_batch} (paper: 16 for 1-shot); "
    "{queries} query examples per class; an epoch is {iterations} meta-steps (paper: 500), "
    "{epochs} epochs.",
    "Accuracy on {eval_tasks} fixed meta-test tasks per epoch.",
    "Sine: {sine_epochs} epochs of {sine_iterations} meta-steps (sine_disjoint preset: K = 10, "
    "alpha = 0.01, T = 1, meta-batch 25).",
    "k-sweeps: Omniglot k = {omniglot_shots} with {sweep_queries} query per class, sine k = "
    "{sine_shots}; each model is measured once, after its last epoch, at its own k.",
    "{seeds} seeds per setting and per k.",
)

UNCHANGED = ("alpha = 0.1 and T = 5 in meta-training and at meta-test (T = 1 for the gradient "
             "coherence setting); Adam 1e-3, no schedule; flatness (Hessian spectral norm by "
             "Lanczos on exact Hessian-vector products) on {flatness_tasks} fixed meta-test tasks; "
             "coherences, trajectory norm and support loss on {coherence_tasks} tasks; "
             "representation coherence over {representation} meta-test images; the finetune "
             "baseline adapted with alpha = 0.1 and T = 5 from a fresh head.")


def _cell(iv: Optional[V.Interval]) -> str:
    return iv.text() if iv is not None else ""


def format_markdown(rows: List[dict], config: ClaimsConfig, noise: Optional[dict],
                    scale: Optional[dict], status: str) -> str:
    """claims.md: the verdict table, the meta-overfitting table, deviations, noise, scale."""
    fields = {**dataclasses.asdict(config), "classes": 4 * config.train_characters,
              "representation": config.representation_inputs or "all"}
    out = ["# Landscape claims (Guiroy, Verma & Pal, 2019)", "", status, "",
           "Per seed (seeds in order) for C1–C3: the epochs of MAML's (T = 5) accuracy peak and "
           "of its sharpest and flattest adapted solutions.", "",
           "| claim | tested statement | Spearman ρ [95% CI] | Pearson r [95% CI] | "
           "value [95% CI] | peak epochs | statement | claim |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        parts = row["parts"] or [Part("—")]
        for i, part in enumerate(parts):
            first = i == 0
            out.append(f"| {row['id'] + ': ' + row['claim'] if first else ''} | {part.test} | "
                       f"{_cell(part.spearman)} | {_cell(part.pearson)} | {_cell(part.value)} | "
                       f"{row.get('peaks', '') if first else ''} | "
                       f"{part.verdict if row['parts'] else ''} | "
                       f"{'**' + row['verdict'] + '**' if first else ''} |")
    overfitting = next((r["overfitting"] for r in rows if "overfitting" in r), None)
    if overfitting:
        out += ["", "## Meta-overfitting (MAML, T = 5)", "",
                "| seed | peak epoch | peak accuracy | drop to the last 3 epochs | peak's 95% "
                "half-width | meta-overfits |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {s} | {p.epoch} | {p.value:.4f} | {p.drop:.4f} | {p.margin:.4f} | "
                f"{'yes' if p.overfits else 'no'} |" for s, p in enumerate(overfitting)]
    out += ["", "## Deviations from the paper's protocol", ""]
    out += [f"- {d.format(**fields)}" for d in DEVIATIONS]
    out += ["", f"Kept: {UNCHANGED.format(**fields)}"]
    if noise:
        out += ["", f"## Metric noise at one checkpoint ({noise['run']}, last epoch)", "",
                f"Each metric measured on {config.noise_draws} re-drawn meta-test task sets. "
                "± is the 95% prediction half-width of one measurement (how far one epoch's "
                "value moves by the draw of its tasks alone); the last column compares it with "
                "the metric's range over the run's epochs.", "",
                "| metric | mean ± 95% | half-width / range over epochs |", "| --- | --- | --- |"]
        for m in METRICS:
            entry, spread = noise["metrics"][m], noise["ranges"][m]
            rel = entry["half"] / spread if spread else math.nan
            note = " (every meta-test image: nothing to re-draw)" if entry["half"] == 0 else ""
            out.append(f"| {m}{note} | {entry['mean']:.4g} ± {entry['half']:.2g} | {rel:.3f} |")
    if scale:
        out += ["", "## Scale of trajectory coherence", "",
                f"D = {scale['parameters']} parameters; two random directions in D dimensions have "
                f"cosine ~ N(0, 1/D), |cos| ~ {scale['random']:.4f}.", "",
                "| setting | min | median | max |", "| --- | --- | --- | --- |"]
        out += [f"| {s} | {v[0]:.4g} | {v[1]:.4g} | {v[2]:.4g} |"
                for s, v in scale["settings"].items()]
    return "\n".join(out) + "\n"


def _jsonable(rows: List[dict]) -> list:
    clean = []
    for row in rows:
        row = dict(row)
        row["parts"] = [dataclasses.asdict(p) for p in row["parts"]]
        if "overfitting" in row:
            row["overfitting"] = [dataclasses.asdict(p) for p in row["overfitting"]]
        clean.append(row)
    return clean


def write_sweep_figure(sweeps: Dict[str, list], path: Path) -> None:
    """Final metric against final generalization across k, one colour per seed (Figures 10, 8e)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [(name, metric, label) for name, metric, label in (
        ("omniglot", "representation_coherence", r"Omniglot: $E[h_i^T h_j]$ against accuracy"),
        ("sine", "gradient_coherence", r"sine: $E[g_i^T g_j]$ against $-$MSE")) if sweeps.get(name)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, metric, label) in zip(axes[0], panels):
        for seed, s in enumerate(sweeps[name]):
            ax.plot(s[metric], s["generalization"], "o", label=f"seed {seed}", alpha=0.8)
            for k, x, y in zip(s["k"], s[metric], s["generalization"]):
                ax.annotate(f"k={int(k)}", (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_title(label)
        ax.set_xlabel(f"final {metric.replace('_', ' ')}")
        ax.set_ylabel("final meta-test accuracy" if name == "omniglot" else "final -MSE")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The experiment


def collect(specs: Sequence[RunSpec], runs_dir: Path, config: ClaimsConfig) -> tuple:
    """(main curves by setting, sweeps) from the runs that have finished."""
    done = {s.name: s for s in specs if finished(runs_dir / s.name, run_epochs(s, config))}
    main = {}
    for setting in ("maml-t5", "maml-t1", "finetune", "sine"):
        names = [f"{setting}-s{seed}" for seed in range(config.seeds)]
        if all(n in done for n in names):
            main[setting] = [curves(runs_dir / n) for n in names]
    sweeps = {}
    for name, ks in (("omniglot", config.omniglot_shots), ("sine", config.sine_shots)):
        per_seed = []
        for seed in range(config.seeds):
            dirs = [f"{name}-k{k}-s{seed}" for k in ks]
            if not all(d in done for d in dirs):
                break
            finals = [final(runs_dir / d) for d in dirs]
            per_seed.append({"k": np.array(ks, float),
                             **{key: np.array([f[key] for f in finals])
                                for key in ("generalization", *METRICS)}})
        if len(per_seed) == config.seeds:
            sweeps[name] = per_seed
    return main, sweeps


def run(config: ClaimsConfig, out_dir, quick_run: bool = False,
        log: Callable[[str], None] = print) -> dict:
    """Trains every run not yet finished under OUT/runs, then judges the claims.

    Writes OUT/claims.md and OUT/claims.json (rewritten after each run), OUT/noise.json, the
    twin-axis figures per setting under OUT/figures/<setting>/ and OUT/figures/sweeps.png.
    Returns {"claims": rows, "table": path, "json": path, "figures": [paths]}.
    """
    if quick_run:
        config = quick(config)
    if not config.data_dir:
        raise ConfigError("the Omniglot data directory is not set: pass --data-dir DIR (the "
                          "Omniglot zips)")
    if config.seeds < 2:
        raise ConfigError(f"--seeds must be at least 2 for an interval across seeds, got "
                          f"{config.seeds}")
    config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).resolve()))
    out = Path(out_dir).resolve()
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    _check_plan(config, out)
    specs = plan(config, omniglot_characters(config.data_dir))
    todo = [s for s in specs if not finished(runs_dir / s.name, run_epochs(s, config))]
    for spec in specs:
        _check_same(spec, runs_dir / spec.name)
    log(f"{len(specs) - len(todo)} of {len(specs)} runs already finished in {runs_dir}; "
        f"training {len(todo)}, {config.jobs} at a time (each run's epochs: RUN.log)")
    paths = {"table": out / "claims.md", "json": out / "claims.json"}

    def judge_and_write(status: str, noise=None, scale=None) -> list:
        main, sweeps = collect(specs, runs_dir, config)
        rows = judge(main, sweeps)
        with atomic_open(paths["table"]) as f:
            f.write(format_markdown(rows, config, noise, scale, status))
        with atomic_open(paths["json"]) as f:
            json.dump({"config": dataclasses.asdict(config), "status": status, "noise": noise,
                       "scale": scale, "claims": _jsonable(rows)}, f, indent=1, default=float)
        return rows

    began = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(config.jobs, maxtasksperchild=1) as pool:
        pending = [pool.apply_async(train_one, (s, str(runs_dir / s.name))) for s in todo]
        for i, result in enumerate(_as_completed(pending), 1):
            name = result.get()
            log(f"[{i}/{len(todo)}] {name} finished ({time.perf_counter() - began:.0f} s)")
            judge_and_write(f"Partial: {len(specs) - len(todo) + i} of {len(specs)} runs "
                            f"finished.")
    noise, scale = _noise_and_scale(config, out, runs_dir, log)
    rows = judge_and_write(f"All {len(specs)} runs finished.", noise, scale)
    figures = _figures(config, out, runs_dir, collect(specs, runs_dir, config)[1])
    for row in rows:
        log(f"{row['id']}: {row['verdict']}")
    return {"claims": rows, "table": str(paths["table"]), "json": str(paths["json"]),
            "figures": figures}


def _as_completed(results: list):
    """AsyncResults in the order they finish (re-raising a run's error in this process)."""
    waiting = list(results)
    while waiting:
        ready = [r for r in waiting if r.ready()]
        for r in ready:
            waiting.remove(r)
            yield r
        if not ready:
            time.sleep(0.5)


def _check_plan(config: ClaimsConfig, out: Path) -> None:
    """An OUT directory keeps the experiment's settings: continuing it with others would mix
    runs of two experiments in one table. More seeds only add runs, so `seeds` may grow."""
    path = out / "experiment.json"
    want = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("jobs", "seeds")}
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


def _noise_and_scale(config: ClaimsConfig, out: Path, runs_dir: Path, log) -> tuple:
    """The metric-noise check on maml-t5 seed 0 (cached in OUT/noise.json) and the trajectory
    coherence scale of each setting."""
    path = out / "noise.json"
    run_dir = runs_dir / "maml-t5-s0"
    if path.is_file():
        noise = json.loads(path.read_text())
    else:
        log(f"metric noise: {config.noise_draws} re-drawn task sets at {run_dir}")
        c = curves(run_dir)
        noise = {"run": "maml-t5-s0", "metrics": metric_noise(run_dir, config.noise_draws),
                 "ranges": {m: float(np.nanmax(c[m]) - np.nanmin(c[m])) for m in METRICS}}
        with atomic_open(path) as f:
            json.dump(noise, f, indent=1)
    dimension = parameter_count(run_dir)
    settings = {}
    for setting in ("maml-t5", "maml-t1", "finetune"):
        tc = np.concatenate([curves(runs_dir / f"{setting}-s{s}")["trajectory_coherence"]
                             for s in range(config.seeds)])
        settings[setting] = [float(np.nanmin(tc)), float(np.nanmedian(tc)), float(np.nanmax(tc))]
    scale = {"parameters": dimension, "random": math.sqrt(2 / (math.pi * dimension)),
             "settings": settings}
    return noise, scale


def _figures(config: ClaimsConfig, out: Path, runs_dir: Path, sweeps: dict) -> list:
    from tfmeta.report import write_report
    figures = []
    for setting in ("maml-t5", "maml-t1", "finetune", "sine"):
        dirs = [runs_dir / f"{setting}-s{s}" for s in range(config.seeds)]
        figures += write_report(dirs, out / "figures" / setting, tensorboard=False)["figures"]
    sweep_path = out / "figures" / "sweeps.png"
    write_sweep_figure(sweeps, sweep_path)
    return figures + ([str(sweep_path)] if sweep_path.is_file() else [])
