"""Omniglot reader: the dataset's own zips, or TensorFlow Datasets, into one uint8 array.

`load_omniglot` decodes whichever of the four Omniglot zips a directory holds and caches the
result as an uncompressed `.npz` beside them, so later calls only read that file. `load_omniglot_tfds` reads the TFDS `omniglot` builder instead: the
first call downloads (about 19 MB) and prepares it, and every call decodes all 38,300 of its images,
uncached.
"""

import dataclasses
import hashlib
import io
import os
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from tfmeta.config.data import DRAWINGS_PER_CHARACTER as IMAGES_PER_CHARACTER
from tfmeta.errors import DataError
from tfmeta.files import atomic_open
from tfmeta.tasks.image_format import omniglot_format
from tfmeta.tasks.tfds_images import quiet_builder

ZIP_NAMES = (
    "images_background.zip",
    "images_evaluation.zip",
    "images_background_small1.zip",
    "images_background_small2.zip",
)
TFDS_SPLITS = ("train", "test", "small1", "small2")
# Bump when decoding changes, so that caches written by older code are not reused.
_CACHE_VERSION = 1
_SOURCE_HINT = (
    "Get them from the python/ folder of the Omniglot repository "
    "(https://github.com/brendenlake/omniglot/tree/master/python), "
    "or use `source: tfds` to download Omniglot through TensorFlow Datasets."
)

CharacterKey = tuple[str, str]  # (alphabet, character)
# (alphabet id, alphabet_char_id, uint8 [S, S] drawings) of one TFDS label.
_TfdsCharacter = tuple[int, int, list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class OmniglotData:
    """Omniglot characters, sorted by (alphabet, character).

    images: uint8 [C, 20, S, S], C characters drawn by 20 people each, strokes 255, background 0.
    alphabets: [C] alphabet name of each character, e.g. "Greek".
    characters: [C] character name within its alphabet, e.g. "character01".
    """

    images: np.ndarray
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]


def load_omniglot(data_dir: str | os.PathLike[str], image_size: int = 28) -> OmniglotData:
    """Reads and merges the Omniglot zips in `data_dir`; images are [C, 20, S, S], S = image_size.

    A character in two zips (Greek and Latin are in both small sets) is kept once. Raises DataError
    when the directory, a zip or a character is missing or malformed.
    """
    zips = find_zips(Path(data_dir))
    cache_name = _cache_name(zips, image_size)
    cache_dirs = _cache_dirs(Path(data_dir))
    for cache_dir in cache_dirs:
        cached = _read_cache(cache_dir / cache_name)
        if cached is not None:
            return cached
    data = _decode_zips(zips, image_size)
    for cache_dir in cache_dirs:
        if _write_cache(cache_dir / cache_name, data):
            break
    return data


def load_omniglot_tfds(
    data_dir: str | None, image_size: int = 28, download: bool = True
) -> OmniglotData:
    """Reads all splits of the TFDS `omniglot` builder; images are [C, 20, S, S], S = image_size.

    Characters are deduplicated by their global id (the `label` feature: small1 and small2 reuse
    train's ids) and only those with exactly 20 drawings are kept. `data_dir` None is TFDS's default.
    Raises DataError when TFDS cannot provide the data.
    """
    # Imported here: it takes seconds to import and only this source needs it.
    import tensorflow_datasets as tfds

    where = data_dir or "TFDS's default data dir"
    try:
        builder, prepared = quiet_builder("omniglot", data_dir)
        if download and not prepared:
            # Zips already in the data dir are TFDS's manual downloads (it checks their
            # checksums); only missing ones are fetched, and only if their host answers.
            _check_downloadable(builder.url_infos or {}, data_dir, where)
            config = tfds.download.DownloadConfig(manual_dir=data_dir) if data_dir else None
            builder.download_and_prepare(download_config=config)
        datasets = [builder.as_dataset(split=split) for split in TFDS_SPLITS]
    except DataError:
        raise
    # Download and prepare fail in many ways (network, disk, checksums, a missing dependency).
    except Exception as error:
        raise DataError(
            f"TensorFlow Datasets could not prepare omniglot in {where}: "
            f"{type(error).__name__}: {str(error).rstrip('.')}. Download the Omniglot zips "
            f"({', '.join(ZIP_NAMES)}) and pass their directory with --data-dir instead."
        ) from error
    grouped = _group_tfds_examples((tfds.as_numpy(dataset) for dataset in datasets), image_size)
    complete = [
        character for character in grouped.values() if len(character[2]) == IMAGES_PER_CHARACTER
    ]
    if not complete:
        raise DataError(
            f"TensorFlow Datasets' omniglot in {where} has no character with "
            f"{IMAGES_PER_CHARACTER} drawings; delete its omniglot folder and prepare it again."
        )
    return _tfds_characters_to_data(complete, builder.info.features["alphabet"].int2str)


def url_reachable(url: str, timeout: float = 5.0) -> str:
    """"" if a HEAD request to `url` succeeds within `timeout` seconds (through any proxy the
    environment sets, as TFDS's downloads would), else why not."""
    import urllib.request

    try:
        # A fresh opener reads the proxy settings of now; urlopen's global one would keep this
        # call's for the rest of the process.
        urllib.request.build_opener().open(urllib.request.Request(url, method="HEAD"),
                                           timeout=timeout)
        return ""
    except Exception as error:  # DNS, refused, timeout, proxy, HTTP: all mean "cannot download"
        return f"{type(error).__name__}: {error}"


def _check_downloadable(url_infos: Mapping, data_dir: str | None, where: str) -> None:
    """Raises DataError at once when files TFDS would download are missing from `data_dir` and
    their host cannot be reached: TFDS itself retries for minutes."""
    missing = {url: info.filename for url, info in url_infos.items()
               if not (data_dir and (Path(data_dir) / info.filename).is_file())}
    if not missing:
        return
    reason = url_reachable(next(iter(missing)))
    if reason:
        raise DataError(
            f"TensorFlow Datasets' omniglot needs {', '.join(sorted(missing.values()))}, which "
            f"are not in {where} and cannot be downloaded ({reason}). Put them there (TFDS reuses "
            f"zips whose checksums match), or set data.omniglot.source=zips to train on the zips "
            f"you have.")


def _group_tfds_examples(
    splits: Iterable[Iterable[Mapping[str, np.ndarray]]], image_size: int
) -> dict[int, _TfdsCharacter]:
    """Maps each TFDS label to its character, with the drawings of the first split that has it.

    Taking a character's drawings from one split only is what dedupes it: within a split each
    drawing appears once; a later split repeats the same drawings under the same label. Drawings
    are preprocessed as they stream in: the full set raw would take 1 GB, resized it takes 25 MB.
    """
    grouped: dict[int, _TfdsCharacter] = {}
    for examples in splits:
        in_split: dict[int, _TfdsCharacter] = {}
        for example in examples:
            label = int(example["label"])
            if label in grouped:
                continue
            alphabet, char_id = int(example["alphabet"]), int(example["alphabet_char_id"])
            drawing = _preprocess(Image.fromarray(example["image"]), image_size)
            in_split.setdefault(label, (alphabet, char_id, []))[2].append(drawing)
        grouped.update(in_split)
    return grouped


def _tfds_characters_to_data(
    characters: Iterable[_TfdsCharacter], alphabet_name: Callable[[int], str]
) -> OmniglotData:
    """Names TFDS characters and sorts them by (alphabet, character) into OmniglotData."""
    named = sorted(
        (
            ((alphabet_name(alphabet), _character_name(char_id)), drawings)
            for alphabet, char_id, drawings in characters
        ),
        key=lambda item: item[0],
    )
    return OmniglotData(
        images=np.stack([np.stack(drawings) for _, drawings in named]),
        alphabets=tuple(alphabet for (alphabet, _), _ in named),
        characters=tuple(character for (_, character), _ in named),
    )


def _character_name(alphabet_char_id: int) -> str:
    """A character's name as the zips spell it: TFDS's 0-based id 0 is "character01"."""
    return f"character{alphabet_char_id + 1:02d}"


def find_zips(data_dir: Path) -> list[Path]:
    """The Omniglot zips present in `data_dir`, in ZIP_NAMES order."""
    expected = ", ".join(ZIP_NAMES)
    if not data_dir.is_dir():
        raise DataError(
            f"Omniglot data directory {data_dir} does not exist or is not a directory. "
            f"It should hold one or more of {expected}. {_SOURCE_HINT}"
        )
    zips = [data_dir / name for name in ZIP_NAMES if (data_dir / name).is_file()]
    if not zips:
        entries = sorted(entry.name for entry in data_dir.iterdir())
        shown = ", ".join(entries[:8])
        if len(entries) > 8:
            shown += f", ... ({len(entries)} entries)"
        raise DataError(
            f"Omniglot data directory {data_dir} holds none of {expected}; it contains: "
            f"{shown or 'nothing'}. {_SOURCE_HINT}"
        )
    return zips


def _decode_zips(zips: list[Path], image_size: int) -> OmniglotData:
    """Decodes and merges `zips`; a character already read from an earlier zip is kept from it."""
    characters: dict[CharacterKey, np.ndarray] = {}
    for path in zips:
        characters.update(_read_zip(path, image_size, skip=characters.keys()))
    keys = sorted(characters)
    return OmniglotData(
        images=np.stack([characters[key] for key in keys]),
        alphabets=tuple(alphabet for alphabet, _ in keys),
        characters=tuple(character for _, character in keys),
    )


def _read_zip(
    path: Path, image_size: int, skip: Collection[CharacterKey]
) -> dict[CharacterKey, np.ndarray]:
    """Maps each (alphabet, character) of one zip, except those in `skip`, to uint8 [20, S, S].

    Characters in `skip` are still counted but not decoded: that halves the work for the small zips.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = group_members(archive.namelist())
            if not members:
                raise DataError(
                    f"{path} holds no images laid out as "
                    f"<set>/<Alphabet>/<characterNN>/<drawer>.png; is it an Omniglot zip? "
                    f"{_SOURCE_HINT}"
                )
            for (alphabet, character), names in members.items():
                if len(names) != IMAGES_PER_CHARACTER:
                    raise DataError(
                        f"{path}: character {alphabet}/{character} has {len(names)} images, "
                        f"expected {IMAGES_PER_CHARACTER}; the zip is incomplete, download it again."
                    )
            return {
                key: np.stack([_decode_member(archive, path, name, image_size) for name in names])
                for key, names in members.items()
                if key not in skip
            }
    # A damaged archive surfaces as BadZipFile (bad directory or CRC) or a zlib/EOF error on read.
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DataError(f"{path} is not a readable zip file ({error}); download it again.") from error


def group_members(names: Iterable[str]) -> dict[CharacterKey, list[str]]:
    """Groups `<set>/<Alphabet>/<characterNN>/<drawer>.png` member names by (alphabet, character)."""
    grouped: dict[CharacterKey, list[str]] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) == 4 and parts[3].lower().endswith(".png"):
            grouped.setdefault((parts[1], parts[2]), []).append(name)
    # Sorted drawers give the same image order whatever order the zip stores its members in.
    return {key: sorted(members) for key, members in grouped.items()}


def _decode_member(
    archive: zipfile.ZipFile, path: Path, name: str, image_size: int
) -> np.ndarray:
    """Decodes one PNG member to uint8 [S, S], strokes high."""
    data = archive.read(name)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _preprocess(image, image_size)
    # PIL reports an undecodable or truncated PNG as OSError, SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"{path}: member {name} is not a readable PNG ({error}); download the zip again."
        ) from error


def _preprocess(image: Image.Image, image_size: int) -> np.ndarray:
    """Grayscale, Lanczos resize and inversion to uint8 [S, S]: the PNGs draw black on white
    (`image_format.omniglot_format`, which exported models reproduce in their graph)."""
    return omniglot_format(image_size).from_pil(image)[..., 0]


def _cache_name(zips: list[Path], image_size: int) -> str:
    """A cache file name that changes with the image size and each zip's name, size and mtime."""
    digest = hashlib.sha256(f"v{_CACHE_VERSION} size={image_size}".encode())
    for path in zips:
        stat = path.stat()
        digest.update(f"|{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"omniglot-{image_size}px-{digest.hexdigest()[:16]}.npz"


def _cache_dirs(data_dir: Path) -> list[Path]:
    """Where a cache may live, in order: beside the data, then the user's cache directory."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [data_dir / ".tfmeta-cache", user_cache / "tfmeta"]


def _read_cache(path: Path) -> OmniglotData | None:
    """The cached data, or None when the file is missing, truncated or otherwise unreadable."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            alphabets = tuple(str(name) for name in archive["alphabets"])
            characters = tuple(str(name) for name in archive["characters"])
    # A damaged npz fails in zipfile, zlib, numpy's header parser or on a missing key: rebuild it.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or not (
        len(images) == len(alphabets) == len(characters)
    ):
        return None
    return OmniglotData(images=images, alphabets=alphabets, characters=characters)


def _write_cache(path: Path, data: OmniglotData) -> bool:
    """Atomically writes `data` to `path`; False when its directory is not writable."""
    if not _is_writable(path.parent):
        return False
    try:
        with atomic_open(path, "wb") as file:
            np.savez(
                file,
                images=data.images,
                alphabets=np.array(data.alphabets, dtype=str),
                characters=np.array(data.characters, dtype=str),
            )
        return True
    except OSError:
        return False


def _is_writable(directory: Path) -> bool:
    """Whether `directory`, or the nearest existing parent it would be created in, is writable.

    Root passes every access check, so a directory whose mode has no write bit counts as read-only:
    that keeps a root process (a CI container) from writing caches into read-only shared data.
    """
    existing = next(path for path in (directory, *directory.parents) if path.exists())
    return os.access(existing, os.W_OK) and existing.stat().st_mode & 0o222 != 0
