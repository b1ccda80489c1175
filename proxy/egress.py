"""Where the proxy may connect: one policy for every outbound connection.

pullgate holds vendors' credentials and runs next to internal networks, so a
registry (or a redirect it sends, or a token realm) must not steer it into the
admin listener, the cloud metadata address or a private network. The policy is
applied to the addresses a name resolves to at connect time (proxy.upstream.connector),
so a public name that resolves to 127.0.0.1 is caught like the literal address.

Order of the rules: the proxy's own listeners and the unspecified address are
always refused; then an `upstream.egress_allow` entry lets an address through;
then the blocked ranges below refuse it. IPv4-mapped IPv6 addresses are judged
as the IPv4 address they reach; NAT64 and 6to4 forms by the IPv4 address they
carry. Pure logic here (but `bound_locally`, one bind() to tell a local address);
proxy.upstream.connector applies it to aiohttp's connections.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_KEY = "upstream.egress_allow"


@dataclass(frozen=True)
class Refusal:
    """Why a destination is refused. `rule` is a short fixed name (a metric label)."""

    rule: str
    reason: str  # "a private address (10.0.0.0/8)": words for operators and vendors
    overridable: bool = True

    def advice(self) -> str:
        if not self.overridable:
            return "this is never allowed"
        return f"an operator can allow it with {ALLOW_KEY}"


def _rules(*rows: tuple[str, str, str]) -> list[tuple[IPNetwork, str, str]]:
    return [(ipaddress.ip_network(net), rule, words) for net, rule, words in rows]


BLOCKED = _rules(
    ("0.0.0.0/8", "unspecified", "the 'this network' block"),
    ("127.0.0.0/8", "loopback", "a loopback address"),
    ("169.254.0.0/16", "link-local", "a link-local address (this block holds the cloud metadata service)"),
    ("10.0.0.0/8", "private", "a private address"),
    ("172.16.0.0/12", "private", "a private address"),
    ("192.168.0.0/16", "private", "a private address"),
    ("100.64.0.0/10", "shared", "a shared (carrier-grade NAT) address"),
    ("192.0.0.0/24", "reserved", "an IETF protocol address"),
    ("192.0.2.0/24", "reserved", "a documentation address"),
    ("198.51.100.0/24", "reserved", "a documentation address"),
    ("203.0.113.0/24", "reserved", "a documentation address"),
    ("198.18.0.0/15", "reserved", "a benchmarking address"),
    ("192.88.99.0/24", "reserved", "a 6to4 relay address"),
    ("224.0.0.0/4", "multicast", "a multicast address"),
    ("255.255.255.255/32", "broadcast", "the broadcast address"),
    ("240.0.0.0/4", "reserved", "a reserved address"),
    ("::1/128", "loopback", "a loopback address"),
    ("fe80::/10", "link-local", "a link-local address"),
    ("fec0::/10", "private", "a site-local address"),
    ("fc00::/7", "private", "a unique local (private) address"),
    ("ff00::/8", "multicast", "a multicast address"),
    ("64:ff9b:1::/48", "private", "a local-use NAT64 address"),
    ("::/96", "ipv4-compatible", "an IPv4-compatible IPv6 address (deprecated)"),
    ("100::/64", "reserved", "a discard-only address"),
    ("2001::/32", "reserved", "a Teredo tunnel address"),
    ("2001:db8::/32", "reserved", "a documentation address"),
    ("2001:10::/28", "reserved", "an ORCHID address"),
    ("2001:20::/28", "reserved", "an ORCHID address"),
)
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
OWN_LISTENER = Refusal("own-listener", "this proxy's own listener", overridable=False)
UNSPECIFIED = Refusal("unspecified", "the unspecified address (it reaches this machine)", overridable=False)


@dataclass(frozen=True)
class AllowEntry:
    network: IPNetwork
    port: int | None  # None: every port

    def admits(self, address: IPAddress, port: int) -> bool:
        return address.version == self.network.version and address in self.network and self.port in (None, port)


@dataclass(frozen=True)
class Listener:
    """One of the proxy's own sockets; `address` None means every local address."""

    address: IPAddress | None
    port: int


def parse_allow(entries: Sequence[str], key: str = ALLOW_KEY) -> list[AllowEntry]:
    """`CIDR`, `ADDRESS:PORT` or `[IPV6]:PORT`; a bad entry is a ValueError naming it."""
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(_parse_entry(str(entry).strip()))
        except ValueError:
            raise ValueError(
                f"{key}[{i}]: {entry!r} is not a CIDR (10.20.0.0/16), ADDRESS:PORT (10.0.0.5:5000) or [IPV6]:PORT entry"
            ) from None
    return out


def _parse_entry(text: str) -> AllowEntry:
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(text)
        return AllowEntry(ipaddress.ip_network(ipaddress.IPv6Address(addr)), _port(port))
    if text.count(":") == 1:  # IPv4:PORT (a bare IPv6 has several colons)
        addr, _, port = text.partition(":")
        return AllowEntry(ipaddress.ip_network(ipaddress.IPv4Address(addr)), _port(port))
    return AllowEntry(ipaddress.ip_network(text, strict=False), None)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(text)
    return int(text)


def listener_of(host: str, port: int) -> Listener:
    """A `listen` setting as the policy sees it: a wildcard or a name covers every local address."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return Listener(None, port)  # a host name: assume it may be any local address
    if address.is_unspecified:
        return Listener(None, port)
    return Listener(_unmapped(address), port)


def bound_locally(address: IPAddress) -> bool:
    """Is `address` one of this machine's? Binding to it succeeds only if it is."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(address), 0))
        return True
    except OSError:
        return False


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded_v4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address in NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


class EgressPolicy:
    def __init__(
        self,
        allow: Sequence[AllowEntry] = (),
        listeners: Sequence[Listener] = (),
        is_local: Callable[[IPAddress], bool] = bound_locally,
    ) -> None:
        self.allow = list(allow)
        self.listeners = list(listeners)
        self.is_local = is_local

    def check(self, address: str | IPAddress, port: int) -> Refusal | None:
        """None when the proxy may connect to address:port; otherwise why not."""
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return Refusal("not-an-address", "not an IP address", overridable=False)
        mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
        ip = _unmapped(ip)
        refusal = self._judge(ip, port)
        if refusal is not None and mapped:
            return Refusal(refusal.rule, f"the IPv4-mapped IPv6 form of {refusal.reason}", refusal.overridable)
        return refusal

    def _judge(self, ip: IPAddress, port: int) -> Refusal | None:
        if ip.is_unspecified:
            return UNSPECIFIED
        if self._is_own_listener(ip, port):
            return OWN_LISTENER
        if any(entry.admits(ip, port) for entry in self.allow):
            return None
        blocked = _blocked(ip)
        if blocked is not None:
            return blocked
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = _embedded_v4(ip)
            if embedded is not None:
                form, v4 = embedded
                inner = _blocked(v4)
                if inner is not None:
                    return Refusal(inner.rule, f"the {form} form of {inner.reason}")
                return None  # a public IPv4 address behind a translator
            if ip not in GLOBAL_UNICAST_V6:
                return Refusal("reserved", "an IPv6 address outside global unicast (2000::/3)")
        return None

    def _is_own_listener(self, ip: IPAddress, port: int) -> bool:
        for listener in self.listeners:
            if listener.port != port:
                continue
            if listener.address is None:
                if ip.is_loopback or self.is_local(ip):
                    return True
            elif ip == listener.address:
                return True
        return False


def _blocked(ip: IPAddress) -> Refusal | None:
    for network, rule, words in BLOCKED:
        if ip.version == network.version and ip in network:
            return Refusal(rule, f"{words} ({network})")
    return None


def refused_destination(field: str, host: str, refusal: Refusal, literal: bool) -> str:
    """The vendor's message: the field, the rule and what an operator can do; for a name,
    never the address it resolved to."""
    where = f"{host} is" if literal or not refusal.overridable else f"{host} resolves to"
    return f"{field}: refused by the egress policy (rule {refusal.rule}): {where} {refusal.reason}; {refusal.advice()}"


def refused_hop(refusal: Refusal) -> str:
    return (
        f"url: the registry sent the proxy to a destination the egress policy refuses (rule {refusal.rule}): "
        f"{refusal.reason}; {refusal.advice()}"
    )


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def carries_credentials(url: str) -> bool:
    """Does the URL carry a userinfo part (user:password@)? Judged on the text as typed, so even
    an empty one counts: a URL is stored and shown as written (API, portal, config), so one
    holding a secret must be refused, never quoted. Raises ValueError when yarl cannot parse it."""
    parsed = URL(url)
    return "@" in url.split("://", 1)[-1].split("/", 1)[0] or bool(parsed.user or parsed.password)


def url_target(url: str | URL) -> tuple[str, int] | None:
    """(host, port) a URL connects to; None when it has no usable host."""
    u = URL(url) if isinstance(url, str) else url
    if u.scheme not in ("http", "https") or not u.raw_host:
        return None
    return u.raw_host, u.port or (443 if u.scheme == "https" else 80)
