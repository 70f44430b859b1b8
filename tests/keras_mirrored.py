"""MetaLearner under MirroredStrategy over 2 logical CPU devices against one device: prints one
JSON line per algorithm (and for MAML with 3 meta-steps per compiled call) with the largest
weight difference after 3 meta-steps through `fit`, and the train loss each logged.

Run in a fresh process (logical devices must exist before TensorFlow starts):

    python tests/keras_mirrored.py
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfmeta import config as config_lib, distribute, tasks  # noqa: E402
from tfmeta.keras import MetaLearner  # noqa: E402

DEVICES = ["/cpu:0", "/cpu:1"]


def trained(algorithm: str, strategy=None, steps_per_execution: int = 1) -> tuple:
    config = config_lib.load("sine", [f"algorithm={algorithm}", "train.meta_batch=4",
                                      "adapt.steps=2", "algorithms.maml_reg.gamma=0.05"])
    source = tasks.build(config.data, config.model.dtype)
    with (strategy or distribute.make_strategy("default")).scope():
        learner = MetaLearner.from_run_config(config, source)
        learner.compile(optimizer=keras.optimizers.Adam(config.train.meta_lr),
                        steps_per_execution=steps_per_execution)
    history = learner.fit(learner.episodes(source, meta_batch=4), epochs=1, steps_per_epoch=3,
                          verbose=0)
    return [v.numpy() for v in learner.net.trainable_variables], history.history["loss"][0]


def main():
    distribute.configure_devices(DEVICES)
    mirrored = distribute.make_strategy("mirrored", DEVICES)
    cases = [(algorithm, 1) for algorithm in ("maml", "maml-reg", "gradient-agreement", "anil",
                                              "meta-sgd", "wormhole", "nal")] + [("maml", 3)]
    for algorithm, k in cases:
        (one, one_loss), (two, two_loss) = trained(algorithm), trained(algorithm, mirrored, k)
        difference = max(float(np.abs(a - b).max()) for a, b in zip(one, two, strict=True))
        print(json.dumps({"algorithm": algorithm, "steps_per_execution": k,
                          "largest_difference": difference, "loss": one_loss,
                          "mirrored_loss": two_loss}), flush=True)


if __name__ == "__main__":
    main()
