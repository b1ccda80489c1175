"""`limits.min_stream_rate`: a client that reads a body slower than that is dropped.

A slow reader holds an upstream connection (and a stream slot) for as long as it
likes; below `min_rate` bytes/s over `window` seconds it is cut. The rate is what
the client actually took off the socket (bytes handed to the transport minus those
still buffered in it), sampled a few times per window, and it is judged only while
the proxy is waiting on the client: a slow upstream is never blamed on the client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

SAMPLES_PER_WINDOW = 5


class StreamPace:
    """Watches one body stream; calls `drop` once when its reader is too slow."""

    def __init__(
        self,
        transport: asyncio.BaseTransport | None,
        min_rate: int,
        window: float,
        drop: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.min_rate = min_rate
        self.window = window
        self._drop = drop
        self.pushed = 0  # bytes handed to the transport so far
        self.waiting_on_client = False
        self.dropped = False
        self._samples: deque[tuple[float, int]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        if self.min_rate <= 0 or self.window <= 0 or self.transport is None:
            return
        self._samples.append((self._loop.time(), 0))
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def taken(self) -> int:
        """Bytes the client has read (or the kernel holds for it)."""
        transport = self.transport
        # asyncio's and uvloop's transports both have these (uvloop's are no WriteTransport).
        if transport is None or transport.is_closing():
            return self.pushed
        # Ignored: aiohttp types it as BaseTransport, which lacks the method; see above.
        return self.pushed - transport.get_write_buffer_size()  # type: ignore[attr-defined]

    def _schedule(self) -> None:
        self._timer = self._loop.call_later(self.window / SAMPLES_PER_WINDOW, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now, taken = self._loop.time(), self.taken()
        self._samples.append((now, taken))
        # The oldest sample at least a window old is where the measurement starts.
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        start, start_taken = self._samples[0]
        elapsed = now - start
        if elapsed >= self.window * 0.999 and self.waiting_on_client:
            if (taken - start_taken) / elapsed < self.min_rate:
                self.dropped = True
                self.stop()
                self._drop()
                return
        self._schedule()
