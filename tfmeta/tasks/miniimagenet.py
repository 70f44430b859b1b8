"""MiniImagenet from the copies users have: 100 ImageNet classes of 84x84 images, split 64/16/20
into train/val/test (Ravi & Larochelle, 2017).

Layouts read, detected from the files present:
- csv: DIR/images/ (JPEG or PNG) and DIR/{train,val,test}.csv with the columns filename,label;
- pickle: DIR/mini-imagenet-cache-{train,val,test}.pkl, each a dict with image_data
  (uint8 [N, 84, 84, 3]) and class_dict (label -> list of row indices);
- prepared: the cache `prepare` writes (manifest.json and one {split}.npy per split).

`prepare` converts a csv or pickle copy once into the prepared cache: per split one uint8 array
[total, 84, 84, 3], classes sorted by label and each class's images in the layout's own order
(CSV rows; class_dict indices), so both layouts give the same arrays and the same episodes. Training
memory-maps the arrays, so an episode reads only its own 80-odd images. The cache is written into a
hidden folder and renamed into place, manifest last: a killed prepare leaves no cache that looks
complete.
"""

import csv
import hashlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tfmeta.config.data import DataConfig, MiniImagenetConfig
from tfmeta.errors import DataError
from tfmeta.tasks import augment, classification
from tfmeta.tasks.classification import Pool
from tfmeta.tasks.image_files import decode_into, listing
from tfmeta.tasks.image_format import miniimagenet_format
from tfmeta.tasks.source import TaskSource

SPLITS = ("train", "val", "test")
STANDARD_CLASSES = {"train": 64, "val": 16, "test": 20}
STANDARD_IMAGES = 600
MANIFEST = "manifest.json"
FORMAT = "tfmeta-miniimagenet/1"
SUBFOLDERS = ("", "miniimagenet", "mini-imagenet", "mini_imagenet", "MiniImagenet")
HOW_TO_GET = (
    "MiniImagenet has no official download. Use the copy your group already has: the csv layout "
    "(images/ with train.csv, val.csv and test.csv from Ravi & Larochelle's split, "
    "github.com/twitter/meta-learning-lstm) or the pickle caches "
    "mini-imagenet-cache-{train,val,test}.pkl that learn2learn and torchmeta users download; "
    "then `tfmeta data prepare miniimagenet --source DIR --out CACHE`.")


def detect_layout(folder: Path) -> Optional[str]:
    """"prepared", "csv", "pickle" or None for the files in `folder`."""
    if (folder / MANIFEST).is_file():
        return "prepared"
    if (folder / "images").is_dir() and all((folder / f"{s}.csv").is_file() for s in SPLITS):
        return "csv"
    if all((folder / f"mini-imagenet-cache-{s}.pkl").is_file() for s in SPLITS):
        return "pickle"
    return None


def search_paths(data_dir: str) -> list:
    """Folders that may hold MiniImagenet: `data_dir` (default: $TFMETA_DATA_DIR, ./data and
    ~/data), each itself and its usual subfolders."""
    roots = [data_dir] if data_dir else [os.environ.get("TFMETA_DATA_DIR", ""), "data", "~/data"]
    return [Path(root).expanduser() / sub if sub else Path(root).expanduser()
            for root in roots if root for sub in SUBFOLDERS]


def locate(data_dir: str) -> tuple:
    """(folder, layout) of the first folder under `data_dir` holding a known layout; DataError
    naming every place searched when there is none."""
    searched = search_paths(data_dir)
    for folder in searched:
        layout = detect_layout(folder) if folder.is_dir() else None
        if layout:
            return folder, layout
    raise DataError(
        "no MiniImagenet found. Searched: " + ", ".join(str(p) for p in searched) + ". Accepted "
        "layouts: a folder with images/ and train.csv, val.csv, test.csv (columns "
        "filename,label); a folder with mini-imagenet-cache-train.pkl, -val.pkl and -test.pkl; "
        "or a cache written by `tfmeta data prepare miniimagenet`. Point --data-dir at one. "
        + HOW_TO_GET)


def _csv_split(folder: Path, split: str) -> Dict[str, list]:
    """{label: [filename, ...]} of one split's CSV, in row order."""
    path = folder / f"{split}.csv"
    classes: Dict[str, list] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise DataError(f"{path}: the first line must be the header filename,label; got "
                            f"{header}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path}, line {line}: expected filename,label; got {row}")
            classes.setdefault(row[1].strip(), []).append(row[0].strip())
    return classes


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as image:
        return miniimagenet_format(size).from_pil(image)


def _csv_files(folder: Path) -> dict:
    """{split: (names, counts, files)} of the csv layout, after checking that every file exists."""
    splits, missing = {}, []
    for split in SPLITS:
        classes = _csv_split(folder, split)
        names = sorted(classes)
        files = [folder / "images" / f for name in names for f in classes[name]]
        missing += [str(f) for f in files if not f.is_file()]
        splits[split] = (names, [len(classes[n]) for n in names], files)
    if missing:
        raise DataError(listing(f"{len(missing)} image files named in the CSVs are missing",
                                 missing))
    return splits


def _read_pickle_layout(folder: Path, size: int) -> dict:
    out = {}
    for split in SPLITS:
        path = folder / f"mini-imagenet-cache-{split}.pkl"
        try:
            with open(path, "rb") as f:
                data = pickle.load(f)
            images, class_dict = np.asarray(data["image_data"]), data["class_dict"]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as error:
            raise DataError(f"{path}: not a MiniImagenet pickle cache (a dict with image_data "
                            f"and class_dict): {type(error).__name__}: {error}") from None
        if images.dtype != np.uint8 or images.shape[1:] != (size, size, 3):
            raise DataError(f"{path}: image_data is {images.dtype} {list(images.shape)}; "
                            f"expected uint8 [N, {size}, {size}, 3]")
        names = sorted(class_dict)
        order = [int(i) for n in names for i in class_dict[n]]
        if order and (min(order) < 0 or max(order) >= len(images)):
            raise DataError(f"{path}: class_dict indexes rows outside image_data's "
                            f"{len(images)} rows")
        out[split] = (names, [len(class_dict[n]) for n in names], images[order])
    return out


def prepare(source: Path, out: Path, progress: bool = True, size: int = 84,
            log: Callable[[str], None] = print) -> dict:
    """Converts a csv or pickle copy at `source` into the prepared cache `out`.

    Returns:
        The manifest: layout, source, and per split its classes, counts and warnings about counts
        that differ from the standard 64/16/20 classes of 600 images; plus "cache", the folder to
        train from (`source` itself when it is already a prepared cache).
    """
    folder, layout = locate(str(source))
    if layout == "prepared":
        log(f"{folder} is already a prepared cache; nothing to do")
        return {**read_manifest(folder), "cache": str(folder)}
    log(f"preparing MiniImagenet ({layout} layout) from {folder} into {out}")
    if layout == "csv":
        splits = _csv_files(folder)
    else:
        splits = _read_pickle_layout(folder, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    manifest = {"format": FORMAT, "layout": layout, "source": str(folder.resolve()),
                "image_size": size, "splits": {}, "warnings": []}
    try:
        unreadable = []
        for split, (names, counts, images) in splits.items():
            array = np.lib.format.open_memmap(staging / f"{split}.npy", "w+", np.uint8,
                                              (sum(counts), size, size, 3))
            if layout == "csv":
                unreadable += decode_into(array, images, lambda f: _decode(f, size), progress,
                                          split)
            else:
                array[:] = images
            array.flush()
            del array
            manifest["splits"][split] = {"file": f"{split}.npy", "classes": names,
                                         "counts": [int(c) for c in counts]}
            manifest["warnings"] += _count_warnings(split, counts)
        if unreadable:
            raise DataError(listing(f"{len(unreadable)} image files could not be read",
                                     sorted(unreadable)))
        for split in SPLITS:
            os.replace(staging / f"{split}.npy", out / f"{split}.npy")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        os.replace(staging / MANIFEST, out / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for warning in manifest["warnings"]:
        log(f"warning: {warning}")
    return {**manifest, "cache": str(out)}


def _count_warnings(split: str, counts: list) -> list:
    warnings = []
    if len(counts) != STANDARD_CLASSES[split]:
        warnings.append(f"{split}: {len(counts)} classes; the standard split has "
                        f"{STANDARD_CLASSES[split]}")
    odd = sum(1 for c in counts if c != STANDARD_IMAGES)
    if odd:
        warnings.append(f"{split}: {odd} classes do not have {STANDARD_IMAGES} images "
                        f"(smallest {min(counts)}, largest {max(counts)})")
    return warnings


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable manifest ({error}); prepare the cache again") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}; "
                        "prepare the cache again")
    return manifest


def default_cache(folder: Path) -> Path:
    """DIR/.tfmeta-cache/miniimagenet when DIR is writable, else a folder in ~/.cache/tfmeta."""
    if os.access(folder, os.W_OK):
        return folder / ".tfmeta-cache" / "miniimagenet"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tfmeta"
    digest = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return base / f"miniimagenet-{digest}"


def pools(config: MiniImagenetConfig, progress: bool = True,
          log: Callable[[str], None] = print) -> Dict[str, Pool]:
    """{"train", "val", "test": Pool} memory-mapped from the prepared cache, preparing a csv or
    pickle copy on first use."""
    folder, layout = locate(config.data_dir)
    if layout != "prepared":
        cache = Path(config.cache_dir) if config.cache_dir else default_cache(folder)
        if detect_layout(cache) != "prepared":
            prepare(folder, cache, progress, log=log)
        folder = cache
    manifest = read_manifest(folder)
    out = {}
    for split in SPLITS:
        entry = manifest["splits"][split]
        path = folder / entry["file"]
        try:
            images = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: unreadable ({error}); prepare the cache again") from None
        counts = np.asarray(entry["counts"], np.int64)
        if len(images) != counts.sum():
            raise DataError(f"{path}: {len(images)} images, but {MANIFEST} counts "
                            f"{counts.sum()}; prepare the cache again")
        out[split] = Pool(images, counts, tuple(entry["classes"]))
    return out


def source(config: DataConfig, dtype=tf.float32) -> TaskSource:
    """MiniImagenet's TaskSource: N-way episodes of each split (train, val, test); training
    evaluates on val."""
    split_pools = pools(config.miniimagenet)
    shape = split_pools["train"].images.shape[1:]
    flip = augment.flip_and_shift if config.miniimagenet.augment else None
    return classification.source(config, split_pools, dtype, "miniimagenet", shape,
                                 image_format=miniimagenet_format(shape[0]), eval_split="val",
                                 augment=flip)
