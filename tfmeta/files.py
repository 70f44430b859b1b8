"""Crash-safe file writes."""

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w"):
    """Yields a temp file beside `path`, renamed over `path` when the block succeeds.

    A process killed mid-write leaves `path` as it was (at most a stray temp file); an exception
    removes the temp file. The result gets the usual permissions (0666 less the umask), not
    mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode) as file:
            yield file
        os.chmod(temp_name, 0o666 & ~_umask())
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
