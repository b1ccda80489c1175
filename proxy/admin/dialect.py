"""The two spellings of a customer request: pullgate's (camelCase) and the `replicated`
CLI's (snake_case, as its Go structs encode it), read into one canonical form.

Pure functions, no I/O: the service resolves apps and channels afterwards. What
pullgate cannot honour (entitlement values, pinned release sequences) is refused
with a problem naming the field as the client sent it; the CLI's license feature
flags (`is_airgap_enabled`, `is_snapshot_supported`...) are accepted and ignored,
since pullgate has nothing they would switch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# canonical key -> the spellings a request may use for it
ALIASES: dict[str, tuple[str, ...]] = {
    "app": ("appSlug", "appId", "app_id"),
    "name": ("name",),
    "email": ("email",),
    "licenseType": ("licenseType", "type"),
    "expiresAt": ("expiresAt", "expires_at"),
    "customId": ("customId", "custom_id"),
    "channels": ("channels",),
    "egressThresholdBytes": ("egressThresholdBytes",),  # monthly egress threshold (proxy.admin.usage)
}
# Feature flags of a Replicated license: accepted, ignored (pullgate has nothing they switch).
IGNORED_FLAG = re.compile(r"^is_[a-z0-9_]+$")
CHANNEL_KEYS = {"channel_id", "pinned_channel_sequence", "is_default_for_customer"}
MAX_CUSTOM_ID = 200


@dataclass
class ChannelChoice:
    ref: str  # a channel id, name or slug
    default: bool = False
    sent_as: str = "channels"


@dataclass
class CustomerInput:
    values: dict[str, Any]  # canonical key -> value, only the keys the request gave
    sent: dict[str, str]  # canonical key -> the spelling the request used
    channels: list[ChannelChoice] | None = None  # None: not given
    problems: list[str] = field(default_factory=list)

    def rename(self, problems: list[str]) -> list[str]:
        """Problems written with canonical keys, renamed to the spelling the client sent."""
        out = []
        for p in problems:
            key, sep, rest = p.partition(":")
            out.append(f"{self.sent.get(key, key)}{sep}{rest}" if sep else p)
        return out


def read_customer(body: Mapping[str, Any], allowed: set[str]) -> CustomerInput:
    """Canonicalise a create or update body; `allowed` are the canonical keys this
    operation takes. Unknown fields, a field given in two spellings, refused fields
    and malformed channel entries are problems."""
    values: dict[str, Any] = {}
    sent: dict[str, str] = {}
    problems: list[str] = []
    by_alias = {alias: key for key, aliases in ALIASES.items() if key in allowed for alias in aliases}
    legacy_channel = None
    for raw_key, value in body.items():
        key = by_alias.get(raw_key)
        if key is not None:
            if key in sent:
                problems.append(f"{raw_key}: give {sent[key]} or {raw_key}, not both")
                continue
            values[key], sent[key] = value, raw_key
        elif IGNORED_FLAG.match(raw_key) and "app" in allowed:
            if not isinstance(value, bool) and value is not None:
                problems.append(f"{raw_key}: must be true or false (accepted and ignored)")
        elif raw_key == "entitlementValues" and "app" in allowed:
            if value not in (None, []):
                problems.append(f"{raw_key}: pullgate has no entitlements; leave it out or empty")
        elif raw_key == "channel_id" and "app" in allowed:
            legacy_channel = value  # older CLI releases: one channel by id
        else:
            problems.append(f"{raw_key}: unknown field")
    out = CustomerInput(values, sent, problems=problems)
    if "channels" in values:
        out.channels = _channels(values.pop("channels"), problems)
    if legacy_channel not in (None, ""):
        if not isinstance(legacy_channel, str):
            problems.append("channel_id: must be a channel id")
        elif out.channels is None:
            out.channels = [ChannelChoice(legacy_channel, True, "channel_id")]
        else:
            problems.append("channel_id: give channels or channel_id, not both")
    custom = values.get("customId")
    if "customId" in values:
        if custom in (None, ""):
            values["customId"] = None
        elif not isinstance(custom, str) or len(custom) > MAX_CUSTOM_ID:
            problems.append(f"{sent['customId']}: must be a string (at most {MAX_CUSTOM_ID} characters)")
            values["customId"] = None
    return out


def _channels(raw: Any, problems: list[str]) -> list[ChannelChoice] | None:
    """A list of channel names/ids (pullgate) or of {channel_id, pinned_channel_sequence,
    is_default_for_customer} objects (the `replicated` CLI)."""
    if raw is None:
        return None
    if not isinstance(raw, list):
        problems.append("channels: must be a list of channel names or ids")
        return None
    out = []
    for i, item in enumerate(raw):
        where = f"channels[{i}]"
        if isinstance(item, str) and item:
            out.append(ChannelChoice(item, False, where))
        elif isinstance(item, dict):
            unknown = sorted(set(item) - CHANNEL_KEYS)
            problems += [f"{where}.{k}: unknown field" for k in unknown]
            ref, default = item.get("channel_id"), item.get("is_default_for_customer", False)
            if not isinstance(ref, str) or not ref:
                problems.append(f"{where}.channel_id: required, a channel id or name")
                continue
            if item.get("pinned_channel_sequence") is not None:
                problems.append(f"{where}.pinned_channel_sequence: pullgate has no releases to pin; leave it null")
            if not isinstance(default, bool):
                problems.append(f"{where}.is_default_for_customer: must be true or false")
                default = False
            out.append(ChannelChoice(ref, default, where))
        else:
            problems.append(f"{where}: must be a channel name or id, or an object with channel_id")
    if sum(c.default for c in out) > 1:
        problems.append("channels: at most one may be is_default_for_customer")
    return out


# --- POST /customers/search (the `replicated` CLI's search by name) -----------------

SEARCH_FLAGS = {
    "include_active": ("active",),
    "include_archived": ("archived",),
    "include_inactive": ("revoked", "expired"),
}
SEARCH_TYPES = {
    "include_dev": ("dev",),
    "include_trial": ("trial",),
    "include_paid": ("prod", "paid"),
    "include_community": ("community",),
    "include_test": ("test",),
}
MAX_PAGE = 100


@dataclass
class Search:
    app: str
    offset: int
    page_size: int
    field: str | None  # name, email, customId; None: any of them
    text: str
    states: set[str]  # active, archived, revoked, expired
    types: set[str] | None  # None: every license type


def read_search(body: Mapping[str, Any]) -> tuple[Search | None, list[str]]:
    problems: list[str] = []
    known = {"app_id", "offset", "page_size", "query", "instance_preview", *SEARCH_FLAGS, *SEARCH_TYPES}
    problems += [f"{k}: unknown field" for k in sorted(set(body) - known)]
    app = body.get("app_id")
    if not isinstance(app, str) or not app:
        problems.append("app_id: required, the app id or slug")
    offset, size = body.get("offset", 0), body.get("page_size", MAX_PAGE)
    if not _whole(offset) or offset < 0:
        problems.append("offset: a whole number from 0")
    if not _whole(size) or not 1 <= size <= MAX_PAGE:
        problems.append(f"page_size: a whole number from 1 to {MAX_PAGE}")
    query = body.get("query", "")
    if not isinstance(query, str) or len(query) > 500:
        problems.append("query: must be a string, e.g. name:Acme")
        query = ""
    key, sep, text = query.partition(":")
    fields = {"name": "name", "email": "email", "customid": "customId", "custom_id": "customId"}
    search_field = None
    if sep and key.strip().lower() in fields:
        search_field, query = fields[key.strip().lower()], text
    elif sep and re.fullmatch(r"[A-Za-z_]+", key.strip()):
        problems.append(f"query: cannot search by {key.strip()!r} (name:, email: or customId:)")
    for flag in (*SEARCH_FLAGS, *SEARCH_TYPES, "instance_preview"):
        if flag in body and not isinstance(body[flag], bool):
            problems.append(f"{flag}: must be true or false")
    if problems:
        return None, problems
    # Absent state flags: active and inactive shown, archived not (as the Vendor Portal lists).
    states = {
        s for flag, members in SEARCH_FLAGS.items() if body.get(flag, flag != "include_archived") for s in members
    }
    given_types = [f for f in SEARCH_TYPES if f in body]
    types = {t for f in SEARCH_TYPES if body.get(f, True) for t in SEARCH_TYPES[f]} if given_types else None
    return Search(str(app), int(offset), int(size), search_field, query.strip().lower(), states, types), []


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
