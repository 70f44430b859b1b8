"""Omniglot meta-train / meta-test classes: the split by alphabet or character, and rotations.

As in MAML, each character rotated by 0, 90, 180 and 270 degrees is a class of its own; rotations
of a meta-train character stay in meta-train. The split is drawn once from `split_seed`, independent
of the run's seed, so runs with different seeds meta-test on the same classes.

For within-alphabet episodes an alphabet turned by 90, 180 or 270 degrees counts as an alphabet of
its own ("Greek@90"): a task never mixes orientations, which would make its classes easier to tell
apart than the characters of one script.
"""

import numpy as np
import tensorflow as tf

from tfmeta.config.data import DataConfig, OmniglotConfig
from tfmeta.errors import ConfigError
from tfmeta.tasks import augment, classification, omniglot
from tfmeta.tasks.classification import Pool, as_pool
from tfmeta.tasks.image_format import omniglot_format
from tfmeta.tasks.source import TaskSource


def load(config: OmniglotConfig) -> omniglot.OmniglotData:
    """Reads Omniglot from the configured source."""
    if config.source == "tfds":
        return omniglot.load_omniglot_tfds(config.data_dir or None, config.image_size)
    if config.source != "zips":
        raise ConfigError(f"data.omniglot.source must be 'zips' or 'tfds', not {config.source!r}")
    if not config.data_dir:
        raise ConfigError("data.omniglot.data_dir is not set: pass --data-dir DIR (a directory "
                          "holding the Omniglot zips), or set data.omniglot.source: tfds")
    return omniglot.load_omniglot(config.data_dir, config.image_size)


def split_classes(alphabets, config: OmniglotConfig) -> tuple:
    """Indices of the meta-train and meta-test characters.

    Args:
        alphabets: [C] alphabet name of each character.

    Returns:
        (train indices, test indices), int arrays that partition range(C).
    """
    alphabets = np.asarray(alphabets)
    names = sorted(set(alphabets))
    rng = np.random.default_rng(config.split_seed)
    if config.split == "alphabet":
        if config.test_alphabets:
            unknown = sorted(set(config.test_alphabets) - set(names))
            if unknown:
                raise ConfigError(f"data.omniglot.test_alphabets: {unknown} not in the data; "
                                  f"alphabets present: {names}")
            held = set(config.test_alphabets)
        else:
            _check_holdout(config.holdout, len(names), "alphabets")
            held = set(rng.permutation(names)[:config.holdout])
        is_test = np.isin(alphabets, sorted(held))
    elif config.split == "character":
        _check_holdout(config.holdout, len(alphabets), "characters")
        is_test = np.zeros(len(alphabets), bool)
        is_test[rng.permutation(len(alphabets))[:config.holdout]] = True
    else:
        raise ConfigError(f"data.omniglot.split must be 'alphabet' or 'character', "
                          f"not {config.split!r}")
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _check_holdout(holdout: int, available: int, what: str) -> None:
    if not 0 <= holdout < available:
        raise ConfigError(f"data.omniglot.holdout={holdout}, but the data has {available} {what}; "
                          f"it must be between 0 and {available - 1}. (The paper presets hold "
                          f"out 423 of the full set's 1623 characters; for the small sets use "
                          f"the omniglot_*-cpu presets, which hold out 2 alphabets.)")


ROTATIONS = (0, 90, 180, 270)


def with_rotations(images: np.ndarray) -> np.ndarray:
    """[C, M, H, W] -> [4C, M, H, W]: the characters, then their 90, 180, 270-degree rotations."""
    return np.concatenate([np.rot90(images, k, axes=(2, 3)) for k in range(4)])


def _pool(data: omniglot.OmniglotData, index: np.ndarray, drawings: int, rotate: bool) -> Pool:
    """The Pool of characters `index` (first `drawings` drawings each), named and grouped by
    alphabet, with their rotations after them when `rotate`."""
    images = data.images[index][:, :drawings]
    names = [f"{data.alphabets[i]}/{data.characters[i]}" for i in index]
    groups = [data.alphabets[i] for i in index]
    if rotate:
        images = with_rotations(images)
        names = [f"{n}@{r}" if r else n for r in ROTATIONS for n in names]
        groups = [f"{g}@{r}" if r else g for r in ROTATIONS for g in groups]
    return as_pool(np.ascontiguousarray(images))._replace(names=tuple(names), groups=tuple(groups))


def omniglot_pools(config: OmniglotConfig) -> dict:
    """{"train": Pool, "test": Pool} of uint8 [C, 20, S, S] classes grouped by alphabet; no
    "test" when `holdout` is 0."""
    config.check()
    data = load(config)
    train, test = split_classes(data.alphabets, config)
    pools = {"train": _pool(data, train, config.train_drawings, config.rotations)}
    if len(test):
        pools["test"] = _pool(data, test, omniglot.IMAGES_PER_CHARACTER, config.rotations)
    return pools


def source(config: DataConfig, dtype=tf.float32) -> TaskSource:
    """Omniglot's TaskSource: N-way episodes of the split's classes, drawn from the whole split
    or within one alphabet (`data.omniglot.episodes`), the train split's augmented."""
    omniglot = config.omniglot
    size = omniglot.image_size
    return classification.source(config, omniglot_pools(omniglot), dtype, "omniglot",
                                 (size, size, 1), image_format=omniglot_format(size),
                                 augment=augment.affine(omniglot.augment),
                                 within_groups=omniglot.episodes == "within_alphabet")
