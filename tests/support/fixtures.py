"""Session fixtures: three seeded upstream registries on loopback.

A pytest plugin: tests/conftest.py lists it in pytest_plugins.
Big layer size: env PULLGATE_TEST_BIG_LAYER_MIB (default 100).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci import IN_CI, unavailable
from tests.support.images import seed_standard_images
from tests.support.postgres import PostgresCluster, unavailable_reason
from tests.support.registry import AuthMode, Registry


@pytest.fixture(scope="session")
def big_layer_mib() -> int:
    return int(os.environ.get("PULLGATE_TEST_BIG_LAYER_MIB", "100"))


@pytest.fixture(scope="session")
def upstream_blob_cache() -> Iterator[Path]:
    """The big layer is generated once here and pushed from this file to every registry."""
    d = Path(tempfile.mkdtemp(prefix="pullgate-blobcache-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)  # not under pytest's basetemp: 100+ MiB would linger


def _seeded(auth: AuthMode, name: str, cache: Path, mib: int) -> Iterator[Registry]:
    password = f"canary-{name}-pw-{secrets.token_hex(8)}" if auth != "none" else None
    reg = Registry(auth, username="vendor", password=password, name=name)
    try:
        seed_standard_images(reg, "vendor", mib, cache)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def upstream_basic(upstream_blob_cache: Path, big_layer_mib: int) -> Iterator[Registry]:
    """htpasswd (Basic) registry; user "vendor", password a canary string; `.images` seeded."""
    yield from _seeded("htpasswd", "basic", upstream_blob_cache, big_layer_mib)


@pytest.fixture(scope="session")
def upstream_token(upstream_blob_cache: Path, big_layer_mib: int) -> Iterator[Registry]:
    """Token-auth registry; `.token_server` counts fetches; user "vendor" / canary password."""
    yield from _seeded("token", "token", upstream_blob_cache, big_layer_mib)


@pytest.fixture(scope="session")
def upstream_anon(upstream_blob_cache: Path, big_layer_mib: int) -> Iterator[Registry]:
    """Registry without auth; `.images` seeded."""
    yield from _seeded("none", "anon", upstream_blob_cache, big_layer_mib)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster of Debian's, one per module (the fault tests restart it).
    Required in CI; skipped with the reason elsewhere when PostgreSQL cannot be had."""
    reason = unavailable_reason()
    if reason:
        unavailable(f"PostgreSQL is required in CI: {reason}" if IN_CI else reason)
    c = PostgresCluster().start()
    try:
        yield c
    finally:
        c.stop()
