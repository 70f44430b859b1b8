"""Crash-safe file writes, and locks that die with their holder."""

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

from tfmeta.errors import ConfigError


def umask() -> int:
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
        os.chmod(temp_name, 0o666 & ~umask())
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


@contextlib.contextmanager
def exclusive(path: Path, wait: bool = False, refuse: Callable[[dict], str] = None,
              about: dict = None):
    """Holds an exclusive lock on `path` (`flock`, created if need be) for the block, writing
    {"pid", "host", "since", **about} into it for whoever is refused. The kernel drops the lock
    when the process dies, however it dies, so a lock never outlives its holder.

    Args:
        wait: block until the lock is free, instead of refusing.
        refuse: the refusal's message from the holder's {"pid", "host", "since", ...} (or {} when
            unreadable); raised as a ConfigError.
        about: what the holder does, for the refusal.
    """
    path = Path(path)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
            except (OSError, ValueError):
                holder = {}
            raise ConfigError(refuse(holder if isinstance(holder, dict) else {})) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), **(about or {})}).encode(), 0)
        yield
    finally:
        os.close(descriptor)
