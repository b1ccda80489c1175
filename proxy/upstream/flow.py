"""Sans-I/O auth flows, in the manner of httpx's `Auth.auth_flow`.

A flow is a generator: it yields a `Request`, is sent back the `Response`, and
returns what it was after (a token, AWS credentials). It opens no socket and
reads no clock of its own, so a unit test drives it with canned responses and a
`Clock` it controls. `UpstreamClient` (proxy.upstream.client) is the one driver
that turns its requests into real ones, under the egress policy and timeouts.

Flows compose with `yield from`: ECR's flow runs STS AssumeRole first when a
role is configured, then GetAuthorizationToken.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from multidict import CIMultiDict

T = TypeVar("T")

# Token services, ECR and STS answer in a few KiB; more than this is refused unread.
MAX_ANSWER = 1024 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    url: str  # already encoded: sent byte for byte
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # What the request is for, in words for errors and logs ("token service", "STS AssumeRole").
    purpose: str = "registry"
    # A registry request: its body is streamed to the caller, never read by the driver;
    # it follows redirects and is retried. Any other request is answered whole (bounded).
    stream: bool = False

    def __repr__(self) -> str:  # headers carry credentials: never in a log or traceback
        return f"Request({self.method} {self.purpose})"

    def authorized(self, header: str | None) -> Request:
        """This request with `header` as its Authorization (or without one)."""
        headers = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
        if header:
            headers["Authorization"] = header
        return Request(self.method, self.url, headers, self.body, self.purpose, self.stream)


@dataclass(frozen=True)
class Response:
    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""  # empty for a registry request: its body belongs to the caller


Flow = Generator[Request, Response, T]


class FlowRunner(Protocol):
    """Runs a flow to its result, sending its requests (UpstreamClient.run)."""

    def __call__(self, flow: Flow[T], slug: str) -> Awaitable[T]: ...


@dataclass(frozen=True)
class Clock:
    """Monotonic seconds say when a cached token stops being used; wall seconds
    are compared with the times a token service or AWS writes in its answers."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time


SYSTEM_CLOCK = Clock()
