"""Limits as logic, in process: stream slots, throttling keys (IPv6 by /64), and
every in-memory table keyed by client input staying bounded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from unittest import mock

import pytest
import yaml
from aiohttp.test_utils import make_mocked_request

from proxy import metrics
from proxy.auth.gate import Gate
from proxy.auth.proxies import TrustedProxies
from proxy.config import ConfigError, load
from proxy.oci.errors import OCIError
from proxy.pull.limits import StreamSlots
from proxy.ratelimit import RateLimiter, address_key
from proxy.ttlcache import TTLCache
from proxy.upstream.tokens import CachedToken, TokenCache

# --- stream slots ---------------------------------------------------------------------


def test_slots_per_license_and_address_are_refused_with_429() -> None:
    slots = StreamSlots(per_license=2, per_address=3)
    held = [slots.acquire("cust-a", "192.0.2.1"), slots.acquire("cust-a", "192.0.2.1")]
    with pytest.raises(OCIError) as exc:
        slots.acquire("cust-a", "192.0.2.9")  # another address, same license
    assert (exc.value.status, exc.value.code) == (429, "TOOMANYREQUESTS")
    assert int(exc.value.headers["Retry-After"]) >= 1
    held.append(slots.acquire("cust-b", "192.0.2.1"))  # another license: fine
    with pytest.raises(OCIError) as exc:
        slots.acquire("cust-c", "192.0.2.1")  # the address is full
    assert "address" in exc.value.message
    with pytest.raises(OCIError):
        slots.acquire(None, "192.0.2.1")  # anonymous: the address alone counts
    held.pop().release()
    slots.acquire("cust-c", "192.0.2.1").release()


def test_slots_count_ipv6_by_64() -> None:
    slots = StreamSlots(per_license=100, per_address=2)
    slots.acquire("a", "2001:db8:1:2::1")
    slots.acquire("b", "2001:db8:1:2:ffff::9")
    with pytest.raises(OCIError):
        slots.acquire("c", "2001:db8:1:2:abcd::1")  # same /64
    slots.acquire("c", "2001:db8:1:3::1")  # the next /64 is another client


def test_released_slots_leave_no_keys_behind() -> None:
    slots = StreamSlots(per_license=5, per_address=5)
    held = [slots.acquire(f"cust-{i}", f"198.51.100.{i}") for i in range(50)]
    assert slots.in_use() == 50 and slots.keys() == 100
    for slot in held:
        slot.release()
        slot.release()  # idempotent
    assert slots.in_use() == 0 and slots.keys() == 0
    with slots.acquire("x", "203.0.113.1"):
        assert slots.in_use() == 1
    assert slots.in_use() == 0


def test_refusals_are_counted_by_reason() -> None:
    def count(reason: str) -> float:
        return metrics.REGISTRY.get_sample_value("pullgate_streams_refused_total", {"reason": reason}) or 0.0

    before = count("license"), count("address")
    slots = StreamSlots(per_license=1, per_address=1)
    slots.acquire("a", "192.0.2.7")
    for lic, addr in (("a", "192.0.2.8"), ("b", "192.0.2.7")):
        with pytest.raises(OCIError):
            slots.acquire(lic, addr)
    assert (count("license"), count("address")) == (before[0] + 1, before[1] + 1)


# --- throttling keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.10", "192.0.2.10"),
        ("2001:db8:aa:bb:1:2:3:4", "2001:db8:aa:bb::/64"),
        ("2001:DB8:AA:BB::ffff", "2001:db8:aa:bb::/64"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("unknown", "unknown"),
        ("team-123", "team-123"),
    ],
)
def test_address_key(address: str, key: str) -> None:
    assert address_key(address) == key


def test_rate_limiter_keys_ipv6_clients_by_64() -> None:
    """Failed-auth throttling and the anonymous limit: a client rotating through its
    /64 spends one bucket; IPv4 addresses each have their own."""
    limiter = RateLimiter(per_minute=0, burst=3, clock=lambda: 0.0)
    for i in range(3):
        assert limiter.take(f"2001:db8:5:6::{i + 1:x}") is None
    assert limiter.take("2001:db8:5:6:dead:beef::1") is not None
    assert limiter.wait("2001:db8:5:6::99") is not None
    assert limiter.take("2001:db8:5:7::1") is None  # another /64
    for _ in range(3):
        assert limiter.take("192.0.2.1") is None
    assert limiter.take("192.0.2.1") is not None
    assert limiter.take("192.0.2.2") is None


def test_origins_client_key_uses_the_forwarded_client() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    transport = mock.Mock()
    transport.get_extra_info.return_value = ("10.1.2.3", 1234)
    req = make_mocked_request(
        "GET", "/v2/", headers={"X-Forwarded-For": "2001:db8:9:9::77, 10.0.0.5"}, transport=transport
    )
    assert address_key(proxies.client_address(req)) == "2001:db8:9:9::/64"


# --- bounded tables --------------------------------------------------------------------


def test_rate_limiter_is_bounded() -> None:
    limiter = RateLimiter(per_minute=60, burst=5, max_keys=100)
    for i in range(1000):
        limiter.take(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(limiter) == 100


def test_token_cache_is_bounded_and_keeps_recently_used() -> None:
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0], max_entries=50)

    async def fill() -> None:
        for i in range(500):
            tok = CachedToken(f"Bearer t{i}", 1000.0)
            await cache.get(("reg", f"repository:client/repo{i}:pull"), lambda tok=tok: _ready(tok))
            if i >= 1:
                assert cache.peek(("reg", "repository:client/repo0:pull")) is not None  # kept: in use

    asyncio.run(fill())
    assert len(cache) == 50
    assert cache.peek(("reg", "repository:client/repo1:pull")) is None  # evicted
    assert cache.peek(("reg", "repository:client/repo499:pull")) is not None
    now[0] = 2000.0  # every token expired: peeking drops them
    assert cache.peek(("reg", "repository:client/repo499:pull")) is None
    assert len(cache) == 49


async def _ready(tok: CachedToken) -> CachedToken:
    return tok


def test_directory_cache_is_bounded_without_flushing_what_is_used() -> None:
    cache: TTLCache[str, str | None] = TTLCache(ttl=60, max_entries=100)
    loads = []

    async def run() -> None:
        async def load(k: str) -> str | None:
            loads.append(k)
            return None

        await cache.get("real-customer", lambda: _value("ok"))
        for i in range(1000):  # a flood of guessed licenses
            await cache.get(f"guess-{i}", lambda i=i: load(f"guess-{i}"))
            await cache.get("real-customer", lambda: _value("reloaded"))

    asyncio.run(run())
    assert len(cache) == 100
    assert len(loads) == 1000

    async def real() -> str | None:
        return await cache.get("real-customer", lambda: _value("reloaded"))

    assert asyncio.run(real()) == "ok"  # never evicted, never reloaded


async def _value(v: str) -> str:
    return v


# --- config ---------------------------------------------------------------------------


def test_limits_defaults_follow_the_design() -> None:
    limits = load(None, environ={}).limits
    assert (limits.header_timeout, limits.max_connections) == (10, 10000)
    assert (limits.streams_per_license, limits.streams_per_address, limits.min_stream_rate) == (64, 128, 8192)


@pytest.mark.parametrize(
    ("limits", "key"),
    [
        ({"header_timeout": 0}, "limits.header_timeout"),
        ({"max_connections": 0}, "limits.max_connections"),
        ({"streams_per_license": 0}, "limits.streams_per_license"),
        ({"streams_per_address": -1}, "limits.streams_per_address"),
        ({"license_imports_per_minute": 0}, "limits.license_imports_per_minute"),
        ({"min_stream_rate": -5}, "limits.min_stream_rate"),
        ({"max_conections": 5}, "limits.max_conections"),
    ],
)
def test_bad_limits_name_the_key(tmp_path: Path, limits: dict[str, object], key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"limits": limits}))
    with pytest.raises(ConfigError) as exc:
        load(path, environ={})
    assert str(exc.value).startswith(f"{key}:")


def test_limits_from_the_environment() -> None:
    cfg = load(None, environ={"PULLGATE_LIMITS_MAX_CONNECTIONS": "50", "PULLGATE_LIMITS_HEADER_TIMEOUT": "2.5"})
    assert (cfg.limits.max_connections, cfg.limits.header_timeout) == (50, 2.5)


def _request_from(address: str):  # type: ignore[no-untyped-def]
    transport = mock.Mock()
    transport.get_extra_info.return_value = (address, 40000)
    return make_mocked_request("GET", "/v2/", transport=transport)


def test_failed_auth_throttling_keys_ipv6_by_64_and_ipv4_by_address() -> None:
    gate = Gate(None, None, TrustedProxies([]), RateLimiter(per_minute=0, burst=2))  # type: ignore[arg-type]
    for host in ("2001:db8:77:1::a", "2001:db8:77:1:ffff:ffff:ffff:fffe"):
        gate.guard(_request_from(host))
        gate.failed(_request_from(host), "bad_license")
    with pytest.raises(OCIError) as exc:
        gate.guard(_request_from("2001:db8:77:1:1234::1"))  # a fresh address of the same /64
    assert exc.value.status == 429 and "Retry-After" in exc.value.headers
    gate.guard(_request_from("2001:db8:77:2::a"))  # the neighbouring /64 is someone else
    gate.failed(_request_from("192.0.2.50"), "bad_license")
    gate.failed(_request_from("192.0.2.50"), "bad_license")
    with pytest.raises(OCIError):
        gate.guard(_request_from("192.0.2.50"))
    gate.guard(_request_from("192.0.2.51"))  # IPv4: each address on its own


def test_a_license_holds_at_most_its_share_of_one_registry() -> None:
    slots = StreamSlots(per_license=10, per_address=10, per_license_registry=2)
    held = [slots.acquire("a", "192.0.2.1", "reg-1") for _ in range(2)]
    with pytest.raises(OCIError) as err:
        slots.acquire("a", "192.0.2.2", "reg-1")
    assert err.value.status == 429 and "from this registry" in err.value.message
    held.append(slots.acquire("a", "192.0.2.1", "reg-2"))  # another registry: its own share
    held.append(slots.acquire("b", "192.0.2.1", "reg-1"))  # another license: its own share
    held.append(slots.acquire(None, "192.0.2.1", "reg-1"))  # anonymous: the address alone counts
    for slot in held:
        slot.release()
    assert slots.keys() == 0


def test_the_registry_share_counts_only_bodies_the_upstream_sends() -> None:
    """Bodies the cache serves take no upstream connection: the share is counted when one would."""
    slots = StreamSlots(per_license=10, per_address=10, per_license_registry=2)
    cached = [slots.acquire("a", "192.0.2.1") for _ in range(5)]  # hits: more than the share
    upstream = [slots.acquire("a", "192.0.2.1") for _ in range(3)]
    upstream[0].share("reg-1")
    upstream[0].share("reg-1")  # once per slot
    upstream[1].share("reg-1")
    with pytest.raises(OCIError) as err:
        upstream[2].share("reg-1")
    assert err.value.status == 429
    upstream[0].release()
    upstream[2].share("reg-1")  # a share freed by a body that ended
    anonymous = slots.acquire(None, "192.0.2.3")
    anonymous.share("reg-1")  # anonymous: the address alone counts
    for slot in [*cached, *upstream, anonymous]:
        slot.release()
    assert slots.keys() == 0
