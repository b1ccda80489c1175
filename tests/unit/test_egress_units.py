"""The egress policy as pure logic: which address:port the proxy may connect to, and why not."""

from __future__ import annotations

import ipaddress

import pytest

from proxy.config import ConfigError, UpstreamSection, load
from proxy.egress import (
    EgressPolicy,
    Listener,
    listener_of,
    parse_allow,
    refused_destination,
    url_target,
)


def _never_local(_: object) -> bool:
    return False


def policy(allow: list[str] = (), listeners: list[Listener] = (), local: set[str] = frozenset()) -> EgressPolicy:  # type: ignore[assignment]
    return EgressPolicy(parse_allow(allow), listeners, is_local=lambda ip: str(ip) in local)


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.8.7", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "private"),  # the AWS metadata service over IPv6
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.0.170", "reserved"),
        ("198.18.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.1.2.3", "private"),
        ("::127.0.0.1", "ipv4-compatible"),
        ("64:ff9b::127.0.0.1", "loopback"),  # NAT64 of loopback
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::1", "private"),
        ("2002:7f00:1::1", "loopback"),  # 6to4 carrying 127.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 carrying 10.0.0.1
        ("2001:0:4136:e378::1", "reserved"),  # Teredo
        ("2001:db8::1", "reserved"),
        ("100::1", "reserved"),
        ("3fff::1", None),  # global unicast
        ("4000::1", "reserved"),  # outside 2000::/3
    ],
)
def test_blocked_ranges(address: str, rule: str | None) -> None:
    refusal = policy().check(address, 443)
    assert (refusal.rule if refusal else None) == rule


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "52.94.1.1", "2606:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_pass(address: str) -> None:
    assert policy().check(address, 443) is None


def test_refusals_say_why_with_the_network() -> None:
    r = policy().check("169.254.169.254", 80)
    assert r is not None and "169.254.0.0/16" in r.reason and "metadata" in r.reason
    mapped = policy().check("::ffff:127.0.0.1", 80)
    assert mapped is not None and "IPv4-mapped" in mapped.reason
    assert "upstream.egress_allow" in r.advice()


def test_allow_entries_cidr_address_port_and_ipv6_port() -> None:
    p = policy(["10.20.0.0/16", "127.0.0.1:5001", "[fd00::5]:443", "192.168.7.7"])
    assert p.check("10.20.3.4", 1) is None
    assert p.check("10.21.0.1", 1).rule == "private"  # type: ignore[union-attr]
    assert p.check("127.0.0.1", 5001) is None
    assert p.check("127.0.0.1", 5002).rule == "loopback"  # type: ignore[union-attr]
    assert p.check("::ffff:127.0.0.1", 5001) is None  # the same destination, mapped
    assert p.check("fd00::5", 443) is None
    assert p.check("fd00::5", 80).rule == "private"  # type: ignore[union-attr]
    assert p.check("192.168.7.7", 9999) is None


def test_own_listener_is_refused_whatever_egress_allow_says() -> None:
    own = [Listener(ipaddress.ip_address("127.0.0.1"), 8080), Listener(ipaddress.ip_address("127.0.0.1"), 8081)]
    p = policy(["127.0.0.0/8", "0.0.0.0/0", "::/0"], own)
    for address, port in (("127.0.0.1", 8080), ("127.0.0.1", 8081), ("::ffff:127.0.0.1", 8081)):
        r = p.check(address, port)
        assert r is not None and r.rule == "own-listener" and not r.overridable
        assert "never" in r.advice()
    assert p.check("127.0.0.1", 5000) is None  # another loopback port: allowed by the entry
    # The unspecified address reaches this machine: never allowed either.
    assert p.check("0.0.0.0", 8080).rule == "unspecified"  # type: ignore[union-attr]
    assert p.check("0.0.0.0", 5000).rule == "unspecified"  # type: ignore[union-attr]


def test_wildcard_listener_covers_every_local_address_with_its_port() -> None:
    own = [listener_of("0.0.0.0", 8080), listener_of("::", 8081)]
    assert own[0].address is None and own[1].address is None
    p = policy(["0.0.0.0/0"], own, local={"192.0.2.10", "203.0.113.5"})
    assert p.check("192.0.2.10", 8080).rule == "own-listener"  # type: ignore[union-attr]
    assert p.check("203.0.113.5", 8081).rule == "own-listener"  # type: ignore[union-attr]
    assert p.check("127.0.0.2", 8080).rule == "own-listener"  # type: ignore[union-attr]  # loopback is local
    assert p.check("198.51.100.1", 8080) is None  # not ours: the allow entry admits it
    assert p.check("192.0.2.10", 9090) is None  # ours, another port


def test_listener_given_by_name_is_treated_as_every_local_address() -> None:
    assert listener_of("localhost", 8080).address is None
    assert listener_of("[::1]", 8080).address == ipaddress.ip_address("::1")


@pytest.mark.parametrize(
    "entry", ["", "10.0.0.0/33", "example.com", "10.0.0.1:0", "10.0.0.1:70000", "[::1]", "::1:80x", "[10.0.0.1]:80"]
)
def test_bad_allow_entries_name_the_key(entry: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_allow(["10.0.0.0/8", entry])
    assert "upstream.egress_allow[1]" in str(err.value)


def test_config_validates_egress_allow_and_pool(tmp_path) -> None:
    def load_with(text: str):  # type: ignore[no-untyped-def]
        p = tmp_path / "c.yaml"
        p.write_text(text)
        return load(p, environ={})

    cfg = load_with("upstream:\n  egress_allow: ['127.0.0.1:5001', '10.20.0.0/16', '[fd00::1]:443']\n")
    assert cfg.upstream.egress_allow == ["127.0.0.1:5001", "10.20.0.0/16", "[fd00::1]:443"]
    assert cfg.upstream.pool_per_registry == 50 and cfg.upstream.pool_size == 200
    for text, key in (
        ("upstream:\n  egress_allow: ['nope']\n", "upstream.egress_allow[0]"),
        ("upstream:\n  egress_allow: 10.0.0.0/8\n", "upstream.egress_allow"),
        ("upstream:\n  pool_per_registry: 0\n", "upstream.pool_per_registry"),
        ("upstream:\n  pool_per_registry: 300\n", "upstream.pool_per_registry"),
        ("upstream:\n  keepalive_seconds: 0\n", "upstream.keepalive_seconds"),
    ):
        with pytest.raises(ConfigError) as err:
            load_with(text)
        assert key in str(err.value)


def test_bootstrap_registry_on_a_refused_literal_address_stops_the_start(tmp_path) -> None:
    reg = "registries: [{provider: other, endpoint: r.test, url: 'http://{url}', insecure: true}]"

    def load_with(url: str, extra: str = "") -> None:
        p = tmp_path / "c.yaml"
        p.write_text(
            "admin: {listen: '127.0.0.1:8081'}\n"
            + extra
            + "bootstrap:\n  teams:\n  - name: t\n    "
            + reg.replace("{url}", url)
            + "\n"
        )
        load(p, environ={})

    for url in ("127.0.0.1:5001", "169.254.169.254", "[::1]:5001", "10.0.0.1"):
        with pytest.raises(ConfigError) as err:
            load_with(url)
        assert "bootstrap.teams[0].registries[0].url" in str(err.value)
        assert "upstream.egress_allow" in str(err.value)
    load_with("127.0.0.1:5001", "upstream: {egress_allow: ['127.0.0.1:5001']}\n")
    load_with("registry.example.com:5001")  # a name: judged at connect time
    load_with("localhost:5001")  # a name too
    with pytest.raises(ConfigError) as err:  # the admin listener, even when allowed
        load_with("127.0.0.1:8081", "upstream: {egress_allow: ['127.0.0.0/8']}\n")
    assert "own listener" in str(err.value) and "never" in str(err.value)


def test_url_target_and_vendor_message() -> None:
    assert url_target("https://registry.example") == ("registry.example", 443)
    assert url_target("http://[::1]:5000/v2/") == ("::1", 5000)
    assert url_target("ftp://x") is None
    r = policy().check("10.0.0.1", 80)
    assert r is not None
    msg = refused_destination("url", "10.0.0.1", r, literal=True)
    assert msg.startswith("url: refused by the egress policy (rule private): 10.0.0.1 is a private address")
    assert "upstream.egress_allow" in msg
    by_name = refused_destination("url", "internal.example", r, literal=False)
    assert "internal.example resolves to a private address" in by_name and "10.0.0.1" not in by_name


def test_default_section_allows_nothing_private() -> None:
    assert UpstreamSection().egress_allow == []
    assert (
        EgressPolicy(parse_allow(UpstreamSection().egress_allow), is_local=_never_local).check("127.0.0.1", 5000)
        is not None
    )
