"""Task distributions: what a run meta-trains and meta-tests on.

`build(config)` looks the dataset up in the registry, `tfmeta.config.data.DATASETS`, and returns
its `TaskSource`, which knows the example shape, the number of outputs and the loss, and draws
seeded episode streams for the "train" and "test" splits (and for some a "val" split). To add a
dataset: a module here with a `source(config: DataConfig, dtype) -> TaskSource`, and its entry in
`DATASETS`.
"""

import hashlib
import importlib

import numpy as np
import tensorflow as tf

from tfmeta.config.data import DataConfig, dataset_names, find
from tfmeta.errors import ConfigError
from tfmeta.tasks.folder import from_directory
from tfmeta.tasks.source import TaskSource

__all__ = ["build", "from_directory", "fingerprint", "DataConfig", "TaskSource"]


def build(config: DataConfig, dtype: str = "float32") -> TaskSource:
    """Builds the task source for `config`; raises ConfigError or DataError on bad input."""
    record = find(config.dataset)
    if record is None:
        raise ConfigError(f"unknown dataset {config.dataset!r}; expected one of "
                          f"{dataset_names()}")
    module, function = record.source.split(":")
    return getattr(importlib.import_module(module), function)(config, tf.as_dtype(dtype))


def fingerprint(source: TaskSource, config: DataConfig) -> dict:
    """What data a run sees, for `rundir.check_data`: the dataset, its classes per split, and a
    hash of the first examples of every split: its labelled examples where it has them (drawn
    from the split's whole pool, so that how episodes are drawn, say `--episodes
    within_alphabet` at evaluation, does not change it), else its first episodes. Both are pure
    functions of the seed and the data, so a file added or removed, or another preprocessing,
    changes them; values are hashed to 4 decimals, so that another device's last bits do not."""
    digest = hashlib.sha256()
    for split in sorted(source.episode_fns):
        stream = (source.labelled(split, seed=0, batch_size=16) if split in source.labelled_fns
                  else source.episodes(split, seed=0, meta_batch=2, count=2))
        for tensor in tf.nest.flatten(next(iter(stream))):
            value = tensor.numpy()
            if value.dtype.kind == "f":
                value = np.round(value.astype(np.float64) * 1e4).astype(np.int64)
            digest.update(np.ascontiguousarray(value).tobytes())
    return {"dataset": config.dataset, "classes": dict(sorted(source.classes.items())),
            "example_shape": list(source.example_shape), "examples": digest.hexdigest()}
