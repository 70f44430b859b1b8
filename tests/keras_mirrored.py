"""MetaLearner under MirroredStrategy over 2 logical CPU devices against one device: prints one
JSON line per algorithm with the largest weight difference after 3 meta-steps through `fit`.

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


def trained(algorithm: str, strategy=None) -> list:
    config = config_lib.load("sine", [f"algorithm={algorithm}", "train.meta_batch=4",
                                      "adapt.steps=2", "algorithms.maml_reg.gamma=0.05"])
    source = tasks.build(config.data, config.model.dtype)
    with (strategy or distribute.make_strategy("default")).scope():
        learner = MetaLearner.from_config(config, source)
        learner.compile(optimizer=keras.optimizers.Adam(config.train.meta_lr))
    learner.fit(learner.episodes(source, meta_batch=4), epochs=1, steps_per_epoch=3, verbose=0)
    return [v.numpy() for v in learner.net.trainable_variables]


def main():
    distribute.configure_devices(DEVICES)
    mirrored = distribute.make_strategy("mirrored", DEVICES)
    for algorithm in ("maml", "maml-reg", "gradient-agreement", "anil", "meta-sgd", "wormhole",
                      "nal"):
        one, two = trained(algorithm), trained(algorithm, mirrored)
        difference = max(float(np.abs(a - b).max()) for a, b in zip(one, two, strict=True))
        print(json.dumps({"algorithm": algorithm, "largest_difference": difference}), flush=True)


if __name__ == "__main__":
    main()
