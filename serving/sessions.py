"""A loaded version's TensorFlow sessions: warm, one per prediction slot and a spare, and each
closable by the one request that holds it."""

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model.loader_impl import SavedModelLoader


class SessionPool:
    """Warm sessions on one loaded graph, so that a cancelled request can stop its work.

    TensorFlow stops a running step of a session-based graph only at its timeout or when its
    session closes. So each request leases a session of its own (`lease`), and a cancelled
    request closes it (`run`); the pool prepares a replacement in the background. A session's
    first run of a signature builds its executors, which takes seconds for an adapting graph
    (about 3 s per signature for an Omniglot export on 2 cores) and which a cancellation does not
    interrupt; so every session is warmed up on every signature before it serves: each is run
    once on empty inputs, which builds the executors before the graph's own checks refuse the
    inputs (TF Serving's warm-up requests do the same at load). The pool keeps `size` sessions,
    one per prediction slot and a spare, so that a request after a cancellation finds a warm
    session at once. The first is prepared before the version serves; the others one at a time in
    a background thread at the lowest CPU priority, so that they slow no request.

    Args:
        path: the version directory.
        graph: a fresh graph to load it into.
        size: sessions kept (>= 1).
        on_full: called once, when the pool first holds `size` sessions.
    """

    def __init__(self, path: Path, graph: tf.Graph, size: int = 1,
                 on_full: Callable[[], None] = lambda: None):
        self._loader = SavedModelLoader(str(path))
        self._graph = graph
        self._size, self._on_full = size, on_full
        self._lock = threading.Lock()
        self._idle, self._leased, self._preparing, self._closed = [], 0, 0, False
        with graph.as_default():
            self._saver, _ = self._loader.load_graph(graph, [tf.saved_model.SERVING])
        self.meta_graph = self._loader.get_meta_graph_def_from_tags([tf.saved_model.SERVING])
        self._idle.append(self._prepare())
        with self._lock:
            self._replenish()
        if size == 1:
            on_full()

    def _prepare(self) -> tf.compat.v1.Session:
        """A session restored from the variables and warmed up on every signature."""
        session = tf.compat.v1.Session(graph=self._graph)
        try:
            self._loader.restore_variables(session, self._saver)
            self._loader.run_init_ops(session, [tf.saved_model.SERVING])
            built = set()
            for name, signature in sorted(self.meta_graph.signature_def.items()):
                fetches = sorted(v.name for v in signature.outputs.values())
                feeds = {v.name: _empty(v) for v in signature.inputs.values()}
                if name.startswith("__") or (tuple(fetches), tuple(sorted(feeds))) in built:
                    continue
                built.add((tuple(fetches), tuple(sorted(feeds))))
                try:
                    session.run(fetches, feeds)
                except (tf.errors.OpError, TypeError, ValueError):
                    pass   # the executors are built before the graph's own checks refuse it
        except Exception:
            session.close()
            raise
        return session

    def _keeps(self, session) -> bool:
        """Whether an unleased `session` goes back to the idle ones: open, and the pool short of
        `size` (a lease that prepared its own may leave one too many); call holding `_lock`."""
        return (session is not None and not session._closed and not self._closed
                and len(self._idle) + self._leased < self._size)

    def _replenish(self) -> None:
        """Starts preparing the sessions the pool lacks, in one background thread; call holding
        `_lock`."""
        missing = self._size - len(self._idle) - self._leased - self._preparing
        if self._closed or missing <= 0:
            return
        self._preparing += missing

        def prepare():
            try:   # the lowest priority for this thread only (Linux gives each thread its own)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except (AttributeError, OSError):
                pass
            for _ in range(missing):
                try:
                    session = self._prepare()
                except Exception:   # a lease then prepares one itself, and reports the error
                    session = None
                with self._lock:
                    self._preparing -= 1
                    if self._keeps(session):
                        self._idle.append(session)
                    elif session is not None:
                        session.close()
                    full = self._on_full and len(self._idle) + self._leased >= self._size
                    if full:
                        on_full, self._on_full = self._on_full, None
                if full:
                    on_full()

        threading.Thread(target=prepare, name="session-prepare", daemon=True).start()

    @contextmanager
    def lease(self) -> Iterator[tf.compat.v1.Session]:
        """An idle session, else a new one prepared at the request's own priority (never one that
        the background thread prepares: at the lowest priority on a busy machine, it may not run
        for a long time); returned to the pool after the block unless it was closed (then
        replaced in the background) or the pool is full."""
        with self._lock:
            session = self._idle.pop() if self._idle else None
            self._leased += 1
        try:
            session = session or self._prepare()
            yield session
        finally:
            with self._lock:
                self._leased -= 1
                if self._keeps(session):
                    self._idle.append(session)
                elif session is not None:
                    session.close()
                self._replenish()

    def close(self) -> None:
        """Closes the idle sessions; leased ones close when their requests end."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for session in idle:
            session.close()


def _empty(info) -> np.ndarray:
    """A zero-size input for a signature's TensorInfo: its unknown dimensions as 0."""
    shape = [max(d.size, 0) for d in info.tensor_shape.dim]
    dtype = tf.as_dtype(info.dtype)
    return (np.full(shape, b"", object) if dtype == tf.string
            else np.zeros(shape, dtype.as_numpy_dtype))
