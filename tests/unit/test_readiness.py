"""/readyz's checks: every registered one runs, each bounded; any failure is a 503 naming it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from proxy import app


def _services(*checks: tuple[str, object]) -> SimpleNamespace:
    return SimpleNamespace(ready_checks=list(checks), keyring=SimpleNamespace(keys={"k": b"x"}))


async def _ok() -> bool:
    return True


async def _down() -> bool:
    raise ConnectionRefusedError("no")


async def _hangs() -> bool:
    await asyncio.sleep(60)
    return True


async def test_all_checks_pass() -> None:
    ready, body = await app.readiness(_services(("store", _ok), ("cache", _ok)))  # type: ignore[arg-type]
    assert ready and body == {"store": True, "cache": True, "keyring": True}


async def test_a_raising_or_hanging_check_fails_and_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "READY_CHECK_SECONDS", 0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    ready, body = await app.readiness(_services(("store", _ok), ("cache", _hangs), ("other", _down)))  # type: ignore[arg-type]
    assert loop.time() - started < 2  # bounded, and run together
    assert not ready
    assert body["store"] is True and body["cache"] is False and body["other"] is False
    assert body["reason"] == "unreachable or not loaded: cache, other"


async def test_an_empty_keyring_is_not_ready() -> None:
    services = _services(("store", _ok))
    services.keyring.keys = {}
    ready, body = await app.readiness(services)  # type: ignore[arg-type]
    assert not ready and body["keyring"] is False and "keyring" in body["reason"]
