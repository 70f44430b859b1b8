"""Meta-training through Keras' own door: `compile`, `fit` with callbacks, `evaluate`, then a run
directory that `tfmeta evaluate` and `tfmeta export` open.

    python examples/keras_fit.py sine [--out runs/keras-sine]
    python examples/keras_fit.py omniglot --data-dir ../shared/data/omniglot [--out runs/keras-omniglot]

Each uses its CPU preset (`sine-cpu`, `omniglot_5w1s-cpu --norm support`) with `--epochs` and
`--steps` to shorten it. TensorBoard logs, landscape included, go to OUT/keras; the weights after
each epoch to OUT/keras/weights; the run directory to OUT.
"""

import argparse
from pathlib import Path

import keras

from tfmeta import config as config_lib, tasks
from tfmeta.config.landscape import LandscapeConfig
from tfmeta.keras import LandscapeMetrics, MetaLearner

PRESETS = {"sine": ("sine-cpu", []), "omniglot": ("omniglot_5w1s-cpu", ["model.norm=support"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(PRESETS))
    parser.add_argument("--data-dir", default="", help="the Omniglot zips")
    parser.add_argument("--out", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--steps", type=int, default=None, help="meta-steps per epoch")
    args = parser.parse_args()
    preset, overrides = PRESETS[args.dataset]
    if args.data_dir:
        overrides.append(f"data.omniglot.data_dir={args.data_dir}")
    config = config_lib.load(preset, overrides)
    out = Path(args.out or f"runs/keras-{args.dataset}")
    epochs, steps = args.epochs or config.train.epochs, args.steps or config.train.iterations

    # The lines of the README's Keras example.
    source = tasks.build(config.data)
    learner = MetaLearner.from_run_config(config, source)
    learner.compile(optimizer=keras.optimizers.Adam(config.train.meta_lr), steps_per_execution=10)
    learner.fit(learner.episodes(source, "train", seed=0, meta_batch=config.train.meta_batch),
                epochs=epochs, steps_per_epoch=steps,
                validation_data=source.episodes("test", seed=1, meta_batch=10, count=100),
                callbacks=[LandscapeMetrics(source, LandscapeConfig(flatness_tasks=5,
                                                                    coherence_tasks=50)),
                           keras.callbacks.TensorBoard(str(out / "keras")),
                           keras.callbacks.ModelCheckpoint(
                               str(out / "keras" / "weights" / "{epoch}.weights.h5"),
                               save_weights_only=True)])
    print(learner.evaluate(source.episodes("test", seed=1, meta_batch=10, count=600),
                           return_dict=True, verbose=0))
    print("run directory:", learner.save_run(out))


if __name__ == "__main__":
    main()
