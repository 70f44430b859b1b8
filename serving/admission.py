"""How much prediction work the embedded server takes on: a cap on running predictions, a
bounded queue of waiting ones, a deadline per request, and cancellation.

A predict request, REST or gRPC, takes a ticket (`Admission.ticket`) once its body has arrived
(REST: `bodies`; gRPC: the message) and its inputs have passed the checks that need no work. At
most `concurrent + queued` requests hold one; the next is refused at once with 503 (gRPC:
UNAVAILABLE). With a ticket it waits for one of the `concurrent` slots (`Admission.slot`) until
its deadline (504, gRPC: DEADLINE_EXCEEDED) or its cancellation, then decodes, runs and answers
inside the slot. Memory in flight is therefore at most `concurrent` requests' decoded inputs and
TensorFlow work, plus the raw bodies of the `concurrent + queued` admitted requests.

A deadline is a `time.monotonic()` instant, or None for none (`repository.deadline_after`). The
model itself runs with the time left as TensorFlow's own `RunOptions.timeout_in_ms`, as TensorFlow
Serving runs it, so an expired request is cancelled inside the graph and frees its slot; a
`Cancellation` (a gRPC client that cancels) stops it the same way (`repository.run`).
"""

import dataclasses
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from tfmeta.errors import ConfigError
from tfmeta_serving.errors import ServingError

# TensorFlow Serving's defaults where it has the flag (--rest_api_timeout_in_ms); the others fit
# a 2-core machine: two predictions keep both cores busy (one request's graph uses them all, and
# the other's parsing fills its gaps), and eight waiting requests of ~40 ms wait well under 1 s.
REST_TIMEOUT_MS = 30000
CONCURRENT = 2
QUEUED = 8
# How often a request waiting for a slot looks whether it was cancelled.
CANCEL_POLL_SECONDS = 0.05


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the embedded server accepts; `tfmeta serve` sets each from its flag.

    Attributes:
        max_body_bytes: the largest REST body or gRPC message.
        rest_timeout_ms: a REST predict request's deadline from its arrival (0: none).
        concurrent: predictions run at once (>= 1).
        queued: admitted requests that may wait for a slot (>= 0).
        receiving: REST bodies read at once (>= 1).
        body_grace_ms: how long a body may take before the rate rule starts (`bodies`).
        min_body_rate: bytes per second a body must keep up after the grace.
        task_cache_bytes: the budget of the cache of adapted tasks (`task_cache`); 0: no cache.
    """
    max_body_bytes: int = 16 << 20
    rest_timeout_ms: int = REST_TIMEOUT_MS
    concurrent: int = CONCURRENT
    queued: int = QUEUED
    receiving: int = 64
    body_grace_ms: int = 5000
    min_body_rate: int = 64 << 10
    task_cache_bytes: int = 0


# Each field's `tfmeta serve` flag, its lowest value, and the field's units in one of the flag's
# (bytes in a MB or a kB).
FLAGS = {"max_body_bytes": ("--max-body-mb", 1, 1 << 20),
         "rest_timeout_ms": ("--rest_api_timeout_in_ms", 0, 1),
         "concurrent": ("--max-concurrent-predictions", 1, 1),
         "queued": ("--max-queued-predictions", 0, 1),
         "receiving": ("--max-receiving-bodies", 1, 1), "body_grace_ms": ("--body-grace-ms", 1, 1),
         "min_body_rate": ("--min-body-rate-kb", 1, 1 << 10),
         "task_cache_bytes": ("--task-cache-mb", 0, 1 << 20)}
# The fields that tensorflow_model_server has no flag for.
EMBEDDED_ONLY = ("concurrent", "queued", "receiving", "body_grace_ms", "min_body_rate",
                 "task_cache_bytes")


def limits_of(given: dict) -> Limits:
    """`Limits` with the fields in `given` that are not None; raises ConfigError naming the flag
    of a value below its lowest."""
    given = {k: v for k, v in given.items() if v is not None}
    for key, value in given.items():
        flag, lowest, unit = FLAGS[key]
        if value < lowest:
            # In the flag's own units: a byte above 0 is "above 0" MB.
            bound = f"at least {lowest // unit}" if lowest % unit == 0 else "above 0"
            raise ConfigError(f"{flag} must be {bound}, got {value / unit:g}")
    return dataclasses.replace(Limits(), **given)


class Cancellation:
    """A request's cancellation: `cancel()` (from any thread) runs the callback registered with
    `on_cancel` at once, or at registration if it came first."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled = False
        self._callback: Optional[Callable[[], None]] = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            self._cancelled, callback = True, self._callback
        if callback is not None:
            callback()

    def on_cancel(self, callback: Optional[Callable[[], None]]) -> None:
        """Registers `callback` (None: none), replacing the one before."""
        with self._lock:
            self._callback, cancelled = callback, self._cancelled
        if cancelled and callback is not None:
            callback()


class Admission:
    """Tickets and slots for predictions, shared by the REST and gRPC fronts.

    Args:
        concurrent: predictions that run at once (>= 1).
        queued: admitted requests that may wait for a slot (>= 0).
    """

    def __init__(self, concurrent: int = CONCURRENT, queued: int = QUEUED):
        self.concurrent, self.queued = concurrent, queued
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._finished = 0
        self._slots = threading.BoundedSemaphore(concurrent)

    @property
    def admitted(self) -> int:
        """Requests holding a ticket: running or waiting."""
        return self._admitted

    @property
    def finished(self) -> int:
        """Admitted requests that have ended, answered or not."""
        return self._finished

    def admit(self) -> None:
        """Takes a ticket, or refuses the request at once with a 503; `leave` gives it back."""
        with self._lock:
            if self._admitted >= self.concurrent + self.queued:
                running = self._running
                raise ServingError(503, (
                    f"the server is busy: {running} predictions are running and "
                    f"{self._admitted - running} waiting, its limits are {self.concurrent} and "
                    f"{self.queued} (tfmeta serve --max-concurrent-predictions, "
                    "--max-queued-predictions); retry later"))
            self._admitted += 1

    def leave(self) -> None:
        with self._lock:
            self._admitted -= 1
            self._finished += 1

    @contextmanager
    def ticket(self) -> Iterator[None]:
        """A ticket for the block's lifetime (`admit`, then `leave`)."""
        self.admit()
        try:
            yield
        finally:
            self.leave()

    @contextmanager
    def slot(self, deadline: Optional[float],
             cancellation: Optional[Cancellation] = None) -> Iterator[None]:
        """Waits for a free prediction slot until `deadline` (504 after it) or `cancellation`
        (499, the status nginx gives a request its client closed), and holds it."""
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if cancellation is not None:
                wait = CANCEL_POLL_SECONDS if wait is None else min(wait, CANCEL_POLL_SECONDS)
            if cancellation is not None and cancellation.cancelled:
                raise ServingError(499, "the client cancelled the request")
            if self._slots.acquire(timeout=wait) if wait is not None else self._slots.acquire():
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise ServingError(504, f"the request's deadline passed while it waited for one "
                                        f"of the {self.concurrent} prediction slots")
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()
