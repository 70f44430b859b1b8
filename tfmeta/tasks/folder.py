"""Episodes from your own images: a folder of class folders, the layout that
`keras.utils.image_dataset_from_directory` reads.

    DIR/<class>/**/<image>.png|.jpg|.jpeg        classes split into train/val/test by a seed
    DIR/{train,val,test}/<class>/**/<image>      the splits as given (val is optional)

Each subfolder is a class; hidden files and folders, and files of other types, are ignored.
Without split folders the sorted classes are shuffled with `data.folder.split_seed` and cut by
`data.folder.split` (fractions of train, val and test; a val fraction of 0 leaves no val split,
and training then evaluates on test).

Every image is decoded once with PIL (`ImageFormat.from_pil`: grayscale or RGB as PIL converts,
resized to `image_size` with Lanczos, as an export's image signature does in the graph) into a
cache: one uint8 array of every class, class by class, and a manifest that lists each file with
its size and modification time. The cache is written into a hidden folder and renamed into place,
manifest last, so a killed decode never leaves a cache that looks complete; on every later use the
listing is compared with the folder's, and a file added, removed or changed rebuilds it.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tfmeta.config.data import DataConfig, FolderConfig
from tfmeta.errors import DataError
from tfmeta.tasks import classification
from tfmeta.tasks.classification import Pool
from tfmeta.tasks.image_files import decode_into, listing
from tfmeta.tasks.image_format import ImageFormat
from tfmeta.tasks.source import TaskSource

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
FORMAT = "tfmeta-folder/1"


@dataclasses.dataclass(frozen=True)
class ClassFolder:
    """One class: its split ("" when the seed assigns it), name and image files, sorted."""
    split: str
    name: str
    files: tuple


def scan(root: Path) -> List[ClassFolder]:
    """The classes under `root`, in either layout; DataError naming the folder when it holds
    none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a folder. data.folder.data_dir (--data-dir) must be a "
                        "folder of class folders, DIR/<class>/<image>.png or .jpg, or of "
                        "train/, val/ and test/ folders of class folders")
    given = [s for s in SPLITS if (root / s).is_dir()]
    if "train" in given and "test" in given:
        classes = [c for s in given for c in _classes(root / s, s)]
        for s in given:
            if not any(c.split == s for c in classes):
                raise DataError(f"{root / s}: no class folders with PNG or JPEG images in it")
        return classes
    classes = _classes(root, "")
    if not classes:
        raise DataError(f"{root}: no class folders with PNG or JPEG images in it. Expected "
                        "DIR/<class>/<image>.png (or .jpg, .jpeg), one subfolder per class, "
                        "or train/ and test/ (and optionally val/) folders of class folders")
    return classes


def _classes(folder: Path, split: str) -> List[ClassFolder]:
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = tuple(sorted(
            f for f in sub.rglob("*") if f.suffix.lower() in EXTENSIONS and f.is_file()
            and not any(part.startswith(".") for part in f.relative_to(sub).parts)))
        if files:
            out.append(ClassFolder(split, sub.name, files))
    return out


def assign_splits(classes: Sequence[ClassFolder], fractions: Sequence[float],
                  seed: int) -> Dict[str, List[int]]:
    """{split: [class index, ...]}: the given splits, or the classes shuffled by `seed` and cut
    by `fractions` (train, val, test); a split of no class is left out, bar train and test."""
    if classes and classes[0].split:
        return {s: [i for i, c in enumerate(classes) if c.split == s]
                for s in SPLITS if any(c.split == s for c in classes)}
    order = np.random.default_rng(seed).permutation(len(classes))
    train = int(round(fractions[0] * len(classes)))
    val = int(round(fractions[1] * len(classes)))
    cuts = {"train": order[:train], "val": order[train:train + val], "test": order[train + val:]}
    return {s: sorted(int(i) for i in index) for s, index in cuts.items()
            if len(index) or s != "val"}


def image_format(config: FolderConfig, classes: Sequence[ClassFolder]) -> ImageFormat:
    """The training format: `image_size`, or the size every image shares (DataError naming two
    files of different sizes when they do not)."""
    channels = 1 if config.color == "grayscale" else 3
    if config.image_size:
        return ImageFormat(int(config.image_size[0]), int(config.image_size[1]), channels)
    from PIL import Image
    first, size = None, None
    for c in classes:
        for f in c.files:
            try:
                with Image.open(f) as image:   # reads the header only
                    found = image.size
            except Exception as error:  # PIL raises several types for broken files
                raise DataError(f"{f}: not a readable PNG or JPEG image ({type(error).__name__}:"
                                f" {error})") from None
            if size is None:
                first, size = f, found
            elif found != size:
                raise DataError(
                    f"images of different sizes and no data.folder.image_size: {first} is "
                    f"{size[0]}x{size[1]} (width x height), {f} is {found[0]}x{found[1]}. Set "
                    "data.folder.image_size: [height, width] (e.g. --set "
                    "data.folder.image_size=[84,84]) to resize them all")
    return ImageFormat(size[1], size[0], channels)


def _listing_of(root: Path, classes: Sequence[ClassFolder]) -> list:
    """[[path relative to root, bytes, mtime_ns], ...] in class order: what a cache is valid for."""
    out = []
    for c in classes:
        for f in c.files:
            stat = f.stat()
            out.append([str(f.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return out


def default_cache(root: Path, fmt: ImageFormat) -> Path:
    """DIR/.tfmeta-cache/folder-HxW-color when DIR is writable, else ~/.cache/tfmeta/..."""
    name = f"folder-{fmt.height}x{fmt.width}-{'grayscale' if fmt.channels == 1 else 'rgb'}"
    if os.access(root, os.W_OK):
        return root / ".tfmeta-cache" / name
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tfmeta"
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    return base / f"{name}-{digest}"


def prepare(config: FolderConfig, progress: bool = True,
            log: Callable[[str], None] = print) -> Path:
    """Decodes the folder into its cache unless a cache of the same files and format exists;
    returns the cache folder."""
    if not config.data_dir:
        raise DataError("data.folder.data_dir is not set: pass --data-dir DIR, a folder of class "
                        "folders (DIR/<class>/<image>.png or .jpg)")
    root = Path(config.data_dir).expanduser()
    classes = scan(root)
    fmt = image_format(config, classes)
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache(root, fmt)
    manifest = {"format": FORMAT, "shape": list(fmt.shape),
                "classes": [[c.split, c.name, len(c.files)] for c in classes],
                "files": _listing_of(root, classes)}
    old = _read_manifest(cache)
    if old == manifest:
        return cache
    if old is not None:
        log(f"{cache}: the cache no longer matches {root} ({_difference(old, manifest)}); "
            "decoding it again")
    total = sum(len(c.files) for c in classes)
    log(f"decoding {total} images of {len(classes)} classes from {root} into {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache))
    try:
        array = np.lib.format.open_memmap(staging / "images.npy", "w+", np.uint8,
                                          (total, *fmt.shape))

        def decode(path):
            from PIL import Image
            with Image.open(path) as image:
                return fmt.from_pil(image)

        files = [f for c in classes for f in c.files]
        unreadable = decode_into(array, files, decode, progress, root.name)
        if unreadable:
            raise DataError(listing(f"{len(unreadable)} files of {root} are not readable PNG "
                                    "or JPEG images", sorted(unreadable)))
        array.flush()
        del array
        (cache / MANIFEST).unlink(missing_ok=True)   # the old arrays go: no stale pair is left
        os.replace(staging / "images.npy", cache / "images.npy")
        (staging / MANIFEST).write_text(json.dumps(manifest))
        os.replace(staging / MANIFEST, cache / MANIFEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def summary(cache: Path) -> str:
    """One line on a cache: its classes, images and image shape."""
    manifest = _read_manifest(cache) or {}
    classes = manifest.get("classes", [])
    shape = "x".join(str(v) for v in manifest.get("shape", []))
    return f"{len(classes)} classes, {sum(c[2] for c in classes)} images of {shape}"


def _read_manifest(cache: Path) -> Optional[dict]:
    try:
        manifest = json.loads((cache / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("format") == FORMAT else None


def _difference(old: dict, new: dict) -> str:
    before = {f[0]: f[1:] for f in old.get("files", [])}
    after = {f[0]: f[1:] for f in new["files"]}
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    changed = sum(1 for k in after.keys() & before.keys() if after[k] != before[k])
    if not (added or removed or changed):
        return f"image shape {old.get('shape')} against {new['shape']}"
    return f"{added} files added, {removed} removed, {changed} changed"


def pools(config: FolderConfig, progress: bool = True,
          log: Callable[[str], None] = print) -> tuple:
    """({split: Pool}, ImageFormat) of the folder, decoding it into its cache when needed."""
    cache = prepare(config, progress, log)
    manifest = _read_manifest(cache)
    classes = [ClassFolder(s, n, (None,) * k) for s, n, k in manifest["classes"]]
    images = np.load(cache / "images.npy", mmap_mode="r")
    height, width, channels = manifest["shape"]
    return (split_pools(images, classes, config.split, config.split_seed),
            ImageFormat(height, width, channels))


def split_pools(images: np.ndarray, classes: Sequence[ClassFolder], fractions: Sequence[float],
                seed: int) -> Dict[str, Pool]:
    """{split: Pool} in memory from images [total, H, W, ch] stored class by class (each class's
    count is len(files)), the classes split by `assign_splits`."""
    counts = np.array([len(c.files) for c in classes], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    out = {}
    for split, index in assign_splits(classes, fractions, seed).items():
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in index]) \
            if index else np.zeros([0], np.int64)
        out[split] = Pool(np.ascontiguousarray(images[rows]), counts[index],
                          tuple(classes[i].name for i in index))
    return out


def source(config: DataConfig, dtype=tf.float32) -> TaskSource:
    """The folder's TaskSource: N-way episodes of each split; training evaluates on val where
    there is one."""
    split_pools, fmt = pools(config.folder)
    root = Path(config.folder.data_dir).expanduser()
    return classification.source(config, split_pools, dtype, f"folder {root}", fmt.shape,
                                 image_format=fmt,
                                 eval_split="val" if "val" in split_pools else "test")


def from_directory(path: Union[str, os.PathLike], ways: int = 5, shots: int = 1, queries: int = 15,
                   image_size: Optional[Sequence[int]] = None, color: str = "rgb",
                   split: Sequence[float] = (0.6, 0.2, 0.2), split_seed: int = 0,
                   cache_dir: str = "", dtype: str = "float32") -> TaskSource:
    """N-way K-shot episodes from a folder of class folders (see the module docstring).

    Args:
        path: the folder.
        ways: N, the classes of every episode.
        shots: K, the support examples per class.
        queries: Q, the query examples per class.
        image_size: (height, width) to resize to; None keeps the images' own size, which they
            must share.
        color: "rgb" or "grayscale".
        split: fractions of the classes in train, val and test, when there are no split folders.
        split_seed: the seed of that split.
        cache_dir: where the decoded images go; default DIR/.tfmeta-cache.
        dtype: of the episodes' images.

    Returns:
        A TaskSource, as `tasks.build` gives for the built-in datasets.
    """
    folder = FolderConfig(data_dir=str(path), image_size=list(image_size or []), color=color,
                          split=list(split), split_seed=split_seed, cache_dir=cache_dir)
    config = DataConfig(dataset="folder", ways=ways, shots=shots, queries=queries, folder=folder)
    config.check()
    return source(config, tf.as_dtype(dtype))
