"""Fast, in-process checks of the pieces behind holes 5-7: digest rules, the
slow-reader guard, the 499 accounting, and the new config keys."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from proxy import metrics
from proxy.accesslog import record_metrics
from proxy.config import ConfigError, load
from proxy.logs import reported_status
from proxy.oci.digest import MAX_MANIFEST, Verifier, digest_of, is_digest, manifest_digest_problem
from proxy.pull.pace import StreamPace

BODY = b'{"schemaVersion": 2}'
SHA256 = "sha256:" + hashlib.sha256(BODY).hexdigest()
SHA512 = "sha512:" + hashlib.sha512(BODY).hexdigest()


def test_manifest_digest_rules():
    assert manifest_digest_problem(BODY, SHA256, None) is None
    assert manifest_digest_problem(BODY, SHA512, SHA256) is None
    assert manifest_digest_problem(BODY, None, None) is None  # by tag, nothing announced: we set it
    assert "requested digest" in (manifest_digest_problem(BODY + b" ", SHA256, None) or "")
    assert "Docker-Content-Digest" in (manifest_digest_problem(BODY, None, digest_of(b"other")) or "")
    assert "not a supported digest" in (manifest_digest_problem(BODY, None, "md5:abc") or "")
    assert MAX_MANIFEST == 4 * 1024 * 1024
    assert is_digest(SHA256) and not is_digest("v1") and not is_digest(None)


def test_verifier_hashes_in_pieces():
    v = Verifier(SHA512)
    for i in range(0, len(BODY), 3):
        v.update(BODY[i : i + 3])
    assert v.matches()
    v = Verifier(SHA256)
    v.update(BODY[:-1])
    assert not v.matches()
    with pytest.raises(ValueError):
        Verifier("md5:" + "0" * 32)


def test_only_client_side_aborts_are_499():
    ctx = SimpleNamespace
    assert reported_status(200, ctx(aborted="client"), False) == 499
    assert reported_status(200, ctx(aborted="slow"), False) == 499
    assert reported_status(200, ctx(aborted="upstream"), True) == 200  # the upstream's doing: its own accounting
    assert reported_status(200, ctx(aborted="digest"), True) == 200
    assert reported_status(200, ctx(aborted=None), True) == 499  # the client left before the answer was out
    assert reported_status(404, None, False) == 404


class FakeTransport:
    def __init__(self) -> None:
        self.buffered = 0

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered


async def test_the_pace_guard_drops_a_slow_reader_only_while_waiting_on_it():
    transport = FakeTransport()
    dropped: list[float] = []
    loop = asyncio.get_running_loop()
    pace = StreamPace(transport, min_rate=10_000, window=0.2, drop=lambda: dropped.append(loop.time()))
    start = loop.time()
    pace.start()
    # The client reads 1 000 bytes/s while the proxy waits on it: dropped after about a window.
    pace.waiting_on_client = True
    while not dropped and loop.time() - start < 2:
        pace.pushed += 10
        await asyncio.sleep(0.01)
    assert dropped and 0.2 <= dropped[0] - start < 0.5 and pace.dropped
    # Not while the proxy waits on the upstream instead (a trickling registry).
    dropped.clear()
    idle = StreamPace(transport, min_rate=10_000, window=0.1, drop=lambda: dropped.append(loop.time()))
    idle.start()
    await asyncio.sleep(0.4)
    idle.stop()
    assert dropped == []
    # Nor when it reads fast enough; and 0 turns the guard off.
    fast = StreamPace(transport, min_rate=10_000, window=0.1, drop=lambda: dropped.append(loop.time()))
    fast.start()
    fast.waiting_on_client = True
    for _ in range(40):
        fast.pushed += 1_000
        await asyncio.sleep(0.01)
    fast.stop()
    off = StreamPace(transport, min_rate=0, window=0.1, drop=lambda: dropped.append(loop.time()))
    off.start()
    off.waiting_on_client = True
    await asyncio.sleep(0.3)
    assert dropped == []


def _load(tmp_path: Path, data: dict[str, Any]) -> Any:
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(data))
    return load(p, environ={})


def test_limits_keys(tmp_path: Path):
    cfg = _load(tmp_path, {"limits": {"min_stream_rate": 1024, "min_stream_window": 5}})
    assert (cfg.limits.min_stream_rate, cfg.limits.min_stream_window) == (1024, 5)
    default = _load(tmp_path, {})
    assert (default.limits.min_stream_rate, default.limits.min_stream_window) == (8192, 30)
    with pytest.raises(ConfigError, match=r"limits\.min_stream_rate"):
        _load(tmp_path, {"limits": {"min_stream_rate": -1}})
    with pytest.raises(ConfigError, match=r"limits\.min_stream_window"):
        _load(tmp_path, {"limits": {"min_stream_window": 0}})


def test_anonymous_repositories_key(tmp_path: Path):
    team = {
        "name": "t",
        "apps": [{"slug": "a"}],
        "registries": [
            {
                "slug": "r",
                "provider": "other",
                "endpoint": "r.test",
                "url": "https://r.test",
                "allow_anonymous": True,
                "anonymous_repositories": ["vendor/*"],
            }
        ],
    }
    cfg = _load(tmp_path, {"bootstrap": {"teams": [team]}})
    assert cfg.bootstrap.teams[0].registries[0].anonymous_repositories == ["vendor/*"]
    team["registries"][0]["anonymous_repositories"] = ["/vendor"]
    with pytest.raises(ConfigError, match=r"registries\[0\]\.anonymous_repositories\[0\]"):
        _load(tmp_path, {"bootstrap": {"teams": [team]}})


def test_a_made_up_method_is_no_new_metric_series():
    def series() -> set[str]:
        return {s.labels["method"] for m in metrics.REQUESTS.collect() for s in m.samples}

    record_metrics("base", "GET", 200, 0.01, None)
    for i in range(3):
        record_metrics("base", f"BREW{i}", 405, 0.01, None)
    assert "GET" in series() and "other" in series()
    assert not any(m.startswith("BREW") for m in series())
