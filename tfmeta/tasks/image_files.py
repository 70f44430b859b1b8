"""Decoding many image files into one uint8 array, in parallel, collecting the unreadable ones."""

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np


def decode_into(array: np.ndarray, files: Sequence, decode: Callable[[object], np.ndarray],
                progress: bool, what: str) -> list:
    """Writes decode(files[i]) into array[i] for every i, on a thread per core; returns the
    unreadable files, each as "PATH (ErrorType: message)"."""
    from tqdm import tqdm

    unreadable = []

    def load(i):
        try:
            array[i] = decode(files[i])
        except Exception as error:  # PIL raises several types for broken files
            unreadable.append(f"{files[i]} ({type(error).__name__}: {error})")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(tqdm(pool.map(load, range(len(files))), total=len(files), disable=not progress,
                  desc=f"decoding {what}", unit="img"))
    return unreadable


def listing(what: str, items: Sequence[str], limit: int = 20) -> str:
    """`what`, then up to `limit` items one per line, then how many more."""
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{what}:\n  " + "\n  ".join(items[:limit]) + more
