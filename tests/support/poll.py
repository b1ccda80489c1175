"""Wait for a condition, never for a fixed time: poll it until a deadline.

`poll` for plain code, `apoll` inside a running event loop (the predicate may be
a coroutine function). Both return the predicate's first truthy value and fail
the test, naming what was awaited, when the deadline passes."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.05


def poll(predicate: Callable[[], T], timeout: float, what: str = "the condition", interval: float = INTERVAL) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


async def apoll(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float,
    what: str = "the condition",
    interval: float = INTERVAL,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]  # awaited above
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)
