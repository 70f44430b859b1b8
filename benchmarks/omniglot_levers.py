"""What each lever alone does to 20-way 1-shot accuracy on new alphabets, under both protocols.

    python benchmarks/omniglot_levers.py --data-dir DIR [--out runs/levers] \
        [--results docs/levers.json] [LEVER ...]

Every lever is the baseline, `omniglot_20w1s-cpu --norm support` (2,000 meta-iterations, 2
alphabets held out), with one change. Each run is meta-trained once (a finished run is reused, a
killed one resumes), then its last checkpoint is scored on 600 held-out tasks under both protocols:
`within_alphabet` (Lake et al.: a task's N characters from one alphabet) and `any` (from the whole
held-out split), after the run's own number of test steps. `preset-NAME` measures a shipped
preset as it is instead, and `A+B+...` stacks levers: `preset-NAME+mamlpp+filters-96` is that
preset with both levers' changes, `mamlpp+anil` the baseline with both. Results are merged into
`--results` (JSON, one entry per lever) as each lever finishes, and the whole table is printed as
markdown at the end. Without LEVER arguments, the levers of LEVERS run in order.

`--timing` measures ms/iteration alone instead, for levers already in `--results`: 2 epochs of 30
meta-iterations in a fresh run directory, the second epoch's mean (the first includes tracing).
Run it on an otherwise idle machine; the accuracy runs may share it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tfmeta import config as config_lib

BASELINE = ("omniglot_20w1s-cpu", ["model.norm=support"])
# name -> (what it changes, overrides on top of the baseline)
LEVERS = {
    "baseline": ("omniglot_20w1s-cpu, support norm", []),
    "augment-image": ("affine augmentation, a map per image",
                      ["data.omniglot.augment.per=image"]),
    "augment-class": ("affine augmentation, a map per class",
                      ["data.omniglot.augment.per=class"]),
    "augment-rotate": ("affine maps that also rotate by up to 15 degrees",
                       ["data.omniglot.augment.rotation=15"]),
    "augment-strong": ("larger affine maps: shifts 0.15, scales 0.2, shears 0.3",
                       ["data.omniglot.augment.shift=0.15", "data.omniglot.augment.scale=0.2",
                        "data.omniglot.augment.shear=0.3"]),
    "within-alphabet-training": ("meta-train on within-alphabet episodes",
                                 ["data.omniglot.episodes=within_alphabet"]),
    "cosine-4000": ("4,000 iterations, cosine meta-LR",
                    ["train.epochs=40", "train.cosine_lr=true"]),
    "max-pool": ("max-pooling instead of stride-2 convolutions", ["model.pool=max"]),
    "filters-96": ("96 filters instead of 64", ["model.filters=96"]),
    "meta-batch-8": ("meta-batch 8 instead of 4", ["train.meta_batch=8"]),
    "first-order-warm-up": ("first-order MAML for the first 5 epochs (derivative-order annealing)",
                            ["algorithms.maml.first_order_epochs=5"]),
    "ways-30": ("meta-train 30-way, meta-test 20-way on the head's first 20 rows",
                ["data.ways=30", "data.test_ways=20"]),
    "anil": ("ANIL: adapt the head only", ["algorithm=anil"]),
    "iterations-8000": ("8,000 meta-iterations (80 epochs of 100)", ["train.epochs=80"]),
    "iterations-12000": ("12,000 meta-iterations (120 epochs of 100)", ["train.epochs=120"]),
    "mamlpp": ("MAML++ switches (per-step LRs and norms, multi-step loss, cosine)",
               ["adapt.per_step_lr=true", "adapt.per_step_norm=true",
                "algorithms.maml.multi_step_epochs=5", "train.cosine_lr=true"]),
}
PROTOCOLS = ("within_alphabet", "any")
TASKS = 600


def tfmeta(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tfmeta_cli.main", *args], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def history(run_dir: Path) -> list:
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def split(name: str) -> tuple:
    """(preset or None for the baseline, lever names) of LEVER, preset-NAME or a stack A+B+..."""
    first, *more = name.split("+")
    if first.startswith("preset-"):
        return first.removeprefix("preset-"), more
    return None, [first, *more]


def parts(name: str) -> tuple:
    """(preset, overrides, what changes) of a lever name (`split`)."""
    preset, levers = split(name)
    config, overrides = (preset, []) if preset else (BASELINE[0], list(BASELINE[1]))
    changes = [f"preset-{preset}"] if preset else []
    for lever in levers:
        overrides += LEVERS[lever][1]
        changes.append(LEVERS[lever][0])
    return config, overrides, " + ".join(changes)


def train(name: str, run_dir: Path, data_dir: str, *extra: str) -> None:
    """Meta-trains the lever's run, or resumes it; a finished run is left as it is."""
    config, overrides, _ = parts(name)
    sets = [arg for key in overrides for arg in ("--set", key)]
    if (run_dir / "config.yaml").is_file():
        tfmeta("train", "--resume", str(run_dir), "--no-progress")
    else:
        tfmeta("train", "--config", config, "--data-dir", data_dir, "--run-dir", str(run_dir),
               "--set", "train.eval_every=0", "--set", "landscape.every=0", *sets, *extra,
               "--no-progress")


def time_alone(name: str, out: Path, data_dir: str) -> float:
    """ms per meta-iteration of the lever: the second of 2 epochs of 30, in a fresh run."""
    run_dir = out / "timing" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    train(name, run_dir, data_dir, "--epochs", "2", "--iterations", "30",
          "--set", "algorithms.maml.first_order_epochs=0",
          "--set", "algorithms.maml.multi_step_epochs=0")
    return round(1e3 * history(run_dir)[-1]["meta_train/seconds_per_iteration"], 1)


def measure(name: str, out: Path, data_dir: str) -> dict:
    run_dir = out / name
    train(name, run_dir, data_dir)
    records = history(run_dir)
    seconds = [r["meta_train/seconds_per_iteration"] for r in records]
    entry = {"lever": name, "change": parts(name)[2],
             "iterations": records[-1]["iteration"],
             # The median epoch: one contended epoch does not move it.
             "ms_per_iteration": round(1e3 * sorted(seconds)[len(seconds) // 2], 1),
             # Summed over epochs: a resumed run's wall clock starts again at its resumption.
             "train_minutes": round(sum(
                 r["meta_train/seconds_per_iteration"] * (r["iteration"] - before["iteration"])
                 for before, r in zip([{"iteration": 0}, *records], records)) / 60, 1)}
    steps = str(config_lib.load(str(run_dir / "config.yaml")).adapt.eval_steps)
    for protocol in PROTOCOLS:
        tfmeta("evaluate", str(run_dir), "--tasks", str(TASKS), "--steps", steps,
               "--episodes", protocol)
        suffix = "" if protocol == "any" else f"-{protocol}"
        result = json.loads((run_dir / f"evaluation-test{suffix}.json").read_text())
        accuracy = result["steps"][steps]["accuracy"]
        entry[protocol] = {"mean": accuracy["mean"], "ci95": accuracy["ci95"]}
    return entry


def table(entries: list) -> str:
    lines = ["| lever | change | ms/it alone | within-alphabet | any |",
             "| --- | --- | --- | --- | --- |"]
    for e in entries:
        cells = [f"{100 * e[p]['mean']:.1f} ± {100 * e[p]['ci95']:.1f}" for p in PROTOCOLS]
        alone = e.get("ms_per_iteration_alone")
        lines.append(f"| {e['lever']} | {e['change']} | {f'{alone:.0f}' if alone else '-'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/levers", type=Path)
    parser.add_argument("--results", default="runs/levers/levers.json", type=Path)
    parser.add_argument("--timing", action="store_true",
                        help="time the levers alone (2 x 30 iterations) instead")
    parser.add_argument("levers", nargs="*", default=list(LEVERS))
    args = parser.parse_args()
    unknown = [n for name in args.levers for n in split(name)[1] if n not in LEVERS]
    if unknown:
        parser.error(f"unknown levers {unknown}; levers: {', '.join(LEVERS)}, or preset-NAME, "
                     "stacked with +")
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for name in args.levers:
        if args.timing:
            results.setdefault(name, {"lever": name})["ms_per_iteration_alone"] = time_alone(
                name, args.out, args.data_dir)
        else:
            results[name] = {**results.get(name, {}), **measure(name, args.out, args.data_dir)}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results[name]), flush=True)
    print(table([e for e in results.values() if PROTOCOLS[0] in e]))


if __name__ == "__main__":
    main()
