"""The datasets: each one's options, and `DATASETS`, the registry of what tfmeta needs of each
(`tfmeta.tasks` builds them). No TensorFlow here.

To add a dataset: a module in `tfmeta/tasks/` with a `source(config: DataConfig, dtype) ->
TaskSource`, and its entry in `DATASETS` below (with its options class, if it has options).
"""

import dataclasses
import math
import os
from typing import Callable, Optional

from tfmeta.errors import ConfigError, expect

# Omniglot: where the images come from, how classes are split, how an episode draws its classes.
OMNIGLOT_SOURCES = ("zips", "tfds")
OMNIGLOT_SPLITS = ("alphabet", "character")
EPISODES = ("any", "within_alphabet")
DRAWINGS_PER_CHARACTER = 20
# Affine augmentation: no map, a map per image, or one per class of an episode.
AUGMENT_PER = ("none", "image", "class")
# How a folder's images are stored: PIL's "RGB" or "L".
COLORS = ("rgb", "grayscale")


@dataclasses.dataclass
class SineConfig:
    """Task distributions of sine regression; each range is [low, high]."""
    amplitude: list = dataclasses.field(default_factory=lambda: [0.1, 5.0])
    phase: list = dataclasses.field(default_factory=lambda: [0.0, math.pi])
    test_amplitude: list = dataclasses.field(default_factory=lambda: [0.1, 5.0])
    test_phase: list = dataclasses.field(default_factory=lambda: [0.0, math.pi])
    x_range: list = dataclasses.field(default_factory=lambda: [-5.0, 5.0])

    def check(self, key: str = "data.sine") -> None:
        for field in ("amplitude", "phase", "test_amplitude", "test_phase", "x_range"):
            value = getattr(self, field)
            expect(len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                   and value[0] <= value[1], f"{key}.{field}", "[low, high] with low <= high",
                   value)


@dataclasses.dataclass
class AffineConfig:
    """Small random affine maps of Omniglot's meta-train images (bilinear, zero fill).

    Attributes:
        per: "none"; "image" draws a map per image; "class" one per class of an episode, applied
            to all of its images (a distorted character, like a new class).
        shift: largest shift along each axis, as a fraction of the image side.
        scale: largest relative change of scale along each axis (0.1: x0.9 to x1.1).
        shear: largest shear factor.
        rotation: largest rotation about the image centre, in degrees.
    """
    per: str = "none"
    shift: float = 0.1
    scale: float = 0.1
    shear: float = 0.2
    rotation: float = 0.0

    def check(self, key: str = "data.omniglot.augment") -> None:
        expect(self.per in AUGMENT_PER, f"{key}.per", f"one of {', '.join(AUGMENT_PER)}",
               self.per)
        for field, top in (("shift", 0.5), ("scale", 0.5), ("shear", 1.0), ("rotation", 45.0)):
            value = getattr(self, field)
            expect(0 <= value <= top, f"{key}.{field}", f"between 0 and {top}", value)


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

    @property
    def has_test_split(self) -> bool:
        return bool(self.holdout or self.test_alphabets)

    def check(self, key: str = "data.omniglot") -> None:
        expect(self.source in OMNIGLOT_SOURCES, f"{key}.source", " or ".join(OMNIGLOT_SOURCES),
               self.source)
        expect(self.split in OMNIGLOT_SPLITS, f"{key}.split", " or ".join(OMNIGLOT_SPLITS),
               self.split)
        expect(self.episodes in EPISODES, f"{key}.episodes", f"one of {', '.join(EPISODES)}",
               self.episodes)
        expect(1 <= self.train_drawings <= DRAWINGS_PER_CHARACTER, f"{key}.train_drawings",
               f"between 1 and {DRAWINGS_PER_CHARACTER}", self.train_drawings)
        expect(self.holdout >= 0, f"{key}.holdout", "a non-negative integer", self.holdout)
        expect(self.image_size >= 1, f"{key}.image_size", "a positive integer", self.image_size)
        expect(all(isinstance(a, str) for a in self.test_alphabets), f"{key}.test_alphabets",
               "a list of alphabet names", self.test_alphabets)
        self.augment.check(f"{key}.augment")


@dataclasses.dataclass
class MiniImagenetConfig:
    """Where MiniImagenet is, and how episodes are drawn.

    Attributes:
        data_dir: a prepared cache, or a csv or pickle copy (prepared on first use); empty
            searches $TFMETA_DATA_DIR, ./data and ~/data.
        cache_dir: where a copy is prepared; default DIR/.tfmeta-cache/miniimagenet, or
            ~/.cache/tfmeta/miniimagenet-<hash of DIR> when DIR is read-only.
        augment: random flips and shifts of meta-train images (off, as in the papers).
    """
    data_dir: str = ""
    cache_dir: str = ""
    augment: bool = False


@dataclasses.dataclass
class ImageClassesConfig:
    """How a labelled image collection of your own becomes episodes: its classes split into
    meta-train, meta-validation and meta-test, its images' size and colour.

    Attributes:
        image_size: [height, width] every image is resized to; empty keeps the images' own size,
            which they must then share.
        color: "rgb" or "grayscale".
        split: fractions of the classes in meta-train, meta-validation and meta-test (for a folder,
            when it has no split folders); a validation fraction of 0 leaves no val split.
        split_seed: seed of that split.
    """
    image_size: list = dataclasses.field(default_factory=list)
    color: str = "rgb"
    split: list = dataclasses.field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 0

    def check(self, key: str) -> None:
        expect(self.image_size == [] or (
            len(self.image_size) == 2 and all(isinstance(v, int) and v >= 1
                                              for v in self.image_size)),
               f"{key}.image_size", "[] (the images' own size) or [height, width]",
               self.image_size)
        expect(self.color in COLORS, f"{key}.color", " or ".join(COLORS), self.color)
        expect(len(self.split) == 3 and all(isinstance(v, (int, float)) and v >= 0
                                            for v in self.split)
               and abs(sum(self.split) - 1) < 1e-6 and self.split[0] > 0 and self.split[2] > 0,
               f"{key}.split", "[train, val, test] fractions summing to 1, train and test above 0",
               self.split)


@dataclasses.dataclass
class FolderConfig(ImageClassesConfig):
    """Your own images: a folder of class folders (`tfmeta.tasks.folder`); the other fields as
    in `ImageClassesConfig`.

    Attributes:
        data_dir: the folder: DIR/<class>/<image>.png or .jpg, or DIR/{train,val,test}/<class>/.
        cache_dir: where the decoded images are cached; default DIR/.tfmeta-cache, or
            ~/.cache/tfmeta when DIR is read-only.
    """
    data_dir: str = ""
    cache_dir: str = ""

    def check(self, key: str = "data.folder") -> None:
        super().check(key)


@dataclasses.dataclass
class TfdsConfig(ImageClassesConfig):
    """Any TensorFlow Datasets image classification dataset (`--dataset tfds:NAME`,
    `tfmeta.tasks.tfds_images`); the other fields as in `ImageClassesConfig`.

    Attributes:
        data_dir: the TFDS data directory that holds the prepared dataset; empty: TFDS's default
            (~/tensorflow_datasets, or $TFDS_DATA_DIR).
        image_key, label_key: the features holding the image and its class (a ClassLabel).
        splits: the TFDS splits whose examples are pooled before the classes are split; empty:
            every split.
    """
    data_dir: str = ""
    image_key: str = "image"
    label_key: str = "label"
    splits: list = dataclasses.field(default_factory=list)

    def check(self, key: str = "data.tfds") -> None:
        super().check(key)
        for field in ("image_key", "label_key"):
            expect(bool(getattr(self, field)), f"{key}.{field}", "a feature name",
                   getattr(self, field))
        expect(all(isinstance(s, str) for s in self.splits), f"{key}.splits",
               "a list of TFDS split names", self.splits)


@dataclasses.dataclass
class LinearTasksConfig:
    """Linear regression on easy and hard tasks (`tfmeta.tasks.linear`).

    Attributes:
        dim: d, the input dimension.
        hard_fraction: probability that a task is hard.
        rho_easy: data variance of the easy tasks (covariance rho_easy I).
        rho_hard: data variance of the hard tasks, smaller than rho_easy.
        centre_distance: ||c_hard - c_easy||.
        spread_easy: nu_easy, the standard deviation of each coordinate of an easy task's optimum.
        spread_hard: nu_hard, the same for the hard tasks.
        noise: sigma, the standard deviation of the label noise.
    """
    dim: int = 4
    hard_fraction: float = 0.5
    rho_easy: float = 1.0
    rho_hard: float = 0.25
    centre_distance: float = 2.0
    spread_easy: float = 0.5
    spread_hard: float = 0.5
    noise: float = 0.1

    def check(self, key: str = "data.linear") -> None:
        for field in ("dim", "rho_easy", "rho_hard"):
            value = getattr(self, field)
            expect(value > 0, f"{key}.{field}", "positive", value)
        for field in ("centre_distance", "spread_easy", "spread_hard", "noise"):
            value = getattr(self, field)
            expect(value >= 0, f"{key}.{field}", "non-negative", value)
        expect(0 <= self.hard_fraction <= 1, f"{key}.hard_fraction", "a probability in [0, 1]",
               self.hard_fraction)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What tfmeta needs of one dataset: its entry in `DATASETS`.

    Attributes:
        source: "module:function" of its `(DataConfig, tf.DType) -> TaskSource` builder, imported
            when first built (the config imports no TensorFlow).
        options: the class of its config section, data.<name>; None when it has none.
        paths: its section's fields that name files or folders: made absolute when a run is
            saved, so the run opens from any directory; the first is what --data-dir sets.
        preset: the preset a bare `--dataset NAME` starts from.
        classes: its tasks have classes (`data.test_ways` applies).
        hparams: its section -> its own TensorBoard HParams.
        help: what --data-dir names for it.
        named: its name is a prefix, "<name>:NAME" (a TensorFlow Datasets dataset).
    """
    source: str
    options: Optional[type] = None
    paths: tuple = ()
    preset: Optional[str] = None
    classes: bool = True
    hparams: Callable = lambda options: {}
    help: str = ""
    named: bool = False


DATASETS = {
    "sine": Dataset("tfmeta.tasks.sine:source", SineConfig, preset="sine", classes=False),
    "omniglot": Dataset(
        "tfmeta.tasks.omniglot_split:source", OmniglotConfig, ("data_dir",), "omniglot_5w1s",
        hparams=lambda o: {"omniglot.episodes": o.episodes, "omniglot.augment": o.augment.per},
        help="the Omniglot zips"),
    "miniimagenet": Dataset("tfmeta.tasks.miniimagenet:source", MiniImagenetConfig,
                            ("data_dir", "cache_dir"), "miniimagenet_5w1s",
                            help="MiniImagenet in any layout"),
    "linear": Dataset("tfmeta.tasks.linear:source", LinearTasksConfig, classes=False),
    "folder": Dataset("tfmeta.tasks.folder:source", FolderConfig, ("data_dir", "cache_dir"),
                      "folder", help="your folder of class folders"),
    "tfds": Dataset("tfmeta.tasks.tfds_images:source", TfdsConfig, ("data_dir",), "folder",
                    help="the TFDS data directory", named=True),
}


def dataset_names() -> str:
    """The names `data.dataset` takes: "sine, omniglot, ..., tfds:NAME"."""
    return ", ".join(f"{n}:NAME" if d.named else n for n, d in DATASETS.items())


def find(dataset: str) -> Optional[Dataset]:
    """The registry entry of `dataset` ("tfds:mnist" is tfds's), or None."""
    name, _, rest = dataset.partition(":")
    record = DATASETS.get(name)
    return record if record and record.named == bool(rest) else None


def section_of(dataset: str) -> str:
    """The config section of `dataset`: its name, or its prefix for "tfds:NAME"."""
    return dataset.partition(":")[0]


@dataclasses.dataclass
class _Episodes:
    """Which tasks, and how big their episodes are.

    Attributes:
        dataset: a name of `DATASETS`: "sine", "omniglot", "miniimagenet", "linear" (easy and
            hard linear-regression tasks, `tfmeta experiment task-landscape`'s), "folder" (your
            own images) or "tfds:NAME" (a TensorFlow Datasets image classification dataset).
        ways: N classes per episode (classification only), and the width of the model's head.
        test_ways: N of meta-test (and val) episodes, at most `ways`; 0 means `ways`. Fewer ways
            at meta-test than in meta-training adapt and score the first test_ways rows of the
            head, the others masked (`losses.mask_classes`), as an export answers a request with
            fewer classes.
        shots: K support examples per class (sine: K support points).
        queries: Q query examples per class (sine: Q query points).
        <name>: each dataset's options (`Dataset.options`), data.<name>.
    """
    dataset: str = "sine"
    ways: int = 5
    test_ways: int = 0
    shots: int = 10
    queries: int = 10

    def check(self, key: str = "data") -> None:
        record = find(self.dataset)
        expect(record is not None, f"{key}.dataset", f"one of {dataset_names()}", self.dataset)
        for field in ("ways", "shots", "queries"):
            value = getattr(self, field)
            expect(value >= 1, f"{key}.{field}", "a positive integer", value)
        if not record.classes:
            expect(self.test_ways == 0, f"{key}.test_ways",
                   f"0 for {self.dataset}, whose tasks have no classes", self.test_ways)
        expect(self.test_ways == 0 or 2 <= self.test_ways <= self.ways, f"{key}.test_ways",
               f"0 (as data.ways) or between 2 and data.ways ({self.ways})", self.test_ways)
        section = section_of(self.dataset)
        if hasattr(record.options, "check"):
            getattr(self, section).check(f"{key}.{section}")

    def split_ways(self, split: str) -> int:
        """N of the split's episodes: `ways` in meta-training, `test_ways` (when set) elsewhere."""
        return self.test_ways if split != "train" and self.test_ways else self.ways


# The episode fields, then a section per dataset with options, in registry order.
DataConfig = dataclasses.make_dataclass(
    "DataConfig", [(name, d.options, dataclasses.field(default_factory=d.options))
                   for name, d in DATASETS.items() if d.options],
    bases=(_Episodes,), namespace={"__doc__": _Episodes.__doc__, "__module__": __name__})


def is_tfds(dataset: str) -> bool:
    """Whether `dataset` names a TensorFlow Datasets dataset, "tfds:NAME"."""
    return dataset.startswith("tfds:") and len(dataset) > len("tfds:")


def data_dir_key(dataset: str) -> str:
    """The config key of `dataset`'s data folder (what `--data-dir` sets)."""
    record = find(dataset)
    if record is None or not record.paths:
        readers = ", ".join(f"{n}:NAME" if d.named else n for n, d in DATASETS.items() if d.paths)
        raise ConfigError(f"--data-dir: the {dataset} dataset reads no files; it is for "
                          f"{readers}")
    return f"data.{section_of(dataset)}.{record.paths[0]}"


def data_dir_help() -> str:
    """What --data-dir names, dataset by dataset."""
    return ", ".join(f"{d.help} (--dataset {f'{n}:NAME' if d.named else n})"
                     for n, d in DATASETS.items() if d.paths)


def absolute_paths(data) -> None:
    """Makes every dataset's path fields (`Dataset.paths`) in `data` absolute, in place."""
    for name, record in DATASETS.items():
        section = getattr(data, name, None)
        for field in record.paths:
            if getattr(section, field):
                setattr(section, field, os.path.abspath(getattr(section, field)))
