"""Unit tests run in this process only: starting a program fails the test, and a test
that asks for a session server (registries, pullgate, the vendor environment) is
refused at collection. Such a test belongs in tests/integration/."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

SERVER_FIXTURES = {
    "upstream_basic",
    "upstream_token",
    "upstream_anon",
    "upstream_blob_cache",
    "deployment",
    "pull_proxy",
    "vendor_env",
    "cluster",
    "s3gw",
    "s3_bucket",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        wanted = SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
        if wanted and "tests/unit/" in item.nodeid:
            raise pytest.UsageError(f"{item.nodeid} uses {sorted(wanted)}: it belongs in tests/integration/")


def _refused(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError(f"a unit test started a program {args[:1]!r}: it belongs in tests/integration/")


@pytest.fixture(autouse=True)
def _no_programs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess, "Popen", _refused)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _refused)
    monkeypatch.setattr(asyncio, "create_subprocess_shell", _refused)
    yield
