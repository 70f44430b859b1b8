"""How much prediction work the embedded server takes on: a cap on running predictions, a
bounded queue of waiting ones, and a deadline per request.

A predict request, REST or gRPC, first takes a ticket (`Admission.ticket`). At most
`concurrent + queued` requests hold one; the next is refused at once with 503 (gRPC:
UNAVAILABLE), before its body is parsed, so a burst costs the server nothing but the refusals.
With a ticket it waits for one of the `concurrent` slots (`Admission.slot`) until its deadline
(504, gRPC: DEADLINE_EXCEEDED), then parses, runs and answers inside the slot. Memory in flight
is therefore at most `concurrent` requests' parsed inputs and TensorFlow work, plus the raw
bodies of the `concurrent + queued` admitted requests.

A deadline is a `time.monotonic()` instant, or None for none (`repository.deadline_after`). The
model itself runs with the time left as TensorFlow's own `RunOptions.timeout_in_ms`, as TensorFlow
Serving runs it, so an expired request is cancelled inside the graph and frees its slot.
"""

import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from tfmeta_serving.repository import ServingError

# TensorFlow Serving's defaults where it has the flag (--rest_api_timeout_in_ms); the others fit
# a 2-core machine: two predictions keep both cores busy (one request's graph uses them all, and
# the other's parsing fills its gaps), and eight waiting requests of ~40 ms wait well under 1 s.
REST_TIMEOUT_MS = 30000
CONCURRENT = 2
QUEUED = 8


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
                raise ServingError(503, (
                    f"the server is busy: {self.concurrent} predictions are running and "
                    f"{self.queued} waiting, its limits (tfmeta serve "
                    "--max-concurrent-predictions, --max-queued-predictions); retry later"))
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
    def slot(self, deadline: Optional[float]) -> Iterator[None]:
        """Waits for a free prediction slot until `deadline` (504 after it), and holds it."""
        if deadline is None:
            self._slots.acquire()
        elif not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise ServingError(504, f"the request's deadline passed while it waited for one of "
                                    f"the {self.concurrent} prediction slots")
        try:
            yield
        finally:
            self._slots.release()
