"""Trains each case with the default strategy and with MirroredStrategy over 2 logical CPU
devices, and prints one JSON line per case with the largest relative difference of the weights.

Run in a fresh process (logical devices must exist before TensorFlow starts):

    python tests/mirrored_equivalence.py WORK_DIR [OMNIGLOT_DIR]

Cases: every algorithm on sine (float32, and maml in float64), MAML++'s options, 2 meta-steps per
compiled call, maml and anil with per-step batch norm on a small Omniglot conv4 (batch norm,
max-pool), and a run trained one epoch on one device then resumed on two replicas.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfmeta import config as config_lib, distribute, training  # noqa: E402
from tfmeta.run import Run  # noqa: E402

DEVICES = ["/cpu:0", "/cpu:1"]
# Evaluation is off (it costs half the time and the weights do not depend on it), except for the
# resumed run, which goes through the whole epoch loop on both strategies.
TINY = ["train.epochs=1", "train.iterations=3", "train.eval_tasks=4", "train.eval_batch=2",
        "train.eval_every=0", "landscape.every=0", "train.meta_batch=4"]
SINE = {
    "maml": [], "maml first-order": ["adapt.first_order=true"],
    "maml float64": ["model.dtype=float64"],
    "maml-reg": ["algorithm=maml-reg", "algorithms.maml_reg.gamma=0.05"],
    "maml-reg differentiated mean": ["algorithm=maml-reg", "algorithms.maml_reg.gamma=0.05",
                                     "algorithms.maml_reg.constant_mean=false"],
    "maml-reg float64": ["algorithm=maml-reg", "algorithms.maml_reg.gamma=0.05",
                         "model.dtype=float64"],
    "maml-reg differentiated mean float64": [
        "algorithm=maml-reg", "algorithms.maml_reg.gamma=0.05",
        "algorithms.maml_reg.constant_mean=false", "model.dtype=float64"],
    "gradient-agreement": ["algorithm=gradient-agreement"],
    "gradient-agreement float64": ["algorithm=gradient-agreement", "model.dtype=float64"],
    "wormhole": ["algorithm=wormhole"], "nal": ["algorithm=nal"],
    "anil": ["algorithm=anil"], "meta-sgd": ["algorithm=meta-sgd"],
    "maml++ options": ["adapt.steps=2", "adapt.per_step_lr=true", "train.cosine_lr=true",
                       "algorithms.maml.multi_step_epochs=1"],
    "finetune": ["algorithm=finetune", "algorithms.finetune.batch_size=8"],
    # 3 iterations at 2 per call: a compiled loop drawing distributed shares, then a single step.
    "maml 2 steps per execution": ["train.steps_per_execution=2"],
    "gradient-agreement 2 steps per execution": ["algorithm=gradient-agreement",
                                                 "train.steps_per_execution=2"],
}


def weights(run_dir: Path) -> list:
    config = config_lib.load(str(run_dir / "config.yaml"))
    run = Run(config, run_dir)
    run.restore()
    return [v.numpy() for v in run.model.trainable_variables]


def relative_difference(a: list, b: list) -> float:
    """||a - b|| / ||a|| over all the weights."""
    flat = lambda ws: np.concatenate([w.ravel() for w in ws])  # noqa: E731
    return float(np.linalg.norm(flat(a) - flat(b)) / np.linalg.norm(flat(a)))


def train(work: Path, name: str, preset: str, overrides: list, strategy: str,
          resume: bool = False) -> Path:
    run_dir = work / f"{name.replace(' ', '-')}-{strategy}"
    extra = [f"train.strategy={strategy}"] + (
        [f"train.devices={json.dumps(DEVICES)}"] if strategy == "mirrored" else [])
    config = config_lib.load(preset, [f"run_dir={run_dir}", *TINY, *overrides, *extra])
    return training.train(config, resume=resume, progress=False, log=lambda _: None)


def main():
    work, omniglot = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
    distribute.configure_devices(DEVICES)  # before any TensorFlow op
    cases = [(name, "sine", overrides) for name, overrides in SINE.items()]
    if omniglot:
        conv4 = [f"data.omniglot.data_dir={omniglot}", "model.filters=8", "model.pool=max"]
        cases.append(("omniglot conv4", "omniglot_5w1s-cpu", conv4))
        cases.append(("omniglot conv4 anil per-step norms", "omniglot_5w1s-cpu",
                      conv4 + ["algorithm=anil", "adapt.steps=2", "adapt.per_step_norm=true"]))
    for name, preset, overrides in cases:
        one = weights(train(work, name, preset, overrides, "default"))
        two = weights(train(work, name, preset, overrides, "mirrored"))
        print(json.dumps({"case": name, "dtype": str(one[0].dtype), "replicas": 2,
                          "relative_difference": relative_difference(one, two)}), flush=True)
    # One epoch on one device, then a second on two replicas, against two epochs straight.
    evaluated = ["train.eval_every=1"]
    straight = weights(train(work, "straight", "sine", evaluated + ["train.epochs=2"], "default"))
    first = train(work, "resumed", "sine", evaluated, "default")
    resumed = work / "resumed-mirrored"
    first.rename(resumed)
    train(work, "resumed", "sine", evaluated + ["train.epochs=2"], "mirrored", resume=True)
    print(json.dumps({"case": "resumed on 2 replicas", "dtype": "float32",
                      "relative_difference": relative_difference(straight, weights(resumed))}),
          flush=True)
    assert tf.distribute.get_strategy().num_replicas_in_sync == 1


if __name__ == "__main__":
    main()
