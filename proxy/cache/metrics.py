"""The cache's Prometheus collectors (on the proxy's one registry). Labels: kind only."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from proxy.metrics import REGISTRY

HITS = Counter("pullgate_cache_hits", "Requests answered from the cache", ["kind"], registry=REGISTRY)
MISSES = Counter("pullgate_cache_misses", "Cacheable requests that went upstream", ["kind"], registry=REGISTRY)
COALESCED = Counter(
    "pullgate_cache_coalesced_waiters", "Misses that joined another request's upstream fetch", registry=REGISTRY
)
BYTES = Counter(
    "pullgate_cache_bytes", "Bytes into the cache from upstream, and out of it", ["source"], registry=REGISTRY
)  # source: upstream | cache
STALE = Counter("pullgate_cache_stale_serves", "Tags served stale because the upstream failed", registry=REGISTRY)
VERIFICATION_FAILURES = Counter(
    "pullgate_cache_verification_failures",
    "Fetches into the cache whose bytes did not hash to their digest (nothing was kept)",
    registry=REGISTRY,
)
FILLS = Counter(
    "pullgate_cache_fills",
    "Upstream fetches of missed blobs by role: fill (this process holds the digest's fill lease and"
    " stores it for all) or pass (another process holds it: streamed to this one's clients, not stored)",
    ["role"],
    registry=REGISTRY,
)
ADOPTED = Counter(
    "pullgate_cache_adopted",
    "Objects another replica or worker stored, found through the shared index on a miss of this one's",
    registry=REGISTRY,
)
RELAYS = Counter(
    "pullgate_cache_relays",
    "Large remote (S3) hits relayed by a thread, by outcome: done, client (gone or not reading),"
    " upstream (a short or wrong answer: the response aborted), fallback (unreachable this way:"
    " streamed on the event loop instead)",
    ["outcome"],
    registry=REGISTRY,
)
EVICTIONS = Counter("pullgate_cache_evictions", "Objects evicted (least recently used)", registry=REGISTRY)
# One disk, several workers (`serve --workers N`): each reports its own view of it; the
# freshest one stands for the whole (summing would count the same files N times).
SIZE = Gauge("pullgate_cache_size_bytes", "Bytes held by the cache", registry=REGISTRY, multiprocess_mode="mostrecent")
ENTRIES = Gauge(
    "pullgate_cache_entries", "Objects held by the cache", registry=REGISTRY, multiprocess_mode="mostrecent"
)
