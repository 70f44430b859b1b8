"""The per-task noise of the landscape-claims experiment, measured: a short run of its main
setting (MAML, T = 5) on one pool, then `tfmeta.power.noise_of` on its per-task records, over all
evaluations and over the second half (nearer a peak). Prints one JSON line for each.

    python benchmarks/claims_noise.py --data-dir ../shared/data/omniglot [--pool 6,10]
        [--epochs 10] [--out /tmp/claims-noise]
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from tfmeta import power, rundir
from tfmeta.experiments import landscape_claims as lc
from tfmeta.experiments.landscape_claims import plan, runner


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--pool", default="6,10", help="characters,drawings")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="/tmp/claims-noise")
    args = parser.parse_args()
    config = lc.ClaimsConfig(data_dir=args.data_dir)
    pool = [int(v) for v in args.pool.split(",")]
    spec = next(s for s in plan.main_runs(config, lc.omniglot_characters(args.data_dir), pool)
                if s.name == "maml-t5-s0")
    spec = dataclasses.replace(spec, epochs=args.epochs, overrides=[
        *spec.overrides, "landscape.every=0", f"train.epochs={args.epochs}"])
    run_dir = Path(args.out) / spec.name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    runner.train_one(spec, str(run_dir))
    rows = rundir.read_per_task(run_dir)
    table = np.array([row["accuracy"] for row in rows])
    for start in (0, len(table) // 2):
        noise = power.noise_of(table[start:])
        print(json.dumps({"epochs": [rows[start]["epoch"], rows[-1]["epoch"]],
                          "tasks": noise.tasks, "task_sd": round(noise.task_sd, 4),
                          "epoch_sd": round(noise.epoch_sd, 4),
                          "standard_error": round(noise.standard_error, 5),
                          "accuracy": [round(float(m), 4) for m in table.mean(axis=1)]}))


if __name__ == "__main__":
    main()
