"""Omniglot meta-train / meta-test classes: the split by alphabet or character, and rotations.

As in MAML, each character rotated by 0, 90, 180 and 270 degrees is a class of its own; rotations
of a meta-train character stay in meta-train. The split is drawn once from `split_seed`, independent
of the run's seed, so runs with different seeds meta-test on the same classes.

For within-alphabet episodes an alphabet turned by 90, 180 or 270 degrees counts as an alphabet of
its own ("Greek@90"): a task never mixes orientations, which would make its classes easier to tell
apart than the characters of one script.
"""

import dataclasses

import numpy as np

from tfmeta.errors import ConfigError
from tfmeta.tasks import omniglot
from tfmeta.tasks.augment import AffineConfig, check_affine
from tfmeta.tasks.classification import Pool, as_pool

EPISODES = ("any", "within_alphabet")


@dataclasses.dataclass
class OmniglotConfig:
    """Where Omniglot comes from and how its classes are split.

    Attributes:
        data_dir: directory holding the dataset's zips (images_background.zip,
            images_evaluation.zip, images_background_small1.zip, images_background_small2.zip).
        source: "zips" reads `data_dir`; "tfds" uses TensorFlow Datasets' `omniglot` (downloads).
        split: "alphabet" holds out whole alphabets for meta-test; "character" holds out characters.
        holdout: how many alphabets (or characters) are held out, drawn with `split_seed`; 0
            meta-trains on every class and leaves no meta-test split.
        test_alphabets: names of the meta-test alphabets; overrides `holdout` when set.
        rotations: add the 90/180/270-degree rotations of every character as new classes.
        image_size: images are resized to image_size x image_size.
        split_seed: seed of the held-out draw.
        train_drawings: drawings kept per meta-train character (of 20; the first ones, drawer
            order); fewer drawings make meta-training memorize and meta-overfit sooner.
        episodes: "any" draws an episode's N classes from the whole split; "within_alphabet"
            draws them from one alphabet of the split (Lake et al.'s one-shot protocol), for
            meta-training and meta-test alike (`tfmeta evaluate --episodes` overrides it).
        augment: random affine maps of meta-train images; meta-test images are never augmented.
    """
    data_dir: str = ""
    source: str = "zips"
    split: str = "alphabet"
    holdout: int = 2
    test_alphabets: list = dataclasses.field(default_factory=list)
    rotations: bool = True
    image_size: int = 28
    split_seed: int = 0
    train_drawings: int = 20
    episodes: str = "any"
    augment: AffineConfig = dataclasses.field(default_factory=AffineConfig)


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


def check(config: OmniglotConfig) -> None:
    """Raises ConfigError naming the data.omniglot key whose value is out of range."""
    if config.episodes not in EPISODES:
        raise ConfigError(f"'data.omniglot.episodes' must be one of {', '.join(EPISODES)}, "
                          f"got {config.episodes!r}")
    if not 1 <= config.train_drawings <= omniglot.IMAGES_PER_CHARACTER:
        raise ConfigError(f"data.omniglot.train_drawings must be between 1 and "
                          f"{omniglot.IMAGES_PER_CHARACTER}, got {config.train_drawings}")
    if config.holdout < 0:
        raise ConfigError(f"'data.omniglot.holdout' must be a non-negative integer, "
                          f"got {config.holdout!r}")
    check_affine(config.augment, "data.omniglot.augment")


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
    check(config)
    data = load(config)
    train, test = split_classes(data.alphabets, config)
    pools = {"train": _pool(data, train, config.train_drawings, config.rotations)}
    if len(test):
        pools["test"] = _pool(data, test, omniglot.IMAGES_PER_CHARACTER, config.rotations)
    return pools
