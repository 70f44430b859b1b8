"""When does MAML beat non-adaptive learning? The task landscape of Collins, Mokhtari & Shakkottai.

Tasks are the linear-regression mixture of `tfmeta.tasks.linear`: easy tasks (data covariance
rho_easy I, fast gradient descent) and hard ones (rho_hard I), with optima w_i ~ N(c_g, nu_g^2 I)
around one centre per group. One gradient step with step alpha on L_i(w) = 1/2 E(x^T w - y)^2
moves w to w - alpha Sigma_i (w - w_i), after which the excess query MSE is
(w - w_i)^T A_i (w - w_i), with

    A_i = (I - alpha Sigma_i) Sigma_i (I - alpha Sigma_i).

(tfmeta's loss is the MSE without the 1/2, so the same step is `adapt` with lr = alpha / 2.) Both
solutions are closed forms in the mixture's moments, E[A_i w_i] = sum_g p_g A_g c_g:

    w_MAML = (E A_i)^-1 E[A_i w_i]            minimizes the expected risk after one step;
    w_NAL  = (E Sigma_i)^-1 E[Sigma_i w_i]    minimizes the expected risk at w itself (ERM).

Each is scored by its expected risk after one step, sum_g p_g ((w - c_g)^T A_g (w - c_g) +
nu_g^2 tr A_g). MAML's gain is risk(NAL) - risk(MAML) >= 0, also given as the ratio
risk(NAL) / risk(MAML), overall and on the easy and the hard tasks alone.

K-shot MAML differs: its inner step uses the support's empirical covariance. For Gaussian inputs
and tfmeta's linear model (a Dense unit with a bias, whose optimum is 0) the expectation over
the support is exact:

    A_i^K = A_i + (alpha^2 / K) (Sigma_i^3 + tr(Sigma_i^2) Sigma_i + Sigma_i),

the last term from the bias's own inner step, plus alpha^2 sigma^2 (tr Sigma_i^2 + 1) / K from the
support's label noise, the same for every w. Meta-training on K-shot episodes therefore finds
w_MAML^K = (E A^K)^-1 E[A^K w_i], which tends to w_MAML as O(1/K); NAL's objective (the loss on
support and query at w) has the same minimizer w_NAL for every K.

`run` evaluates the closed forms over a grid (hardness discrepancy rho_easy / rho_hard by spread
nu_hard, then the centre distance), microseconds per point, and checks a few points by meta-training
tfmeta's linear model with second-order MAML and with NAL (Adam, K-shot episodes): the trained
kernels against the closed forms, and the measured gain (query MSE after one `adapt` step, paired on
the same held-out tasks) against the closed-form K-shot gain. Each checked point costs two trainings
of `iterations` meta-steps and two evaluations; `quick` checks the base point alone, briefly.
"""

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import keras
import numpy as np

from tfmeta import evaluation, models, stats, training
from tfmeta.algorithms import maml, nal
from tfmeta.config.adapt import AdaptConfig
from tfmeta.config.data import LinearTasksConfig
from tfmeta.errors import ConfigError
from tfmeta.files import atomic_open
from tfmeta.tasks import linear
from tfmeta.tasks.linear import Group
from tfmeta.tasks.source import TaskSource

METHODS = ("nal", "maml")


@dataclasses.dataclass
class CheckConfig:
    """The meta-trained check of the closed forms, at the base spread and centre distance.

    Attributes:
        ratios: the rho_easy / rho_hard at which to meta-train.
        shots: K support points per episode; the inner step's empirical covariance is O(1/K) off.
        queries: Q query points per episode.
        meta_batch: tasks per meta-step.
        iterations: meta-steps per training.
        meta_lr: Adam's initial learning rate, cosine-decayed to 0 over the iterations.
        eval_tasks: held-out tasks on which the gain is measured (the same tasks for both methods).
        eval_batch: tasks per evaluation batch.
        seed: model initialization and episode streams.
    """
    ratios: list = dataclasses.field(default_factory=lambda: [1.0, 4.0, 8.0])
    shots: int = 200
    queries: int = 200
    meta_batch: int = 100
    iterations: int = 3000
    meta_lr: float = 0.05
    eval_tasks: int = 10000
    eval_batch: int = 500
    seed: int = 0


@dataclasses.dataclass
class TaskLandscapeConfig:
    """The sweep.

    Attributes:
        tasks: the base task distribution; the sweep varies its rho_hard, spread_hard and
            centre_distance.
        alpha: the inner step on 1/2 E(x^T w - y)^2 (tfmeta's `adapt` lr is alpha / 2).
        ratios: hardness discrepancies rho_easy / rho_hard of the grid (1 = no discrepancy).
        spreads: nu_hard values of the grid.
        distances: ||c_hard - c_easy|| values of the distance sweep.
        check: the meta-trained check.
    """
    tasks: LinearTasksConfig = dataclasses.field(default_factory=LinearTasksConfig)
    alpha: float = 0.8
    ratios: list = dataclasses.field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])
    spreads: list = dataclasses.field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    distances: list = dataclasses.field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0, 4.0])
    check: CheckConfig = dataclasses.field(default_factory=CheckConfig)


QUICK_ITERATIONS = 600
QUICK_EVAL_TASKS = 2000


def validate(config: TaskLandscapeConfig) -> None:
    """Raises ConfigError naming the first field out of its range."""
    c = config.check
    try:
        config.tasks.check("tasks")
    except ConfigError as error:
        raise ConfigError(f"task landscape: {error}") from None
    positive = {"alpha": config.alpha, "check.shots": c.shots, "check.queries": c.queries,
                "check.meta_batch": c.meta_batch, "check.iterations": c.iterations,
                "check.meta_lr": c.meta_lr, "check.eval_tasks": c.eval_tasks,
                "check.eval_batch": c.eval_batch,
                **{f"ratios[{i}]": r for i, r in enumerate(config.ratios)},
                **{f"check.ratios[{i}]": r for i, r in enumerate(c.ratios)}}
    non_negative = {**{f"spreads[{i}]": s for i, s in enumerate(config.spreads)},
                    **{f"distances[{i}]": d for i, d in enumerate(config.distances)}}
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"task landscape: {name} = {value}; expected a positive number")
    for name, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"task landscape: {name} = {value}; expected a number >= 0")
    if not config.ratios or not config.spreads:
        raise ConfigError("task landscape: ratios and spreads need at least one value each")


# ---------------------------------------------------------------------------------------------
# Closed forms


def adapted_risk_matrix(covariance: np.ndarray, alpha: float,
                        shots: Optional[int] = None) -> np.ndarray:
    """A such that the excess query MSE after one inner step is (w - w_i)^T A (w - w_i).

    Args:
        covariance: Sigma [d, d], the task's input covariance.
        alpha: the inner step on 1/2 E(x^T w - y)^2.
        shots: None for the population step; K for a step on K Gaussian support points taken by
            tfmeta's linear model (with a bias at 0), which adds the expected empirical-covariance
            term.

    Returns:
        A [d, d].
    """
    step = np.eye(len(covariance)) - alpha * covariance
    a = step @ covariance @ step
    if shots:
        squared = covariance @ covariance
        a = a + alpha**2 / shots * (squared @ covariance + np.trace(squared) * covariance
                                    + covariance)
    return a


def label_noise_risk(covariance: np.ndarray, alpha: float, noise: float,
                     shots: Optional[int] = None) -> float:
    """The excess query MSE that the support's label noise adds after a K-shot step (0 for the
    population step): alpha^2 sigma^2 (tr Sigma^2 + 1) / K for the linear model with a bias."""
    if not shots:
        return 0.0
    return alpha**2 * noise**2 * (np.trace(covariance @ covariance) + 1.0) / shots


def maml_solution(groups: Sequence[Group], alpha: float, shots: Optional[int] = None) -> np.ndarray:
    """w_MAML = (E A_i)^-1 E[A_i w_i] [d], the minimizer of the expected risk after one step."""
    matrices = [g.probability * adapted_risk_matrix(g.covariance, alpha, shots) for g in groups]
    return np.linalg.solve(sum(matrices), sum(a @ g.centre for a, g in zip(matrices, groups)))


def nal_solution(groups: Sequence[Group]) -> np.ndarray:
    """w_NAL = (E Sigma_i)^-1 E[Sigma_i w_i] [d], the minimizer of the expected loss at w."""
    matrices = [g.probability * g.covariance for g in groups]
    return np.linalg.solve(sum(matrices), sum(s @ g.centre for s, g in zip(matrices, groups)))


def expected_risk(w: np.ndarray, group: Group, alpha: float, noise: float = 0.0,
                  shots: Optional[int] = None) -> float:
    """E over the group's tasks of the excess query MSE after one step from w [d]:
    (w - c)^T A (w - c) + nu^2 tr A, plus the label-noise term of a K-shot step."""
    a = adapted_risk_matrix(group.covariance, alpha, shots)
    r = w - group.centre
    return float(r @ a @ r + group.spread**2 * np.trace(a)
                 + label_noise_risk(group.covariance, alpha, noise, shots))


def closed_form(tasks: LinearTasksConfig, alpha: float, shots: Optional[int] = None) -> dict:
    """{"nal": w_NAL [d], "maml": w_MAML [d]}; the K-shot w_MAML^K when `shots` is given."""
    groups = linear.groups(tasks)
    return {"nal": nal_solution(groups), "maml": maml_solution(groups, alpha, shots)}


def score(tasks: LinearTasksConfig, alpha: float, solutions: dict,
          shots: Optional[int] = None) -> dict:
    """Expected risks after one step of each solution, and MAML's gain.

    Args:
        solutions: {"nal": w [d], "maml": w [d]}.
        shots: score K-shot steps (label noise included) rather than population steps.

    Returns:
        {risk_nal, risk_maml, gain, ratio} over the mixture, and risk_*_easy, gain_easy,
        risk_*_hard, gain_hard within each group (ratio is NaN when both risks are 0).
    """
    easy, hard = linear.groups(tasks)
    row = {}
    for name in METHODS:
        for part, group in (("_easy", easy), ("_hard", hard)):
            row[f"risk_{name}{part}"] = expected_risk(solutions[name], group, alpha, tasks.noise,
                                                      shots)
        row[f"risk_{name}"] = (easy.probability * row[f"risk_{name}_easy"]
                               + hard.probability * row[f"risk_{name}_hard"])
    for part in ("", "_easy", "_hard"):
        row[f"gain{part}"] = row[f"risk_nal{part}"] - row[f"risk_maml{part}"]
    row["ratio"] = row["risk_nal"] / row["risk_maml"] if row["risk_maml"] > 0 else math.nan
    return row


def at(tasks: LinearTasksConfig, ratio: float, spread: float, distance: float) -> LinearTasksConfig:
    """`tasks` with rho_hard = rho_easy / ratio, spread_hard = spread and centre_distance =
    distance."""
    return dataclasses.replace(tasks, rho_hard=tasks.rho_easy / ratio, spread_hard=spread,
                               centre_distance=distance)


def sweep(config: TaskLandscapeConfig) -> list:
    """Closed-form rows: every (ratio, spread) of the grid at the base centre distance
    (sweep "grid"), then every distance at the base ratio and spread (sweep "distance").

    Returns:
        Dicts with sweep, rho_ratio, spread_hard, distance and the keys of `score`.
    """
    base = config.tasks
    points = [("grid", r, s, base.centre_distance) for r in config.ratios for s in config.spreads]
    points += [("distance", base.rho_easy / base.rho_hard, base.spread_hard, d)
               for d in config.distances]
    rows = []
    for name, ratio, spread, distance in points:
        tasks = at(base, ratio, spread, distance)
        rows.append({"sweep": name, "rho_ratio": ratio, "spread_hard": spread,
                     "distance": distance,
                     **score(tasks, config.alpha, closed_form(tasks, config.alpha))})
    return rows


# ---------------------------------------------------------------------------------------------
# The meta-trained check


def linear_model(dim: int) -> models.MetaModel:
    """y = x^T w + b on x [B, dim]: an identity feature network and a Dense(1) head."""
    return models.mlp(hidden=(), inputs=dim, outputs=1)


def meta_train(source: TaskSource, dim: int, meta_gradient: Callable, alpha: float,
               check: CheckConfig) -> models.MetaModel:
    """Meta-trains a fresh `linear_model` with one inner step of lr alpha / 2 (second order for
    MAML), Adam and a cosine-decayed learning rate; returns the model."""
    keras.utils.set_random_seed(check.seed)
    model = linear_model(dim)
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(check.meta_lr, check.iterations))
    step = training.make_meta_step(model, optimizer, meta_gradient,
                                   AdaptConfig(steps=1, lr=alpha / 2), check.meta_batch,
                                   "vectorized")
    training.run_steps(training.repeat(step),
                       iter(source.episodes("train", check.seed, check.meta_batch)),
                       check.iterations)
    return model


def query_losses(model: models.MetaModel, source: TaskSource, alpha: float,
                 check: CheckConfig) -> np.ndarray:
    """Query MSE [eval_tasks] of each held-out task after one `adapt` step of lr alpha / 2; the
    tasks depend only on the check's seed, so two models are scored on the same tasks."""
    evaluate = evaluation.make_evaluator(model, source, AdaptConfig(steps=1, lr=alpha / 2), 1,
                                         check.eval_tasks, check.seed, check.eval_batch,
                                         "vectorized")
    return evaluate()["mse"][:, 1]


def relative_error(w: np.ndarray, reference: np.ndarray) -> float:
    """||w - reference|| / ||reference||."""
    return float(np.linalg.norm(w - reference) / np.linalg.norm(reference))


def trained_check(tasks: LinearTasksConfig, alpha: float, check: CheckConfig) -> dict:
    """Meta-trains MAML and NAL on `tasks` and compares them with the closed forms.

    Returns:
        A row: rho_ratio; maml_error = ||w_trained - w_MAML^K|| / ||w_MAML^K||,
        maml_error_population (against w_MAML), k_shot_shift = ||w_MAML^K - w_MAML|| / ||w_MAML||,
        nal_error; the trained biases; risk_nal, risk_maml, gain (closed-form K-shot) beside
        risk_*_measured (held-out query MSE minus sigma^2) and gain_measured with its 95% interval
        gain_ci95; gain_population, the population closed form.
    """
    source = linear.task_source(tasks, check.shots, check.queries)
    exact = closed_form(tasks, alpha, check.shots)
    population = closed_form(tasks, alpha)
    trained = {name: meta_train(source, tasks.dim, fn, alpha, check)
               for name, fn in (("nal", nal.meta_gradient), ("maml", maml.meta_gradient))}
    kernels = {name: m.head.kernel.numpy().ravel().astype(np.float64)
               for name, m in trained.items()}
    losses = {name: query_losses(m, source, alpha, check) for name, m in trained.items()}
    closed = score(tasks, alpha, exact, check.shots)
    gain = stats.estimate(losses["nal"] - losses["maml"])
    row = {"rho_ratio": tasks.rho_easy / tasks.rho_hard,
           "maml_error": relative_error(kernels["maml"], exact["maml"]),
           "maml_error_population": relative_error(kernels["maml"], population["maml"]),
           "k_shot_shift": relative_error(exact["maml"], population["maml"]),
           "nal_error": relative_error(kernels["nal"], exact["nal"])}
    for name in METHODS:
        row[f"bias_{name}"] = float(trained[name].head.bias.numpy()[0])
    for name in METHODS:
        row[f"risk_{name}"] = closed[f"risk_{name}"]
        row[f"risk_{name}_measured"] = float(losses[name].mean()) - tasks.noise**2
    row.update(gain=closed["gain"], gain_measured=gain.mean, gain_ci95=gain.ci95,
               gain_population=score(tasks, alpha, population)["gain"])
    return row


# ---------------------------------------------------------------------------------------------
# Tables and the figure


def to_csv(rows: Sequence[dict]) -> str:
    """The rows as CSV, columns in the first row's order, floats to 8 significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.8g}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def _g(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "—"


def _matrix(rows: Sequence[dict], key: str, config: TaskLandscapeConfig) -> list:
    cells = {(r["rho_ratio"], r["spread_hard"]): r[key] for r in rows if r["sweep"] == "grid"}
    lines = ["| ρ_easy/ρ_hard | " + " | ".join(f"ν_hard = {s:g}" for s in config.spreads) + " |",
             "| --- |" + " --- |" * len(config.spreads)]
    for ratio in config.ratios:
        lines.append(f"| {ratio:g} | "
                     + " | ".join(_g(cells[ratio, s]) for s in config.spreads) + " |")
    return lines


def format_markdown(rows: Sequence[dict], trained: Sequence[dict], check: CheckConfig,
                    config: TaskLandscapeConfig) -> str:
    """table.md: the settings, the gain and the ratio over the grid, the distance sweep, and the
    meta-trained check."""
    t = config.tasks
    base_ratio = t.rho_easy / t.rho_hard
    lines = [
        "# MAML against NAL on the task landscape (Collins, Mokhtari & Shakkottai)", "",
        f"Linear regression, d = {t.dim}, hard fraction {t.hard_fraction:g}, ρ_easy = "
        f"{t.rho_easy:g}, ν_easy = {t.spread_easy:g}, σ = {t.noise:g}; one inner step α = "
        f"{config.alpha:g} on ½E(xᵀw − y)². Risk: expected excess query MSE after one population "
        f"step, E(w − w_i)ᵀA_i(w − w_i) with A_i = (I − αΣ_i)Σ_i(I − αΣ_i). "
        f"Gain = risk(NAL) − risk(MAML); ratio = risk(NAL) / risk(MAML).", "",
        f"## Gain, ‖c_hard − c_easy‖ = {t.centre_distance:g}", "",
        *_matrix(rows, "gain", config), "",
        f"## Ratio risk(NAL) / risk(MAML), ‖c_hard − c_easy‖ = {t.centre_distance:g}", "",
        *_matrix(rows, "ratio", config), "",
        f"## Centre distance, ρ_easy/ρ_hard = {base_ratio:g}, ν_hard = {t.spread_hard:g}", "",
        "| ‖c_hard − c_easy‖ | risk NAL | risk MAML | gain | ratio | gain on easy tasks | "
        "gain on hard tasks |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["sweep"] == "distance":
            lines.append(f"| {r['distance']:g} | {_g(r['risk_nal'])} | {_g(r['risk_maml'])} | "
                         f"{_g(r['gain'])} | {_g(r['ratio'])} | {_g(r['gain_easy'])} | "
                         f"{_g(r['gain_hard'])} |")
    if trained:
        lines += [
            "", f"## Meta-trained check (ν_hard = {t.spread_hard:g}, ‖c_hard − c_easy‖ = "
                f"{t.centre_distance:g})", "",
            f"tfmeta's linear model meta-trained by second-order MAML and by NAL: K = "
            f"{check.shots} support and Q = {check.queries} query points, meta-batch "
            f"{check.meta_batch}, {check.iterations} Adam steps. w*_K is the K-shot closed form, "
            f"w* the population one; errors are ‖w_trained − w*‖ / ‖w*‖; measured gains are "
            f"paired over {check.eval_tasks} held-out tasks after one `adapt` step (± 95%).", "",
            "| ρ_easy/ρ_hard | MAML vs w*_K | MAML vs w* | w*_K vs w* | NAL vs w*_NAL | biases "
            "(MAML, NAL) | gain, K-shot closed form | gain, measured | gain, population |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in trained:
            lines.append(
                f"| {r['rho_ratio']:g} | {r['maml_error']:.2%} | {r['maml_error_population']:.2%} "
                f"| {r['k_shot_shift']:.2%} | {r['nal_error']:.2%} | {r['bias_maml']:.1e}, "
                f"{r['bias_nal']:.1e} | {_g(r['gain'])} | {r['gain_measured']:.3g} ± "
                f"{r['gain_ci95']:.2g} | {_g(r['gain_population'])} |")
    return "\n".join(lines) + "\n"


def write_figure(rows: Sequence[dict], trained: Sequence[dict], check: CheckConfig,
                 config: TaskLandscapeConfig, path: Path) -> None:
    """task_landscape.png: the ratio and the gain against the hardness discrepancy (one line per
    nu_hard; the meta-trained check as markers), and both against the centre distance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = config.tasks
    fig, (ratio_ax, gain_ax, distance_ax) = plt.subplots(1, 3, figsize=(15, 4.4), dpi=130)
    for k, spread in enumerate(config.spreads):
        line = [r for r in rows if r["sweep"] == "grid" and r["spread_hard"] == spread]
        x = [r["rho_ratio"] for r in line]
        ratio_ax.plot(x, [r["ratio"] for r in line], marker="o", label=f"ν_hard = {spread:g}")
        # Widest first, so that lines which coincide stay visible as nested bands.
        width = 1.5 + 2.0 * (len(config.spreads) - 1 - k)
        gain_ax.plot(x, [r["gain"] for r in line], marker="o", lw=width, ms=width + 2,
                     label=f"ν_hard = {spread:g}")
    if trained:
        gain_ax.errorbar([r["rho_ratio"] for r in trained], [r["gain_measured"] for r in trained],
                         yerr=[r["gain_ci95"] for r in trained], fmt="kx", ms=8, capsize=3,
                         label=f"meta-trained, K = {check.shots} (ν_hard = "
                               f"{t.spread_hard:g})")
        gain_ax.plot([r["rho_ratio"] for r in trained], [r["gain"] for r in trained], "ks",
                     mfc="none", ms=8, label="K-shot closed form")
    for ax in (ratio_ax, gain_ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hardness discrepancy ρ_easy / ρ_hard")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ratio_ax.set_ylabel("risk(NAL) / risk(MAML)")
    ratio_ax.set_title(f"Ratio, ‖c_hard − c_easy‖ = {t.centre_distance:g}")
    gain_ax.set_ylabel("risk(NAL) − risk(MAML)")
    gain_ax.set_title(f"Gain, ‖c_hard − c_easy‖ = {t.centre_distance:g}")
    line = [r for r in rows if r["sweep"] == "distance"]
    x = [r["distance"] for r in line]
    distance_ax.plot(x, [r["gain"] for r in line], marker="o", color="C0", label="gain")
    distance_ax.set_xlabel("centre distance ‖c_hard − c_easy‖")
    distance_ax.set_ylabel("risk(NAL) − risk(MAML)", color="C0")
    twin = distance_ax.twinx()
    twin.plot(x, [r["ratio"] for r in line], marker="s", ls="--", color="C3", label="ratio")
    twin.set_ylabel("risk(NAL) / risk(MAML)", color="C3")
    distance_ax.set_title(f"ρ_easy/ρ_hard = {t.rho_easy / t.rho_hard:g}, "
                          f"ν_hard = {t.spread_hard:g}")
    distance_ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", facecolor="white")
    plt.close(fig)


def run(config: TaskLandscapeConfig, out_dir, quick: bool = False,
        log: Callable[[str], None] = lambda _: None) -> dict:
    """Runs the sweep and the meta-trained check; writes table.md, table.csv, trained.csv and
    task_landscape.png under `out_dir`.

    Args:
        quick: check only the base ratio, with QUICK_ITERATIONS meta-steps and QUICK_EVAL_TASKS
            held-out tasks; the closed-form sweep is unchanged.
        log: receives one line per meta-trained point.

    Returns:
        {"rows": closed-form rows, "trained": check rows, "table", "csv", "figure" and (when a
        point was checked) "trained_csv": paths}.

    Raises:
        ConfigError: a field of `config` is out of range.
    """
    validate(config)
    out_dir = Path(out_dir)
    check = config.check
    if quick:
        check = dataclasses.replace(check, ratios=[config.tasks.rho_easy / config.tasks.rho_hard],
                                    iterations=min(check.iterations, QUICK_ITERATIONS),
                                    eval_tasks=min(check.eval_tasks, QUICK_EVAL_TASKS))
    rows = sweep(config)
    trained = []
    for ratio in check.ratios:
        tasks = at(config.tasks, ratio, config.tasks.spread_hard, config.tasks.centre_distance)
        trained.append(trained_check(tasks, config.alpha, check))
        r = trained[-1]
        log(f"ρ_easy/ρ_hard = {ratio:g}: MAML {r['maml_error']:.2%} from w*_K, NAL "
            f"{r['nal_error']:.2%} from w*_NAL; gain {r['gain_measured']:.4g} ± "
            f"{r['gain_ci95']:.2g} measured, {r['gain']:.4g} closed form")
    paths = {"table": out_dir / "table.md", "csv": out_dir / "table.csv",
             "figure": out_dir / "task_landscape.png"}
    with atomic_open(paths["table"]) as f:
        f.write(format_markdown(rows, trained, check, config))
    with atomic_open(paths["csv"]) as f:
        f.write(to_csv(rows))
    if trained:
        paths["trained_csv"] = out_dir / "trained.csv"
        with atomic_open(paths["trained_csv"]) as f:
            f.write(to_csv(trained))
    write_figure(rows, trained, check, config, paths["figure"])
    return {"rows": rows, "trained": trained, **{k: str(v) for k, v in paths.items()}}
