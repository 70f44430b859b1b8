"""A bounded cache of adapted tasks, keyed by the model version and the support set, so that a
repeated `adapt_predict` support set skips adaptation (`tfmeta serve --task-cache-mb`).

Least recently used entries go first. An entry costs its task's bytes, its key's and a fixed
overhead, and the cache never holds more than its budget: a client that sends a new support set
with every request only evicts, and a task larger than the budget is not kept.
"""

import collections
import hashlib
import threading
from typing import Optional

import numpy as np

# Python's own cost of an entry beyond its bytes (the dict slot, the two bytes objects).
OVERHEAD = 200


def key(model: str, version: int, signature: str, support: dict) -> bytes:
    """A digest of what decides a task: the model version, the adapt signature and each support
    input's dtype, shape and bytes (`support`: {name: np.ndarray}; files as object arrays)."""
    digest = hashlib.sha256(f"{model}\0{version}\0{signature}".encode())
    for name in sorted(support):
        value = np.asarray(support[name])
        digest.update(f"\0{name}\0{value.dtype.str}\0{value.shape}".encode())
        if value.dtype == object:
            for item in value.ravel():
                digest.update(len(item).to_bytes(8, "little"))
                digest.update(item)
        else:
            digest.update(np.ascontiguousarray(value).tobytes())
    return digest.digest()


class TaskCache:
    """An LRU map from `key` to task bytes within `max_bytes`; safe across threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, task_key: bytes) -> Optional[bytes]:
        with self._lock:
            task = self._entries.get(task_key)
            if task is None:
                self.misses += 1
                return None
            self._entries.move_to_end(task_key)
            self.hits += 1
            return task

    def put(self, task_key: bytes, task: bytes) -> None:
        cost = _cost(task_key, task)
        if cost > self.max_bytes:
            return
        with self._lock:
            if task_key in self._entries:
                self.bytes -= _cost(task_key, self._entries.pop(task_key))
            while self.bytes + cost > self.max_bytes:
                old_key, old = self._entries.popitem(last=False)
                self.bytes -= _cost(old_key, old)
            self._entries[task_key] = task
            self.bytes += cost

    def __len__(self) -> int:
        return len(self._entries)


def _cost(task_key: bytes, task: bytes) -> int:
    return len(task_key) + len(task) + OVERHEAD
