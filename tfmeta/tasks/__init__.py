"""Task distributions: what a run meta-trains and meta-tests on.

`build(config)` looks the dataset up in `SOURCES` and returns its `TaskSource`, which knows the
example shape, the number of outputs and the loss, and draws seeded episode streams for the
"train" and "test" splits (and for some a "val" split). To add a dataset: a module here with a
`source(config: DataConfig, dtype) -> TaskSource`, its entry in SOURCES, and its name (and
options, if any) in `tfmeta.config.data`.
"""

from typing import Callable, Dict

import tensorflow as tf

from tfmeta.config.data import DATASETS, DataConfig, is_tfds
from tfmeta.errors import ConfigError
from tfmeta.tasks import folder, linear, miniimagenet, omniglot_split, sine, tfds_images
from tfmeta.tasks.folder import from_directory  # noqa: F401  (tfmeta.tasks.from_directory)
from tfmeta.tasks.source import TaskSource

SOURCES: Dict[str, Callable[[DataConfig, tf.DType], TaskSource]] = {
    "sine": sine.source,
    "linear": linear.source,
    "omniglot": omniglot_split.source,
    "miniimagenet": miniimagenet.source,
    "folder": folder.source,
}


def build(config: DataConfig, dtype: str = "float32") -> TaskSource:
    """Builds the task source for `config`; raises ConfigError or DataError on bad input."""
    if is_tfds(config.dataset):
        return tfds_images.source(config, tf.as_dtype(dtype))
    if config.dataset not in SOURCES:
        raise ConfigError(f"unknown dataset {config.dataset!r}; expected one of "
                          f"{', '.join(DATASETS)}, or tfds:NAME")
    return SOURCES[config.dataset](config, tf.as_dtype(dtype))
