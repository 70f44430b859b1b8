"""claims.md, claims.json and the figures: the verdicts and every table they rest on."""

import dataclasses
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from tfmeta import stats, verdicts as V
from tfmeta.experiments.landscape_claims.judge import Part
from tfmeta.experiments.landscape_claims.plan import ClaimsConfig, pool_name
from tfmeta.files import atomic_open

DEVIATIONS = (
    "Meta-overfitting comes from a small meta-training pool, chosen by the pilot: {pool} "
    "(characters x drawings, x4 rotations), every other character meta-test. The paper "
    "meta-trains on 1,200 characters; its meta-overfitting example is MiniImagenet, first-order "
    "MAML, 5-way 1-shot (Section 5.2, Figure 3).",
    "Omniglot: the small background sets (242 characters); the paper holds out 423 of 1,623.",
    "conv4 with {filters} filters (paper: 64); meta-batch {meta_batch} (paper: 16 for 1-shot); "
    "{queries} query examples per class; an epoch is {iterations} meta-steps (paper: 500), "
    "{epochs} epochs, measured at epoch 0 too.",
    "Accuracy on {eval_tasks} fixed meta-test tasks per epoch.",
    "Representation coherence over the query embeddings of the coherence tasks, each task's "
    "computed with its own batch statistics as at meta-test (the paper: all meta-test images, "
    "its batching unstated).",
    "Across training sets: pools of {pool_count} sizes ({pools}) with {pool_seeds} seeds, each "
    "metric at the accuracy peak; the paper varies k (Figure 10). Sine: k = {sine_shots}, "
    "measured after the last epoch, {sine_epochs} epochs of {sine_iterations} meta-steps.",
    "The regularizer: {regularizer_ways}-way 1-shot on the CPU preset (2 alphabets held out), "
    "{regularizer_epochs} x {regularizer_iterations} meta-steps, {regularizer_seeds} seed pairs "
    "scored on {regularizer_eval_tasks} held-out tasks after every epoch (paper: full Omniglot, "
    "5 trials of 600 tasks).",
    "Algorithm 1's mean direction is over the meta-batch: the 20-way CPU preset's meta-batch is "
    "4, so a task's own trajectory is a quarter of the mean it is compared with (a sixteenth in "
    "the paper), and the regularizer sees less disagreement between tasks.",
)

KEPT = ("alpha = 0.1 and T = 5 in meta-training and at meta-test (T = 1 for the gradient "
        "coherence setting); Adam 1e-3, no schedule; flatness (Hessian spectral norm by Lanczos "
        "on exact Hessian-vector products) on {flatness_tasks} fixed meta-test tasks; the other "
        "metrics on {coherence_tasks}; the finetune baseline adapted with alpha = 0.1 and T = 5 "
        "from a fresh Xavier head per task; gamma = 0.5 for the regularizer.")


def _cell(part: Part) -> str:
    """A part's statistic: its interval, or for a tracking statement both phases' intervals, each
    with its verdict."""
    if part.tracking is not None:
        t = part.tracking
        return (f"rising ρ {t.rise.text()} ({t.rise_verdict}); "
                f"falling ρ {t.fall.text()} ({t.fall_verdict})")
    iv = part.spearman or part.value
    return iv.text() if iv is not None else ""


def verdict_table(rows: List[dict]) -> List[str]:
    out = ["| claim | tested statement | statistic, mean [95% CI] over seeds | statement | "
           "claim |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        parts = row["parts"] or [Part("—")]
        for i, part in enumerate(parts):
            first = i == 0
            verdict = part.verdict if row["parts"] else ""
            if part.lean:
                verdict = f"{verdict} ({part.lean})"
            if row["parts"] and not part.counts:
                verdict = f"({verdict}, not counted)"
            out.append(f"| {row['id'] + ': ' + row['claim'] if first else ''} | {part.test} | "
                       f"{_cell(part)} | {verdict} | "
                       f"{'**' + row['verdict'] + '**' if first else ''} |")
    return out


def pilot_section(rows: Sequence[dict], selected: Dict[str, dict],
                  config: ClaimsConfig) -> List[str]:
    out = ["## Pilot: the meta-training pool", "",
           f"One seed per pool and algorithm, accuracy only. The regime asked for: accuracy rises "
           f"for at least {config.rise_epochs} epochs, peaks in the middle third of "
           f"{config.epochs} epochs, then meta-overfits: the fall from the peak (chosen on the "
           "even meta-test tasks) to the last 3 epochs, paired on the odd tasks, has a 95% "
           "interval above 0.", "",
           "| algorithm | pool | peak epoch | peak accuracy | fall to the last 3 epochs | "
           "its 95% lower bound | rises | middle third | falls | regime |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    out += [f"| {r['algorithm']} | {r['pool']} | {r['peak_epoch']} | {r['peak']:.4f} | "
            f"{r['drop']:.4f} | {r['drop_low']:.4f} | {yes(r['rises'])} | "
            f"{yes(r['middle_third'])} | {yes(r['falls'])} | {yes(r['regime'])} |" for r in rows]
    out.append("")
    for algorithm, choice in selected.items():
        out.append(f"- {algorithm}: {choice['name']}" + (" meets all three conditions" if
                                                          choice["regime"] else
                                                          " comes closest (no pool meets all "
                                                          "three)"))
    return out


def overfitting_section(title: str, falls: Sequence[V.Fall]) -> List[str]:
    overfits = V.setting_overfits(falls)
    out = [f"## Meta-overfitting: {title}", "",
           "The peak is chosen on the even meta-test tasks; the fall from it to the mean of the "
           "last 3 epochs is measured on the odd ones, paired per task. A seed meta-overfits when "
           "the fall's 95% interval lies above 0; the setting, when at least "
           f"{V.OVERFITTING_SEEDS:.0%} of its seeds do: here it "
           f"{'does' if overfits else 'does not'}.", "",
           "| seed | peak epoch | peak accuracy (odd tasks) | fall to the last 3 epochs, "
           "mean [95% CI] | meta-overfits |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {s} | {f.epoch} | {f.value:.4f} | {f.drop.text(4)} | "
            f"{'yes' if f.overfits else 'no'} |" for s, f in enumerate(falls)]
    return out


def power_section(title: str, found: dict) -> List[str]:
    """The rules' power at a setting's own noise and shape (`judge.power_at`)."""
    n, d, r = found["noise"], found["design"], found["rates"]
    pct = lambda key: f"{r[key]:.0%}"  # noqa: E731
    return [f"## Power of the rules: {title}", "",
            f"Simulated at this setting's noise, measured on its per-task records: {n.tasks} "
            f"tasks, task difficulty sd {n.task_sd:.3f}, epoch-to-epoch sd {n.epoch_sd:.3f} "
            f"(one epoch's standard error {n.standard_error:.4f}); and its shape: {d.seeds} "
            f"seeds, {d.epochs} epochs, the peak at epoch {d.peak_epoch}, a rise of "
            f"{d.rise:.3f} and a fall of {d.fall:.4f} (medians over seeds); {found['trials']} "
            "simulated settings:", "",
            "| setting meta-overfits | a plateau judged to | tracker reproduced | noise "
            "contradicted | linear trend contradicted | saturating trend contradicted | a "
            "non-tracker reproduced |", "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {pct('overfits')} | {pct('plateau_overfits')} | {pct('tracker_reproduced')} | "
            f"{pct('noise_contradicted')} | {pct('linear_contradicted')} | "
            f"{pct('saturating_contradicted')} | "
            f"{max(r[f'{m}_reproduced'] for m in ('noise', 'linear', 'saturating')):.0%} |", "",
            "The rules decide where a tracker is reproduced in at least 80% and every "
            "non-tracker contradicted in at least 80%: "
            + ("they do here." if r["tracker_reproduced"] >= 0.8 and min(
                r[f"{m}_contradicted"] for m in ("noise", "linear", "saturating")) >= 0.8
               else "they do not here, so an inconclusive verdict of this setting says little.")]


def pools_section(correlations: Dict[str, stats.Interval], pools: Sequence[Dict[str, np.ndarray]],
                  figure: Optional[str],
                  at_steps: Optional[Dict[int, Dict[str, stats.Interval]]] = None) -> List[str]:
    steps = sorted(at_steps or {})
    out = ["## Across pools (Figures 10 and 8e, with pools for k)", "",
           "Per seed, across the pools: Spearman's ρ of each metric with the accuracy, at each "
           "run's accuracy peak (the pools peak at different epochs, so a metric that only grows "
           "with training ranks them by when they peak) and at the same meta-steps for every "
           "pool.", "",
           "| metric | at the peak: ρ [95% CI] | " + " | ".join(
               f"at {n:,} meta-steps" for n in steps) + " |",
           "| --- | --- | " + " | ".join("---" for _ in steps) + " |"]
    out += [f"| {m} | {iv.text()} | " + " | ".join(at_steps[n][m].text() for n in steps) + " |"
            for m, iv in correlations.items()]
    key = "representation_coherence_normalized"
    if steps and key in correlations:
        held = [n for n in steps if at_steps[n][key].low > 0.3]
        out += ["", "The Figure 10 reading (representation coherence, before γ and β, rises with "
                    "the accuracy a training set reaches) "
                    + (f"survives at every fixed point ({', '.join(f'{n:,}' for n in steps)} "
                       "meta-steps)." if len(held) == len(steps) else
                       f"holds at {len(held)} of the {len(steps)} fixed points"
                       + (f" ({', '.join(f'{n:,}' for n in held)})" if held else "")
                       + ": at the peaks it rests on when each pool peaks.")]
    out += ["", "| seed | pool | peak epoch | peak accuracy |", "| --- | --- | --- | --- |"]
    for seed, s in enumerate(pools):
        out += [f"| {seed} | {name} | {int(e)} | {a:.4f} |"
                for name, e, a in zip(s["pool"], s["epoch"], s["generalization"])]
    if figure:
        out += ["", f"Figure: `{figure}`."]
    return out


PAPER_R = (94.05, 95.38)   # the paper's MAML and maml-reg, 20-way 1-shot Omniglot (%)


def regularizer_section(scores: Dict[str, list], iterations: int = 1) -> List[str]:
    """The paired gap after every epoch (of `iterations` meta-steps), whether MAML still rose in
    its last epoch, and the final effect in points and as a relative error reduction, each beside
    the paper's and said to include or exclude it."""
    maml, reg = (np.asarray(scores[m], dtype=np.float64) for m in ("maml", "maml-reg"))
    out = ["## The paper's method: angle-regularized MAML", "",
           "| meta-steps | MAML | maml-reg | paired gap (points), mean [95% CI] |",
           "| --- | --- | --- | --- |"]
    for e in range(maml.shape[1]):
        gap = stats.interval((reg[:, e] - maml[:, e]) * 100)
        out.append(f"| {(e + 1) * iterations:,} | {maml[:, e].mean():.2%} | "
                   f"{reg[:, e].mean():.2%} | {gap.text()} |")
    if maml.shape[1] > 1:
        rise = stats.interval((maml[:, -1] - maml[:, -2]) * 100)
        plateau = ("still rising" if rise.low > 0 else
                   "no longer rising clearly (the interval includes 0)")
        out += ["", f"MAML's last epoch changed its accuracy by {rise.text()} points: "
                    f"{plateau}."]
    paper_gain = PAPER_R[1] - PAPER_R[0]
    paper_error = paper_gain / (100 - PAPER_R[0]) * 100
    gain = stats.interval((reg[:, -1] - maml[:, -1]) * 100)
    error = stats.interval((reg[:, -1] - maml[:, -1]) / (1 - maml[:, -1]) * 100)

    def against(iv, paper):
        return ("includes" if iv.low <= paper <= iv.high else "excludes") + f" the paper's {paper:.2f}"
    out += ["", "| seed | MAML | maml-reg | difference (points) |", "| --- | --- | --- | --- |"]
    out += [f"| {s} | {m:.2%} | {r:.2%} | {100 * (r - m):+.2f} |"
            for s, (m, r) in enumerate(zip(maml[:, -1], reg[:, -1]))]
    out += ["", f"Absolute effect: {gain.text()} points, which {against(gain, paper_gain)} "
                f"(94.05% to 95.38%). Relative reduction of the error: {error.text()}%, which "
                f"{against(error, paper_error)}%."]
    return out


def format_markdown(rows: List[dict], config: ClaimsConfig, status: str,
                    pilot: Optional[tuple] = None, main_peaks: Optional[dict] = None,
                    pools: Optional[tuple] = None, regularizer: Optional[dict] = None,
                    noise: Optional[dict] = None, scale: Optional[dict] = None,
                    chosen: Optional[Sequence[int]] = None,
                    powers: Optional[dict] = None) -> str:
    """claims.md: the verdicts, then every table they rest on (with the rules' power at each
    setting's noise), the deviations, noise and scale."""
    fields = {**dataclasses.asdict(config),
              "pool": pool_name(chosen) if chosen else "pending (the pilot)",
              "pool_count": len(config.pools),
              "pools": ", ".join(pool_name(p) for p in config.pools)}
    out = ["# Landscape claims (Guiroy, Verma & Pal, 2019)", "", status, "",
           "The rules (docs/guides/claims.md, 'Verdict rules'): a statement's per-seed "
           "statistic, a 95% t interval over seeds, reproduced or contradicted when the whole "
           "interval lies on one side of the threshold. \"Tracks accuracy\" is a conjunction: "
           "reproduced when the rank correlation lies above 0.3 in both the rising and the "
           "falling phase, contradicted when either phase's lies wholly below it. The falling "
           "phase is judged only where the setting meta-overfits; elsewhere it is untestable "
           "here.", "",
           *verdict_table(rows)]
    if pilot:
        out += ["", *pilot_section(*pilot, config)]
    for title, peaks in (main_peaks or {}).items():
        out += ["", *overfitting_section(title, peaks)]
    for title, found in (powers or {}).items():
        out += ["", *power_section(title, found)]
    if pools:
        out += ["", *pools_section(*pools)]
    if regularizer:
        out += ["", *regularizer_section(regularizer, config.regularizer_iterations)]
    out += ["", "## Deviations from the paper's protocol", ""]
    out += [f"- {d.format(**fields)}" for d in DEVIATIONS]
    out += ["", f"Kept: {KEPT.format(**fields)}"]
    if noise:
        out += ["", f"## Metric noise at one checkpoint ({noise['run']}, last epoch)", "",
                f"Each metric measured on {config.noise_draws} re-drawn meta-test task sets. ± is "
                "the 95% prediction half-width of one measurement; the last column compares it "
                "with the metric's range over the run's epochs.", "",
                "| metric | mean ± 95% | half-width / range over epochs |", "| --- | --- | --- |"]
        for m, entry in noise["metrics"].items():
            spread = noise["ranges"][m]
            rel = entry["half"] / spread if spread else math.nan
            out.append(f"| {m} | {entry['mean']:.4g} ± {entry['half']:.2g} | {rel:.3f} |")
    if scale:
        out += ["", "## Scale of trajectory coherence", "",
                f"D = {scale['parameters']} parameters; two random directions in D dimensions have "
                f"cosine ~ N(0, 1/D), |cos| ~ {scale['random']:.4f}.", "",
                "| setting | min | median | max |", "| --- | --- | --- | --- |"]
        out += [f"| {s} | {v[0]:.4g} | {v[1]:.4g} | {v[2]:.4g} |"
                for s, v in scale["settings"].items()]
    return "\n".join(out) + "\n"


def jsonable(rows: List[dict]) -> list:
    clean = []
    for row in rows:
        row = dict(row)
        row["parts"] = [dataclasses.asdict(p) for p in row["parts"]]
        if "overfitting" in row:
            row["overfitting"] = [dataclasses.asdict(p) for p in row["overfitting"]]
        clean.append(row)
    return clean


def scatter_figure(panels: Sequence[tuple], per_seed: Sequence[dict], label: str,
                   ylabel: str, path: Path) -> None:
    """One panel per (metric, title): the metric against generalization, one colour per seed,
    each point annotated with its condition (`label` key: k or pool)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.0 * rows), squeeze=False)
    for ax, (metric, title) in zip(axes.flat, panels):
        for seed, s in enumerate(per_seed):
            ax.plot(s[metric], s["generalization"], "o", label=f"seed {seed}", alpha=0.8)
            for name, x, y in zip(s[label], s[metric], s["generalization"]):
                ax.annotate(str(name), (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(metric.replace("_", " "))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))  # long labels, e.g. 0.0125
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
