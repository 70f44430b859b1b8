"""Reading REST request bodies, before any prediction work is admitted.

A body is read before its request asks for a prediction slot (`admission`), so a client that
sends its headers and then trickles its body holds nothing but its own connection and one of
`Bodies.limit` reading places, never a prediction slot. Two rules bound the reading:

- **Rate.** The body must arrive within `grace` seconds, extended by one second for every `rate`
  bytes received (Apache's mod_reqtimeout rule: `body=grace,MinRate=rate`). A client that falls
  behind gets 408 and its connection is closed. A 16 MB body at the default 64 kB/s is allowed
  4.3 minutes; a body that stops is cut off `grace` seconds after its last chunk at most.
- **Places.** At most `limit` bodies are read at once; one more gets 503 at once. Unread bytes
  wait in the kernel and aiohttp's small buffer, so the memory of bodies being read is at most
  `limit` times the body limit, and in practice what was actually received.

The request's own deadline (REST: `--rest_api_timeout_in_ms`) still covers reading: past it the
answer is 504, as before.
"""

import asyncio
import time
from typing import Optional

from aiohttp import web

from tfmeta_serving.errors import ServingError

GRACE_SECONDS = 5.0
RATE = 64 << 10     # bytes per second
LIMIT = 64


class Bodies:
    """Places and the rate rule for bodies being read.

    Args:
        max_bytes: the largest body; a longer one is refused with 400.
        limit: bodies read at once (>= 1).
        grace: seconds a body may take before its first `rate` bytes count.
        rate: bytes per second a body must keep up after `grace`.
    """

    def __init__(self, max_bytes: int, limit: int = LIMIT, grace: float = GRACE_SECONDS,
                 rate: float = RATE):
        self.max_bytes, self.limit, self.grace, self.rate = max_bytes, limit, grace, rate
        self.reading = 0   # touched only on the event loop

    async def read(self, request: web.Request, deadline: Optional[float],
                   timeout_ms: int) -> bytes:
        """The whole body of `request`, or a ServingError: 400 over `max_bytes`, 503 with every
        place taken, 408 for a sender slower than the rule, 504 past `deadline` (a
        `time.monotonic()` instant, None: none; `timeout_ms` names it in the message). The answer
        to a 408 closes the connection (`rest`)."""
        declared = request.content_length
        if declared is not None and declared > self.max_bytes:
            raise ServingError(400, f"request body is {declared} bytes, over the limit of "
                                    f"{self.max_bytes} bytes (tfmeta serve --max-body-mb)")
        if self.reading >= self.limit:
            raise ServingError(503, f"the server is busy: it is receiving {self.reading} "
                                    "request bodies, its limit (tfmeta serve "
                                    "--max-receiving-bodies); retry later")
        self.reading += 1
        try:
            return await self._read(request, deadline, timeout_ms)
        finally:
            self.reading -= 1

    async def _read(self, request: web.Request, deadline: Optional[float],
                    timeout_ms: int) -> bytes:
        start, received, chunks = time.monotonic(), 0, []
        while True:
            allowed = start + self.grace + received / self.rate
            until = allowed if deadline is None else min(allowed, deadline)
            try:
                chunk = await asyncio.wait_for(request.content.readany(),
                                               max(0.0, until - time.monotonic()))
            except asyncio.TimeoutError:
                if deadline is not None and deadline <= allowed:
                    raise ServingError(504, f"the request body did not arrive within the "
                                            f"deadline of {timeout_ms} ms") from None
                raise ServingError(408, f"the request body arrived too slowly: {received} bytes"
                                        f" in {time.monotonic() - start:.1f} s; the server "
                                        f"needs it within {self.grace:g} s plus 1 s per "
                                        f"{self.rate / 1024:g} kB (tfmeta serve "
                                        "--body-grace-ms, --min-body-rate-kb)") from None
            if not chunk:
                return b"".join(chunks)
            received += len(chunk)
            if received > self.max_bytes:
                raise ServingError(400, f"request body is over the limit of {self.max_bytes} "
                                        "bytes (tfmeta serve --max-body-mb)")
            chunks.append(chunk)
