"""Concurrent body streams per license and per client address.

A few licenses (or one address) reading many blobs at once, or reading them
slowly, must not take every stream the proxy can run. Each manifest or blob
body (GET) holds one slot of its license and one of its client address (IPv6
by /64) until the body is done, however it ends; past the limit the request
gets 429 TOOMANYREQUESTS with Retry-After before any upstream request is made.

The tables hold only keys with a stream open, so they are bounded by the open
connections (`limits.max_connections`).

A license also holds at most half of one registry's upstream connections
(`upstream.pool_per_registry`): otherwise one customer reading slowly could take
them all and stall that vendor's every other customer.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy import metrics
from proxy.oci.errors import OCICode, OCIError
from proxy.ratelimit import address_key

RETRY_AFTER = "2"  # seconds: streams end all the time; a client may try again soon


class StreamSlots:
    def __init__(self, per_license: int, per_address: int, per_license_registry: int = 0) -> None:
        self.per_license = per_license
        self.per_address = per_address
        self.per_license_registry = per_license_registry  # 0: no cap beyond per_license
        self._licenses: dict[str, int] = {}
        self._addresses: dict[str, int] = {}
        self._shares: dict[tuple[str, str], int] = {}  # (license, registry) -> bodies open

    def acquire(self, license_key: str | None, address: str, registry: str | None = None) -> Slot:
        """A slot for one body; OCIError 429 (counted by reason) when either share is used up.

        `license_key` is the customer's id (None for anonymous tokens: only the
        address counts then); `address` the client address as the gate sees it;
        `registry` the id of the registry the body comes from."""
        addr = address_key(address)
        share = (license_key, registry) if license_key is not None and registry is not None else None
        if license_key is not None and self._licenses.get(license_key, 0) >= self.per_license:
            raise self._refuse("license", "too many concurrent downloads for this license")
        if share is not None and self.per_license_registry and self._shares.get(share, 0) >= self.per_license_registry:
            raise self._refuse("license", "too many concurrent downloads for this license from this registry")
        if self._addresses.get(addr, 0) >= self.per_address:
            raise self._refuse("address", "too many concurrent downloads from this address")
        if license_key is not None:
            self._licenses[license_key] = self._licenses.get(license_key, 0) + 1
        self._addresses[addr] = self._addresses.get(addr, 0) + 1
        if share is not None:
            self._shares[share] = self._shares.get(share, 0) + 1
        return Slot(self, license_key, addr, share)

    def _take_share(self, share: tuple[str, str]) -> None:
        if self.per_license_registry and self._shares.get(share, 0) >= self.per_license_registry:
            raise self._refuse("license", "too many concurrent downloads for this license from this registry")
        self._shares[share] = self._shares.get(share, 0) + 1

    def in_use(self) -> int:
        """Slots held right now (each body holds one per address)."""
        return sum(self._addresses.values())

    def keys(self) -> int:
        """Entries in the tables (licenses and addresses with a stream open)."""
        return len(self._licenses) + len(self._addresses) + len(self._shares)

    def _release(self, license_key: str | None, addr: str, share: tuple[str, str] | None) -> None:
        if license_key is not None:
            _decrement(self._licenses, license_key)
        _decrement(self._addresses, addr)
        if share is not None:
            _decrement(self._shares, share)

    @staticmethod
    def _refuse(reason: str, message: str) -> OCIError:
        metrics.STREAMS_REFUSED.labels(reason).inc()
        return OCIError(OCICode.TOOMANYREQUESTS, message, headers={"Retry-After": RETRY_AFTER})


class Slot:
    """One held slot; release() is idempotent, and the slot is a context manager."""

    def __init__(
        self, slots: StreamSlots, license_key: str | None, addr: str, share: tuple[str, str] | None = None
    ) -> None:
        self._slots: StreamSlots | None = slots
        self._license = license_key
        self._addr = addr
        self._share = share

    def share(self, registry: str) -> None:
        """Count this body against its license's share of `registry` now, when it is to come
        from the upstream (the share guards the registry's connections; a body the cache
        serves uses none): 429 when used up. Once per slot; anonymous bodies have no share."""
        if self._slots is None or self._share is not None or self._license is None:
            return
        share = (self._license, registry)
        self._slots._take_share(share)
        self._share = share

    def release(self) -> None:
        if self._slots is not None:
            self._slots._release(self._license, self._addr, self._share)
            self._slots = None

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def _decrement(table: dict[Any, int], key: Any) -> None:
    left = table.get(key, 0) - 1
    if left > 0:
        table[key] = left
    else:
        table.pop(key, None)  # no stream left: the key goes, so the table stays small


# Where a request keeps its slot: routes.py takes it, the cache facade counts the share of a fill.
SLOT_KEY = web.RequestKey("stream_slot", Slot)
