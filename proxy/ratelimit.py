"""Token buckets per key (a client address, a team), with bounded memory."""

from __future__ import annotations

import functools
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable


@functools.lru_cache(maxsize=4096)  # parsed twice a request otherwise; a pure function of its input
def address_key(address: str) -> str:
    """The key throttles count a client under: an IPv4 address as it is, an IPv6
    address by its /64 (one subscriber's whole prefix, which it can rotate through
    freely), an IPv4-mapped IPv6 address as the IPv4 one. Anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class RateLimiter:
    """A token bucket per key, with bounded memory: past `max_keys` the least
    recently seen key is forgotten. Keys are client addresses by default, counted
    by `address_key` (IPv6 by /64, so one client cannot rotate through its prefix);
    pass `key=str` for keys that are not addresses."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        key: Callable[[str], str] = address_key,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self.clock = clock
        self.key = key
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, last time)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float | None:
        """None when allowed; else the seconds until the next request would be."""
        key = self.key(key)
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)  # the least recently seen address
        if allowed:
            return None
        return math.inf if self.rate <= 0 else (1 - tokens) / self.rate

    def wait(self, key: str) -> float | None:
        """Like take(), without spending: None when a request would be allowed now."""
        key = self.key(key)
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            return None
        return math.inf if self.rate <= 0 else (1 - tokens) / self.rate
