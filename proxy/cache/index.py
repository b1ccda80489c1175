"""What the cache holds, in memory: entries in least-recently-used order, the repositories
each digest came through (bindings), and tags. Pure bookkeeping: no I/O, no clock of its
own (callers pass `now`), so it is unit-tested as it is; `persist` mirrors it in the store.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

Binding = tuple[str, str]  # (registry id, upstream repository)
TagKey = tuple[str, str, str, str]  # (registry id, upstream repository, tag, accept kind)


@dataclass
class Entry:
    digest: str
    size: int
    media_type: str | None
    last_access: float  # seconds since the epoch


@dataclass
class TagEntry:
    digest: str
    media_type: str
    checked_at: float  # when the upstream last said the tag is this digest


class CacheIndex:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # oldest use first
        self.total = 0
        self.bindings: dict[str, set[Binding]] = {}
        self.tags: dict[TagKey, TagEntry] = {}
        # Last uses not yet written to the store (written in batches, never on the hit path).
        self.touched: dict[str, float] = {}

    # --- entries ------------------------------------------------------------
    def get(self, digest: str) -> Entry | None:
        return self.entries.get(digest)

    def add(self, entry: Entry) -> None:
        old = self.entries.pop(entry.digest, None)
        if old is not None:
            self.total -= old.size
        self.entries[entry.digest] = entry
        self.total += entry.size

    def touch(self, digest: str, now: float) -> None:
        entry = self.entries.get(digest)
        if entry is None:
            return
        entry.last_access = now
        self.entries.move_to_end(digest)
        self.touched[digest] = now

    def take_touched(self) -> dict[str, float]:
        touched, self.touched = self.touched, {}
        return touched

    def remove(self, digest: str) -> Entry | None:
        """Forget a digest: its entry, its bindings, the tags that point at it."""
        entry = self.entries.pop(digest, None)
        if entry is not None:
            self.total -= entry.size
        self.bindings.pop(digest, None)
        self.touched.pop(digest, None)
        for key in [k for k, t in self.tags.items() if t.digest == digest]:
            del self.tags[key]
        return entry

    def victims(self, room_for: int = 0) -> list[Entry]:
        """Least recently used entries to evict so that `room_for` more bytes fit; removed here."""
        out = []
        while self.entries and self.total + room_for > self.max_size:
            digest = next(iter(self.entries))
            entry = self.remove(digest)
            assert entry is not None
            out.append(entry)
        return out

    # --- bindings -------------------------------------------------------------
    def bound(self, digest: str, binding: Binding) -> bool:
        return binding in self.bindings.get(digest, ())

    def bind(self, digest: str, binding: Binding) -> bool:
        """True when the binding is new."""
        held = self.bindings.setdefault(digest, set())
        if binding in held:
            return False
        held.add(binding)
        return True

    def unbind(self, digest: str, binding: Binding) -> None:
        held = self.bindings.get(digest)
        if held is not None:
            held.discard(binding)
            if not held:
                del self.bindings[digest]

    def select(
        self, registry_ids: set[str], repository: str | None = None, digest: str | None = None
    ) -> list[tuple[str, Binding]]:
        """(digest, binding) pairs of these registries, narrowed by repository and digest."""
        digests = [digest] if digest is not None else list(self.bindings)
        out = []
        for d in digests:
            for b in sorted(self.bindings.get(d, ())):
                if b[0] in registry_ids and (repository is None or b[1] == repository):
                    out.append((d, b))
        return out

    # --- tags -------------------------------------------------------------------
    def tag(self, key: TagKey) -> TagEntry | None:
        return self.tags.get(key)

    def set_tag(self, key: TagKey, entry: TagEntry) -> None:
        self.tags[key] = entry

    def drop_tag(self, key: TagKey) -> None:
        self.tags.pop(key, None)

    def tags_of(self, registry_ids: set[str], repository: str | None = None, digest: str | None = None) -> list[TagKey]:
        return [
            k
            for k, t in self.tags.items()
            if k[0] in registry_ids
            and (repository is None or k[1] == repository)
            and (digest is None or t.digest == digest)
        ]
