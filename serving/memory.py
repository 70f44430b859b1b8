"""Memory that the embedded server gives back after a burst of large requests.

Measured on an omniglot_20w1s-cpu export (`benchmarks/soak.py`): after a burst of large legal
requests (2,000 queries, or 40 images of 2048 x 2048), the resident set stayed at 1.7x its
warmed-up baseline. Two layers held the memory, and each is fixed where it sits:

- TensorFlow's oneDNN build allocates CPU tensors from its own BFC pool (`MklCPUAllocator`),
  which grows to the largest request and never shrinks: 256 MB of it stayed after one 2,000-query
  request. `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1` hands those tensors to malloc instead.
- glibc's malloc keeps freed pages in its arenas, up to 8 per core, one per thread that
  allocated at once. `Trimmer` calls `malloc_trim(0)`, which returns the free pages of every
  arena, once the server has been idle for a moment after work, so no request pays for it; and
  the arenas are capped at `ARENAS`, which leaves fewer half-used ones behind.

Both settings are read when the allocators start, so `configure_allocators` must run before
TensorFlow starts and before the server's threads allocate; `tfmeta serve` calls it first thing.

Python's own objects (the parsed JSON) go back to Python's allocator and were not found to hold
memory: its block count returns to the baseline after each request.
"""

import ctypes
import ctypes.util
import os
import threading
import time
from typing import Callable, Optional

ALLOCATOR_VARIABLE = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"
ARENAS = 2  # glibc's M_ARENA_MAX; measured: 1.12x the baseline after a burst with 16, 0.99x with 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


def _libc(name: str):
    """A glibc function, or None on a C library without it."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def configure_allocators() -> None:
    """Has TensorFlow allocate CPU tensors with malloc rather than oneDNN's pool, which never
    shrinks (unless TF_ONEDNN_USE_SYSTEM_ALLOCATOR is already set), and caps malloc's arenas.
    Takes effect only before TensorFlow starts."""
    os.environ.setdefault(ALLOCATOR_VARIABLE, "1")
    mallopt = _libc("mallopt")
    if mallopt is not None:
        mallopt(_M_ARENA_MAX, ARENAS)


def _malloc_trim() -> Optional[Callable[[], None]]:
    """glibc's malloc_trim(0), or None on a C library without it."""
    trim = _libc("malloc_trim")
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


class Trimmer:
    """A daemon thread that returns malloc's free pages to the system after work, when idle.

    Args:
        idle: True while no request is in flight.
        finished: a count of finished requests, so that an idle server is trimmed once.
        every: seconds between looks.
    """

    def __init__(self, idle: Callable[[], bool], finished: Callable[[], int], every: float = 0.5):
        self._trim = _malloc_trim()
        self._idle, self._finished, self._every = idle, finished, every
        self.trims = 0

    def start(self) -> bool:
        """Starts the thread; False where the C library cannot trim."""
        if self._trim is None:
            return False
        threading.Thread(target=self._loop, name="malloc-trim", daemon=True).start()
        return True

    def _loop(self) -> None:
        trimmed_at = self._finished()
        while True:
            time.sleep(self._every)
            finished = self._finished()
            if finished != trimmed_at and self._idle():
                self._trim()
                self.trims += 1
                trimmed_at = finished
