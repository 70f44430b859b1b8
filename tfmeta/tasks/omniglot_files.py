"""Omniglot tasks as the original PNG files: what a serving client holds.

Training reads Omniglot through a decoded cache; a client of an exported model sends files. This
module draws N-way K-shot tasks from the characters of one split (by default the held-out
meta-test alphabets or characters of `data.omniglot`), unrotated, as the zips' PNG bytes, so that an
export can be checked the way it is used: files in, against tfmeta's own preprocessing of the same
files.
"""

import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tfmeta.config.data import OmniglotConfig
from tfmeta.errors import ConfigError
from tfmeta.tasks import omniglot
from tfmeta.tasks.omniglot_split import split_classes


class FileTask(NamedTuple):
    """One N-way task as files: support_png [N*K] and query_png [N*Q] bytes, labels int32 [N*K]
    and [N*Q] (class c's examples together, classes in order)."""
    support_png: list
    support_y: np.ndarray
    query_png: list
    query_y: np.ndarray


def character_files(config: OmniglotConfig) -> dict:
    """{(alphabet, character): (zip path, [20 member names])}, every character once, from the
    zips in `config.data_dir` in the order the decoded cache uses."""
    characters = {}
    for path in omniglot.find_zips(Path(config.data_dir)):
        with zipfile.ZipFile(path) as archive:
            for key, names in omniglot.group_members(archive.namelist()).items():
                characters.setdefault(key, (path, names))
    return dict(sorted(characters.items()))


def file_tasks(config: OmniglotConfig, ways: int, shots: int, queries: int, count: int,
               seed: int = 0, split: str = "test") -> list:
    """`count` FileTasks drawn from the `split` characters ("train" or "test") of `config`'s split;
    when `config.episodes` is "within_alphabet", each task's characters come from one alphabet,
    drawn uniformly among the split's alphabets with at least `ways` characters.

    Raises:
        ConfigError: the split (or, within alphabets, every alphabet of it) has fewer than `ways`
            characters, or a character fewer than shots + queries drawings.
    """
    if config.source != "zips":
        raise ConfigError("Omniglot tasks as files need data.omniglot.source: zips")
    files = character_files(config)
    keys = list(files)
    train, test = split_classes([alphabet for alphabet, _ in keys], config)
    pool = [keys[i] for i in (test if split == "test" else train)]
    groups = [pool]
    if config.episodes == "within_alphabet":
        alphabets = sorted({alphabet for alphabet, _ in pool})
        groups = [[key for key in pool if key[0] == name] for name in alphabets]
    groups = [group for group in groups if len(group) >= ways]
    if not groups or shots + queries > omniglot.IMAGES_PER_CHARACTER:
        where = "one alphabet of the" if config.episodes == "within_alphabet" else "the"
        raise ConfigError(f"a {ways}-way {shots}-shot task with {queries} queries needs {ways} "
                          f"characters of {shots + queries} drawings from {where} {split} "
                          f"split, which has {len(pool)} characters of "
                          f"{omniglot.IMAGES_PER_CHARACTER}")
    rng = np.random.default_rng(seed)
    archives = {}
    tasks = []
    try:
        for _ in range(count):
            support, query = [], []
            group = groups[rng.integers(len(groups))] if len(groups) > 1 else groups[0]
            for key in rng.choice(len(group), ways, replace=False):
                path, names = files[group[key]]
                archive = archives.setdefault(path, zipfile.ZipFile(path))
                drawn = rng.choice(len(names), shots + queries, replace=False)
                data = [archive.read(names[i]) for i in drawn]
                support += data[:shots]
                query += data[shots:]
            tasks.append(FileTask(support, np.repeat(np.arange(ways, dtype=np.int32), shots),
                                  query, np.repeat(np.arange(ways, dtype=np.int32), queries)))
    finally:
        for archive in archives.values():
            archive.close()
    return tasks
