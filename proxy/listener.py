"""The proxy listener's connection limits: `limits.header_timeout` and
`limits.max_connections`.

aiohttp's server has no timeout for receiving a request's headers, so a client
trickling a header byte now and then (slowloris) would keep its connection, and
a task, forever. Here every connection must deliver a request's full headers
within `header_timeout` seconds of connecting, or of the previous response when
it is kept alive; otherwise it is closed. And past `max_connections` open
connections, a new one is answered 503 and closed at once, so the ones already
open keep working.

The hooks are aiohttp's protocol factory (`web.Server`, whose call makes one
`RequestHandler` per connection) and that handler's `_handle_request`, which
runs once per request whose headers have been parsed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from proxy import metrics
from proxy.oci.errors import OCICode, OCIError

log = logging.getLogger("pullgate.listener")

# Written on the socket before any application runs, so built here; 503, not the code's 429,
# as it has always been answered (the whole proxy is busy, not this client).
_BUSY_BODY = OCIError(OCICode.TOOMANYREQUESTS, "the proxy has too many open connections").body()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


class GuardedServer(web.Server):
    """The protocol factory: counts open connections and makes GuardedHandlers."""

    def __init__(self, server: web.Server, header_timeout: float, max_connections: int) -> None:
        # The same settings as the server aiohttp built (handler args, access log, ...).
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.open: set[RequestHandler] = set()

    def full(self) -> bool:
        return len(self.open) >= self.max_connections

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open.add(handler)
        metrics.CONNECTIONS_OPEN.set(len(self.open))

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.open.discard(handler)
        metrics.CONNECTIONS_OPEN.set(len(self.open))


class GuardedHandler(RequestHandler):
    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._began = False  # a byte of the next request has arrived since the timer was armed
        self._served = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.full():
            self._refused = True
            metrics.CONNECTIONS_REFUSED.labels("max_connections").inc()
            writable: Any = transport
            writable.write(BUSY_RESPONSE)
            transport.close()  # flushes the 503, then closes; nothing of this connection is read
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._refused:
            return  # never registered with the server: nothing to undo
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if data:
            self._began = True
        super().data_received(data)

    async def _handle_request(self, *args: Any, **kwargs: Any) -> tuple[web.StreamResponse, bool]:
        # Runs once per request whose headers are parsed (arguments passed through as they are).
        self._disarm()  # the headers are in; a request's own time is not limited here
        self._served += 1
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            if not self._messages:  # a pipelined request already parsed needs no timer
                self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._began = False
        self._header_timer = self._loop.call_later(self._guard.header_timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self.transport is None or self._messages:
            return  # closed already, or a request is parsed and about to run
        if self._began or self._served == 0:
            # A request begun and not finished, or a connection that never sent one.
            metrics.CONNECTIONS_REFUSED.labels("header_timeout").inc()
            log.debug("closing a connection: no complete request headers within %ss", self._guard.header_timeout)
        # Otherwise an idle keep-alive connection: closed as well, without counting it.
        self.force_close()


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose server applies the listener limits."""

    def __init__(self, app: web.Application, *, header_timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = (header_timeout, max_connections)

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), *self._limits)
