"""Episodes from any TensorFlow Datasets image classification dataset (`--dataset tfds:NAME`).

The dataset must already be prepared in the TFDS data directory (`data.tfds.data_dir`, else
TFDS's default); one whose builder is not installed here (your own dataset, prepared elsewhere) is
read from its prepared folder DATA_DIR/NAME/VERSION. tfmeta never downloads it, so that a machine without network fails in seconds
with one line instead of TFDS retrying for minutes. Prepare it where there is network (`tfds build
NAME --data_dir DIR`) and copy DIR.

The examples of `data.tfds.splits` (default: every split) are pooled and grouped by their
`label_key` class; the classes are then split into meta-train, meta-validation and meta-test by
`data.tfds.split_seed` and `split`, as a folder's are (`tasks.folder.assign_splits`). Images
(`image_key`) go through the same PIL conversion as a folder's (`ImageFormat.from_pil`), so an
export's image signature answers PNG or JPEG files of the dataset's domain.
"""

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from tfmeta.config.data import DataConfig, TfdsConfig
from tfmeta.errors import DataError
from tfmeta.tasks import classification
from tfmeta.tasks.classification import Pool
from tfmeta.tasks.folder import ClassFolder, split_pools
from tfmeta.tasks.image_format import ImageFormat
from tfmeta.tasks.source import TaskSource


def quiet_builder(name: str, data_dir: str):
    """(tfds.builder(name), whether it is prepared), without TFDS's warning that an unprepared
    folder "has no dataset_info.json" (the normal first state)."""
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        try:
            builder = tfds.builder(name, data_dir=data_dir or None)
        except tfds.core.registered.DatasetNotFoundError:
            # A dataset whose builder is not installed here (your own, prepared elsewhere)
            # still reads from its prepared folder, DATA_DIR/NAME/VERSION.
            prepared = sorted(Path(data_dir or ".").expanduser().glob(
                f"{name}/*/dataset_info.json"), key=lambda p: _version(p.parent.name))
            if not data_dir or not prepared:
                raise
            return tfds.builder_from_directory(str(prepared[-1].parent)), True
        return builder, builder.is_prepared()
    finally:
        absl_logging.set_verbosity(verbosity)


def _version(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else -1 for part in text.split("."))


def pools(name: str, config: TfdsConfig) -> Tuple[Dict[str, Pool], ImageFormat]:
    """({split: Pool}, ImageFormat) of TFDS dataset `name`; DataError naming the dataset, the
    data directory and the field when it cannot be read."""
    import tensorflow_datasets as tfds

    where = config.data_dir or "TFDS's default data dir"
    try:
        builder, prepared = quiet_builder(name, config.data_dir)
    except Exception as error:  # an unknown name, a broken registration
        raise DataError(f"tfds:{name}: {type(error).__name__}: {str(error).splitlines()[0]}"
                        ) from None
    if not prepared:
        raise DataError(f"tfds:{name} is not prepared in {where} ({builder.data_dir}); tfmeta does "
                        f"not download it. Run `tfds build {name} --data_dir DIR` where there is "
                        "network and pass DIR with --data-dir")
    features = builder.info.features
    for field, key, kind in (("image_key", config.image_key, tfds.features.Image),
                             ("label_key", config.label_key, tfds.features.ClassLabel)):
        if key not in features or not isinstance(features[key], kind):
            have = ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())
            raise DataError(f"tfds:{name}: data.tfds.{field} {key!r} is not a {kind.__name__} "
                            f"feature; the features are {have}")
    names = features[config.label_key].names
    splits = config.splits or list(builder.info.splits)
    unknown = [s for s in splits if s not in builder.info.splits]
    if unknown:
        raise DataError(f"tfds:{name}: data.tfds.splits {unknown} are not among its splits "
                        f"{list(builder.info.splits)}")
    images, labels = _read(tfds, builder, splits, config)
    fmt = _format(name, images, config)
    from PIL import Image
    decoded = np.stack([fmt.from_pil(Image.fromarray(_squeeze(x))) for x in images])
    order = np.argsort(labels, kind="stable")
    decoded, labels = decoded[order], labels[order]
    present, counts = np.unique(labels, return_counts=True)
    classes = [ClassFolder("", names[c], (None,) * n) for c, n in zip(present, counts)]
    return split_pools(decoded, classes, config.split, config.split_seed), fmt


def _read(tfds, builder, splits: list, config: TfdsConfig) -> tuple:
    """(images: list of uint8 [H, W, C] arrays, labels [n] int64) of the pooled splits."""
    images, labels = [], []
    for split in splits:
        dataset = builder.as_dataset(split=split).map(
            lambda e: (e[config.image_key], e[config.label_key]))
        for image, label in tfds.as_numpy(dataset):
            images.append(image)
            labels.append(int(label))
    return images, np.asarray(labels, np.int64)


def _squeeze(image: np.ndarray) -> np.ndarray:
    """A [H, W, 1] grayscale array as PIL takes it, [H, W]."""
    return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image


def _format(name: str, images: list, config: TfdsConfig) -> ImageFormat:
    """`image_size`, or the size every image shares (DataError when they differ)."""
    channels = 1 if config.color == "grayscale" else 3
    if config.image_size:
        return ImageFormat(int(config.image_size[0]), int(config.image_size[1]), channels)
    sizes = {image.shape[:2] for image in images}
    if len(sizes) != 1:
        raise DataError(f"tfds:{name}: images of {len(sizes)} different sizes (e.g. "
                        f"{sorted(sizes)[:2]}) and no data.tfds.image_size; set it, e.g. --set "
                        "data.tfds.image_size=[84,84]")
    height, width = sizes.pop()
    return ImageFormat(height, width, channels)


def source(config: DataConfig, dtype=tf.float32) -> TaskSource:
    """The TaskSource of `config.dataset` "tfds:NAME"; training evaluates on val where there is
    one."""
    name = config.dataset.split(":", 1)[1]
    split_pools, fmt = pools(name, config.tfds)
    return classification.source(config, split_pools, dtype, config.dataset, fmt.shape,
                                 image_format=fmt,
                                 eval_split="val" if "val" in split_pools else "test")
