"""Team-scoped vendor operations: what the JSON API and the web portal both call.

Every method takes the caller's Team and touches only that team's rows;
anything of another team is NotFound, indistinguishable from "does not exist".
Inputs are the API's JSON shapes (camelCase dicts); outputs are the same
shapes, ready to serialise. Secrets go in, never out: a registry's password,
secret key or service-account key is sealed on the way in and no output
carries it; a license ID is shown only at creation and in `customer(...,
with_license=True)` (the vendor's own view).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from proxy import metrics
from proxy.admin import dialect
from proxy.apierrors import Conflict, Invalid, NotFound, TooManyRequests
from proxy.egress import carries_credentials, is_ip_address, refused_destination, refused_hop, url_target
from proxy.licenses import kots
from proxy.oci.allowlist import check_patterns
from proxy.ratelimit import RateLimiter
from proxy.secrets import Keyring
from proxy.store import usage
from proxy.store.base import Conflict as StoreConflict
from proxy.store.base import Store, new_id, parse_time, to_stored_time
from proxy.store.models import App, Channel, Customer, Registry, Team
from proxy.store.readcache import StoreReadCache
from proxy.upstream.client import UpstreamClient
from proxy.upstream.endpoints import canonical_endpoint
from proxy.upstream.errors import EgressRefused
from proxy.upstream.probe import ProbeResult, probe
from proxy.upstream.providers import PROVIDERS, Provider, provider_of
from proxy.upstream.providers.base import SECRET, USERNAME, Field, problems_of

SLUG_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
HOST_RE = re.compile(r"^[A-Za-z0-9.-]+(?::\d{1,5})?$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
LICENSE_TYPES = ("prod", "paid", "trial", "dev", "community", "test")
# Validation without an image asks for a manifest that need not exist: 404
# means the registry accepted the credentials (registries that answer 401 for
# unknown repositories need `image` or `skipValidation`).
VALIDATION_IMAGE = "pullgate/credentials-check:latest"
LICENSE_ALPHABET = string.ascii_letters + string.digits
LICENSE_LENGTH = 32  # 32 characters of 62: about 190 bits
MAX_LOGS = 1000
MAX_THRESHOLD = 2**62  # a BIGINT with room to add a month of bytes to it
RESERVED_SLUGS = frozenset({"test", "logs"})  # /external_registry/test and /logs
# A license that verifies but whose licenseID another team holds gets the very answer a
# wrong signature gets: the import is no oracle of other teams' licenses.
LICENSE_NOT_ACCEPTED = (
    "license: not accepted: the signature does not verify under this app's public key,"
    " or this licenseID cannot be imported here"
)


def new_license_id() -> str:
    return "".join(secrets.choice(LICENSE_ALPHABET) for _ in range(LICENSE_LENGTH))


def new_api_token() -> str:
    return "pgt_" + secrets.token_urlsafe(32)


@dataclass
class VendorService:
    store: Store
    keyring: Keyring
    read_cache: StoreReadCache
    upstream: UpstreamClient
    # KOTS license imports per team (limits.license_imports_per_minute); shared by the API and portal.
    license_imports: RateLimiter | None = None
    # The proxy's public host (proxy.hosts[0]): the registry a channel tells customers to log in to.
    registry_domain: str | None = None

    # --- auth -------------------------------------------------------------------
    async def team_for_token(self, token: str) -> Team | None:
        if not token or len(token) > 512:
            return None
        return await self.store.team_by_token(token)

    async def team_for_token_hash(self, token_hash: str) -> Team | None:
        """The portal's sessions keep only the token's hash: deleting the token ends them."""
        row = await self.store.fetchone(
            "SELECT t.id, t.name FROM api_tokens k JOIN teams t ON t.id = k.team_id WHERE k.token_hash = ?",
            (token_hash,),
        )
        return Team(**row) if row else None

    # --- apps -------------------------------------------------------------------
    async def list_apps(self, team: Team) -> list[dict[str, Any]]:
        channels = await self.store.channels_of_team(team.id)
        return [app_json(a, [c for c in channels if c.app_id == a.id]) for a in await self.store.apps_of_team(team.id)]

    async def app(self, team: Team, key: str) -> App:
        """By slug, else by id (the `replicated` CLI puts app ids in its paths)."""
        app = await self.store.app_by_slug(key) if len(key) <= 64 else None
        if app is None or app.team_id != team.id:
            app = next((a for a in await self.store.apps_of_team(team.id) if a.id == key), None)
        if app is None:
            raise NotFound(f"no app {key[:64]!r}")
        return app

    async def app_out(self, team: Team, app: App) -> dict[str, Any]:
        return app_json(app, await self.store.channels_of_team(team.id, app.id))

    async def create_app(self, team: Team, body: Mapping[str, Any]) -> dict[str, Any]:
        problems = _unknown_keys(body, {"slug", "name", "imageAllowlist", "kotsPublicKey"})
        slug = body.get("slug")
        if slug is None and isinstance(body.get("name"), str):
            slug = await self._free_slug(body["name"])  # `replicated app create NAME` sends the name only
        if not isinstance(slug, str) or not SLUG_RE.match(slug) or len(slug) > 64:
            problems.append(
                "slug: required (or a name to derive it from); lowercase letters, digits and . _ - (at most 64)"
            )
        name = body.get("name", slug)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            problems.append("name: must be a non-empty string (at most 200 characters)")
        allowlist = body.get("imageAllowlist", [])
        problems += check_patterns(allowlist)
        key = body.get("kotsPublicKey")
        problems += _check_public_key(key)
        if problems:
            raise Invalid(problems)
        assert isinstance(slug, str)  # checked above
        try:
            app = await self.store.create_app(team.id, slug, name.strip(), allowlist, key or None)
        except StoreConflict as exc:
            raise Conflict(str(exc)) from None
        return await self.app_out(team, app)

    async def _free_slug(self, name: str) -> str | None:
        """A slug derived from an app name, with -2, -3... when taken (app slugs are global)."""
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:56] or None
        if base is None:
            return None
        for n in range(1, 100):
            slug = base if n == 1 else f"{base}-{n}"
            if await self.store.app_by_slug(slug) is None:
                return slug
        return f"{base}-{secrets.token_hex(3)}"

    async def update_app(self, team: Team, slug: str, body: Mapping[str, Any]) -> dict[str, Any]:
        app = await self.app(team, slug)
        problems = _unknown_keys(body, {"name", "imageAllowlist", "kotsPublicKey"})
        name = body.get("name", app.name)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            problems.append("name: must be a non-empty string (at most 200 characters)")
        allowlist = body.get("imageAllowlist", list(app.image_allowlist))
        problems += check_patterns(allowlist)
        key = body.get("kotsPublicKey", app.kots_public_key)
        problems += _check_public_key(key)
        if problems:
            raise Invalid(problems)
        app = replace(app, name=name.strip(), image_allowlist=tuple(allowlist), kots_public_key=key or None)
        await self.store.update_app(app)
        self.read_cache.invalidate()
        await self.store.notify("app")  # the other replicas' caches
        return await self.app_out(team, app)

    # --- release channels ---------------------------------------------------------
    async def channels(self, team: Team, app_key: str, name: str | None = None) -> list[dict[str, Any]]:
        """An app's channels; `name` keeps those whose name, slug or id it is (any case)."""
        app = await self.app(team, app_key)
        out = await self.store.channels_of_team(team.id, app.id)
        if name:
            out = [c for c in out if name.lower() in (c.name.lower(), c.slug, c.id)]
        return [self.channel_json(c) for c in out]

    async def channel(self, team: Team, app_key: str, channel_id: str) -> dict[str, Any]:
        app = await self.app(team, app_key)
        found = next((c for c in await self.store.channels_of_team(team.id, app.id) if c.id == channel_id), None)
        if found is None:
            raise NotFound(
                f"no channel with id {channel_id[:64]!r} in app {app.slug!r};"
                " find a channel by name with GET /app/{appId}/channels?channelName=NAME"
            )
        return self.channel_json(found)

    def channel_json(self, c: Channel) -> dict[str, Any]:
        """As the `replicated` CLI's KotsChannel reads it: no releases (pullgate ships none)."""
        none = {"hostname": ""}
        return {
            "id": c.id,
            "appId": c.app_id,
            "name": c.name,
            "slug": c.slug,
            "channelSlug": c.slug,
            "description": "",
            "isDefault": c.is_default,
            "isArchived": False,
            "releaseSequence": 0,
            "channelSequence": 0,
            "currentVersion": "",
            "numReleases": 0,
            "created": _iso_out(parse_time(c.created_at)),
            "replicatedRegistryDomain": self.registry_domain or "",
            "customHostNameOverrides": {
                k: dict(none) for k in ("registry", "proxy", "downloadPortal", "replicatedApp")
            },
            "chartReleases": [],
        }

    async def app_custom_hostnames(self, team: Team, app_key: str) -> dict[str, Any]:
        """The team's verified custom hostnames, where the `replicated` CLI looks for the
        registry host to show (`customer inspect`)."""
        app = await self.app(team, app_key)
        rows = [
            {
                "app_id": app.id,
                "is_default": h.is_default,
                "hostname": h.hostname,
                "created_at": _iso_out(parse_time(h.created_at)),
                "domain_verification_type": "txt",
                "domain_verification_status": h.status,
            }
            for h in await self.store.hostnames(team.id, "verified")
        ]
        return {"registry": rows, "proxy": [dict(r) for r in rows], "downloadPortal": [], "replicatedApp": []}

    # --- external registries ------------------------------------------------------
    async def list_registries(self, team: Team) -> list[dict[str, Any]]:
        apps = {a.id: a.slug for a in await self.store.apps_of_team(team.id)}
        used = await self.store.registries_last_used(team.id)
        return [registry_json(r, apps, used.get(r.slug)) for r in await self.store.registries_of_team(team.id)]

    async def registry(self, team: Team, name: str) -> Registry:
        """By slug, else by endpoint host (as `registry test HOSTNAME` passes it)."""
        regs = await self.store.registries_of_team(team.id)
        found = next((r for r in regs if r.slug == name), None)
        if found is None:
            host = canonical_endpoint(name)
            found = next((r for r in regs if canonical_endpoint(r.endpoint) == host), None)
        if found is None:
            raise NotFound(f"no external registry {name!r}")
        return found

    async def registry_json(self, team: Team, name: str) -> dict[str, Any]:
        reg = await self.registry(team, name)
        apps = {a.id: a.slug for a in await self.store.apps_of_team(team.id)}
        return registry_json(reg, apps, (await self.store.registries_last_used(team.id)).get(reg.slug))

    async def create_registry(self, team: Team, body: Mapping[str, Any]) -> dict[str, Any]:
        apps = await self.store.apps_of_team(team.id)
        spec = _registry_input(body, apps, None)
        if await self.store.registry_id(team.id, spec.slug) is not None:
            raise Conflict(f"an external registry with slug {spec.slug!r} already exists")
        reg = spec.build(new_id(), team.id, self.keyring)
        await self._check_egress(reg)
        if not spec.skip_validation:
            await self._validate(reg, spec.image)
        if await self.store.registry_id(team.id, spec.slug) is not None:  # raced with another create
            raise Conflict(f"an external registry with slug {spec.slug!r} already exists")
        await self.store.put_registry(reg)
        self.read_cache.invalidate()
        await self.store.notify("registry")  # the other replicas' caches
        return registry_json(reg, {a.id: a.slug for a in apps}, None)

    async def update_registry(self, team: Team, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Rotate credentials (or change apps, url) without deleting the registry."""
        current = await self.registry(team, name)
        apps = await self.store.apps_of_team(team.id)
        spec = _registry_input(body, apps, current)
        reg = spec.build(current.id, team.id, self.keyring)
        await self._check_egress(reg)
        # The old credentials' upstream tokens must not make a bad new secret look valid.
        self.upstream.tokens.forget_registry(current.id)
        reaches_differently = (reg.secret_sealed, reg.username, reg.url, reg.options) != (
            current.secret_sealed,
            current.username,
            current.url,
            current.options,
        )
        if not spec.skip_validation and (reaches_differently or spec.image):
            await self._validate(reg, spec.image)
        await self.store.put_registry(reg)
        self.upstream.tokens.forget_registry(current.id)
        self.read_cache.invalidate()
        await self.store.notify("registry")  # the other replicas' caches
        return registry_json(reg, {a.id: a.slug for a in apps}, None)

    async def delete_registry(self, team: Team, name: str) -> None:
        reg = await self.registry(team, name)
        await self.store.delete_registry(team.id, reg.slug)
        self.upstream.tokens.forget_registry(reg.id)
        self.read_cache.invalidate()
        await self.store.notify("registry")  # the other replicas' caches

    async def test_registry(self, team: Team, body: Mapping[str, Any]) -> ProbeResult:
        problems = _unknown_keys(body, {"endpoint", "image"})
        endpoint, image = body.get("endpoint"), body.get("image")
        if not isinstance(endpoint, str) or not endpoint:
            problems.append("endpoint: required (the registry's endpoint host or slug)")
        if not isinstance(image, str) or not image or len(image) > 512:
            problems.append("image: required, as repository[:tag|@digest]")
        if problems:
            raise Invalid(problems)
        assert isinstance(endpoint, str) and isinstance(image, str)  # checked above
        reg = await self.registry(team, endpoint)
        await self._check_egress(reg)
        return await self._probe(reg, image)

    async def _check_egress(self, reg: Registry) -> None:
        """Every destination the registry's credentials would go to must pass the egress
        policy: judged on what the names resolve to now, before any connection."""
        problems = []
        urls = [(f.api, reg.options.get(f.stored)) for f in provider_of(reg).fields if f.url]
        for key, url in (("url", reg.url), *urls):
            target = url_target(url) if url else None
            denied = await self.upstream.refusal_for(url) if url and target else None
            if target is not None and denied is not None:
                problems.append(refused_destination(key, target[0], denied.refusal, is_ip_address(target[0])))
        if problems:
            raise Invalid(problems)

    async def _probe(self, reg: Registry, image: str) -> ProbeResult:
        try:
            return await probe(self.upstream, reg, image)
        except EgressRefused as exc:  # a redirect or token realm the policy refused
            self.upstream.tokens.forget_registry(reg.id)
            raise Invalid([refused_hop(exc.refusal)]) from None

    async def _validate(self, reg: Registry, image: str | None) -> None:
        result = await self._probe(reg, image or VALIDATION_IMAGE)
        self.upstream.tokens.forget_registry(reg.id)
        if result.ok or (image is None and result.status == 404):
            return
        raise Invalid([f"credentials: the registry test failed (status {result.status}): {result.reason}"])

    # --- customers ----------------------------------------------------------------
    async def list_customers(self, team: Team, app_slug: str | None = None) -> list[dict[str, Any]]:
        app_id = (await self.app(team, app_slug)).id if app_slug else None
        channels = await self.store.customer_channels(team.id)
        return [customer_json(c, channels.get(c.id, [])) for c in await self.store.customers_of_team(team.id, app_id)]

    async def customers_page(
        self, team: Team, app_key: str, query: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of an app's customers and how many there are in all (the `replicated`
        CLI pages with currentPage until it has that many). Test licenses only with includeTest."""
        problems = _unknown_keys(query, {"currentPage", "pageSize", "includeTest"})
        page, size = query.get("currentPage", "0"), query.get("pageSize", str(dialect.MAX_PAGE))
        if not page.isdigit() or int(page) > 1_000_000:
            problems.append("currentPage: a whole number from 0")
        if not size.isdigit() or not 1 <= int(size) <= dialect.MAX_PAGE:
            problems.append(f"pageSize: a whole number from 1 to {dialect.MAX_PAGE}")
        if query.get("includeTest", "false") not in ("true", "false"):
            problems.append("includeTest: true or false")
        if problems:
            raise Invalid(problems)
        app = await self.app(team, app_key)
        every = await self.store.customers_of_team(team.id, app.id)
        if query.get("includeTest") != "true":
            every = [c for c in every if c.license_type != "test"]
        first = int(page) * int(size)
        chosen = every[first : first + int(size)]
        channels = await self.store.customer_channels(team.id)
        return [customer_json(c, channels.get(c.id, [])) for c in chosen], len(every)

    async def search_customers(self, team: Team, body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """`replicated customer ls/inspect` by name: a case-insensitive substring match."""
        search, problems = dialect.read_search(body)
        if search is None:
            raise Invalid(problems)
        app = await self.app(team, search.app)
        now = dt.datetime.now(dt.UTC)

        def state(c: Customer) -> str:
            return "expired" if c.status == "active" and c.refusal(now) == "expired" else c.status

        def matches(c: Customer) -> bool:
            fields = {"name": c.name, "email": c.email or "", "customId": c.custom_id or ""}
            texts = [fields[search.field]] if search.field else list(fields.values())
            return any(search.text in t.lower() for t in texts)

        hits = [
            c
            for c in await self.store.customers_of_team(team.id, app.id)
            if state(c) in search.states and (search.types is None or c.license_type in search.types) and matches(c)
        ]
        channels = await self.store.customer_channels(team.id)
        page = hits[search.offset : search.offset + search.page_size]
        return [customer_json(c, channels.get(c.id, [])) for c in page], len(hits)

    async def customer_obj(self, team: Team, customer_id: str) -> Customer:
        c = await self.store.customer_by_id(customer_id) if len(customer_id) <= 64 else None
        if c is None or c.team_id != team.id:
            raise NotFound(f"no customer {customer_id[:64]!r}")
        return c

    async def _out(self, team: Team, customer_id: str) -> dict[str, Any]:
        c = await self.customer_obj(team, customer_id)
        return customer_json(c, (await self.store.customer_channels(team.id, c.id)).get(c.id, []))

    async def customer(self, team: Team, customer_id: str, with_license: bool = False) -> dict[str, Any]:
        out = await self._out(team, customer_id)
        if with_license:
            sealed = await self.store.sealed_license_of(out["id"])
            _show_license(out, self.keyring.open(sealed, f"customer:{out['id']}") if sealed else None)
        return out

    async def create_customer(self, team: Team, body: Mapping[str, Any]) -> dict[str, Any]:
        """pullgate's shape (appSlug, licenseType, expiresAt) or the `replicated` CLI's
        (app_id, type, expires_at, custom_id, channels, is_* flags): see proxy.admin.dialect."""
        given = dialect.read_customer(body, set(dialect.ALIASES))
        problems = given.problems
        checks: list[str] = []
        name, email, expires, ltype = _customer_fields(given.values, checks, None)
        threshold = threshold_in(given.values, checks)
        app_key = given.values.get("app")
        app = None
        if not isinstance(app_key, str) or not app_key:
            problems.append("appSlug: required (or app_id, as the replicated CLI sends it)")
        else:
            try:
                app = await self.app(team, app_key)
            except NotFound:
                checks.append(f"app: no app {app_key[:64]!r}")
        channels = await self._channel_links(team, app, given.channels, checks) if app else None
        problems += given.rename(checks)
        if problems or app is None:
            raise Invalid(problems)
        license_id = new_license_id()
        cid = await self.store.put_customer(
            team_id=team.id,
            app_id=app.id,
            name=name,
            email=email,
            license_id=license_id,
            seal=lambda value, cid: self.keyring.seal(value, f"customer:{cid}"),
            license_type=ltype,
            expires_at=expires,
            custom_id=given.values.get("customId"),
            channels=channels or None,
        )
        if threshold is not None:
            await usage.set_threshold(self.store, cid, threshold)
        out = await self._out(team, cid)
        _show_license(out, license_id)
        return out

    async def update_customer(self, team: Team, customer_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        c = await self.customer_obj(team, customer_id)
        given = dialect.read_customer(body, set(dialect.ALIASES) - {"app"})
        checks: list[str] = []
        name, email, expires, ltype = _customer_fields(given.values, checks, c)
        threshold = threshold_in(given.values, checks)
        app = await self.app(team, c.app_id)
        channels = await self._channel_links(team, app, given.channels, checks)
        problems = given.problems + given.rename(checks)
        if problems:
            raise Invalid(problems)
        await self.store.update_customer(
            c.id,
            name=name,
            email=email,
            license_type=ltype,
            expires_at=expires,
            custom_id=given.values["customId"] if "customId" in given.values else c.custom_id,
            channels=channels,
        )
        if THRESHOLD in given.values:
            await usage.set_threshold(self.store, c.id, threshold)
        self.read_cache.invalidate()
        await self.store.notify("customer")  # the other replicas' caches
        return await self._out(team, c.id)

    async def _channel_links(
        self, team: Team, app: App, chosen: list[dialect.ChannelChoice] | None, problems: list[str]
    ) -> list[tuple[str, bool]] | None:
        """(channel id, is default) pairs for the named channels; None when none were named."""
        if chosen is None:
            return None
        known = await self.store.channels_of_team(team.id, app.id)
        links: dict[str, bool] = {}
        for choice in chosen:
            ref = choice.ref.lower()
            found = next((c for c in known if ref in (c.id, c.slug, c.name.lower())), None)
            if found is None:
                problems.append(f"{choice.sent_as}: no channel {choice.ref[:64]!r} in app {app.slug!r}")
            else:
                links[found.id] = links.get(found.id, False) or choice.default
        if not links:
            default = next((c for c in known if c.is_default), known[0] if known else None)
            return [(default.id, True)] if default else []
        if not any(links.values()):
            links[next(iter(links))] = True  # the first named channel, as the CLI defaults
        return list(links.items())

    async def set_customer_status(self, team: Team, customer_id: str, action: str) -> dict[str, Any]:
        status = {"revoke": "revoked", "archive": "archived", "restore": "active"}[action]
        c = await self.customer_obj(team, customer_id)
        await self.store.set_customer_status(c.id, status)
        self.read_cache.invalidate()  # this process's caches; the others hear the NOTIFY below
        await self.store.notify("customer")  # the other replicas' caches
        return await self._out(team, c.id)

    async def import_license(self, team: Team, text: str) -> tuple[dict[str, Any], bool]:
        """A signed KOTS license becomes (or updates) a customer. Returns (customer, created)."""
        if self.license_imports is not None:
            wait = self.license_imports.take(team.id)
            if wait is not None:
                metrics.LICENSE_IMPORTS_THROTTLED.inc()
                retry = 3600 if math.isinf(wait) else math.ceil(wait)
                raise TooManyRequests("too many license imports by this team; retry later", retry)
        try:
            doc = kots.read(text)
            slug = kots.app_slug(doc)
        except kots.LicenseError as exc:
            raise Invalid([f"license: {exc}"]) from None
        app = await self.store.app_by_slug(slug)
        if app is None or app.team_id != team.id:
            raise Invalid([f"license: no app {slug!r} in this team"])
        if not app.kots_public_key:
            raise Invalid([f"license: app {slug!r} has no kotsPublicKey to verify licenses with"])
        try:
            lic = kots.verify(doc, app.kots_public_key)
        except kots.LicenseError as exc:
            if str(exc).startswith("the license signature does not verify"):
                raise Invalid([LICENSE_NOT_ACCEPTED]) from None
            raise Invalid([f"license: {exc}"]) from None
        if len(lic.license_id) < 16:
            raise Invalid(["license: licenseID is shorter than 16 characters"])
        problems: list[str] = []
        if lic.license_type not in LICENSE_TYPES:
            problems.append(f"license: licenseType must be one of {', '.join(LICENSE_TYPES)}")
        if problems:
            raise Invalid(problems)
        existing = await self.store.customer_by_license(lic.license_id)
        if existing is not None and existing.team_id != team.id:
            raise Invalid([LICENSE_NOT_ACCEPTED])
        cid = await self.store.put_customer(
            team_id=team.id,
            app_id=app.id,
            name=lic.customer_name,
            email=lic.customer_email,
            license_id=lic.license_id,
            seal=lambda value, cid: self.keyring.seal(value, f"customer:{cid}"),
            license_type=lic.license_type,
            expires_at=lic.expires_at,
        )
        self.read_cache.invalidate()
        await self.store.notify("customer")  # the other replicas' caches
        return await self._out(team, cid), existing is None

    # --- pull logs ----------------------------------------------------------------
    async def pull_log_filter(
        self, team: Team, query: Mapping[str, str], max_limit: int | None = MAX_LOGS
    ) -> PullLogFilter:
        """The checked filters of a pull-log query; `max_limit` None: no bound, no default (CSV)."""
        problems = _unknown_keys(query, {"customer", "registry", "endpoint", "since", "until", "limit"})
        since = _query_time(query.get("since"), "since", problems)
        until = _query_time(query.get("until"), "until", problems)
        limit = 500 if max_limit is not None else None
        if "limit" in query:
            raw = query["limit"]
            if not raw.isdigit() or not 1 <= int(raw) <= (max_limit or 2**31):
                problems.append(f"limit: a whole number from 1 to {max_limit or 2**31}")
            else:
                limit = int(raw)
        if problems:
            raise Invalid(problems)
        customer_id = (await self.customer_obj(team, query["customer"])).id if query.get("customer") else None
        name = query.get("registry") or query.get("endpoint")
        registry_slug = (await self.registry(team, name)).slug if name else None
        return PullLogFilter(customer_id, registry_slug, since, until, limit)

    async def pull_logs(self, team: Team, query: Mapping[str, str]) -> list[dict[str, Any]]:
        f = await self.pull_log_filter(team, query)
        rows = await self.store.pull_logs(
            team.id,
            customer_id=f.customer_id,
            registry_slug=f.registry_slug,
            since=f.since,
            until=f.until,
            limit=f.limit or 500,
        )
        return [pull_log_json(r) for r in rows]


@dataclass(frozen=True)
class PullLogFilter:
    customer_id: str | None
    registry_slug: str | None
    since: str | None
    until: str | None
    limit: int | None


# --- shapes ---------------------------------------------------------------------


def app_json(app: App, channels: list[Channel]) -> dict[str, Any]:
    return {
        "id": app.id,
        "slug": app.slug,
        "name": app.name,
        "imageAllowlist": list(app.image_allowlist),
        "kotsPublicKey": app.kots_public_key,
        "channels": [channel_ref(c) for c in channels],
    }


def channel_ref(c: Channel, customer_default: bool | None = None) -> dict[str, Any]:
    """A channel as the `replicated` CLI's types.Channel reads it (in apps and customers)."""
    out: dict[str, Any] = {
        "id": c.id,
        "name": c.name,
        "slug": c.slug,
        "description": "",
        "releaseSequence": 0,
        "releaseLabel": "",
        "isArchived": False,
        "isDefault": c.is_default,
    }
    if customer_default is not None:
        out["isDefaultForCustomer"] = customer_default
    return out


def auth_type(reg: Registry) -> str:
    if reg.provider == "ecr":
        return "accesskey"
    if reg.username == "_json_key":
        return "serviceaccount"
    if reg.secret_sealed is None:
        return "anonymous"
    return "token" if reg.username == "oauth2accesstoken" else "password"


def registry_json(reg: Registry, app_slugs: Mapping[str, str], last_used: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "slug": reg.slug,
        "provider": reg.provider,
        "endpoint": reg.endpoint,
        "url": reg.url,
        "insecure": reg.insecure,
        "authType": auth_type(reg),
        "username": _account(reg),
        "appIds": sorted(reg.app_ids),
        "appSlugs": sorted(app_slugs.get(a, a) for a in reg.app_ids),
        "allowAnonymous": reg.allow_anonymous,
        "anonymousRepositories": list(reg.anonymous_repositories),
        "lastUsedAt": last_used,
    }
    for f in shown_destinations(reg.provider):
        if reg.options.get(f.stored):
            out[f.api] = reg.options[f.stored]
    return out


def shown_destinations(provider: str) -> list[Field]:
    """The provider's destination options an answer shows (never a secret)."""
    return [f for f in provider_of(provider).fields if f.destination and f.in_api and not f.secret]


def _account(reg: Registry) -> str | None:
    """Who the credentials are: the provider's first plain credential field (ECR: the access key id)."""
    f = next((f for f in provider_of(reg).fields if not (f.secret or f.destination) and f.in_api), None)
    if f is None or f.stored == USERNAME:
        return reg.username
    return reg.options.get(f.stored)


def _iso_out(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z") if t else None


def customer_json(c: Customer, channels: list[tuple[Channel, bool]]) -> dict[str, Any]:
    """Both spellings where they differ: licenseType/type, for pullgate and the `replicated` CLI."""
    return {
        "id": c.id,
        "name": c.name,
        "email": c.email,
        "appSlug": c.app_slug,
        "appId": c.app_id,
        "licenseType": c.license_type,
        "type": c.license_type,
        "expiresAt": _iso_out(c.expires_at),
        "status": c.status,
        "createdAt": c.created_at,
        "customId": c.custom_id,
        "channels": [channel_ref(ch, default) for ch, default in channels],
        THRESHOLD: c.egress_threshold_bytes,
    }


def _show_license(out: dict[str, Any], license_id: str | None) -> None:
    """The vendor's own views only: licenseId, and installationId as the `replicated` CLI names it."""
    out["licenseId"] = license_id
    out["installationId"] = license_id


def pull_log_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """Each value under pullgate's name and the `replicated` CLI's (createdAt, statusCode, isSuccess)."""
    return {
        "time": row["time"],
        "createdAt": row["time"],
        "statusCode": row["status"],
        "isSuccess": bool(row["success"]),
        "customerId": row["customer_id"],
        "customerName": row["customer_name"],
        "appSlug": row["app_slug"],
        "registry": row["registry_slug"],
        "action": row["action"],
        "image": row["image"],
        "reference": row["reference"],
        "status": row["status"],
        "success": bool(row["success"]),
        "bytes": row["bytes"],
    }


# --- input checks ---------------------------------------------------------------


def _unknown_keys(body: Mapping[str, Any], known: set[str]) -> list[str]:
    return [f"{k}: unknown field" for k in sorted(set(body) - known)]


THRESHOLD = "egressThresholdBytes"


def threshold_in(body: Mapping[str, Any], problems: list[str]) -> int | None:
    """`egressThresholdBytes`: a whole number of bytes per month, or null for none."""
    raw = body.get(THRESHOLD)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_THRESHOLD:
        problems.append(f"{THRESHOLD}: a whole number of bytes per month (at least 1), or null for none")
        return None
    return raw


def _check_public_key(key: Any) -> list[str]:
    if key is None or key == "":
        return []
    if not isinstance(key, str):
        return ["kotsPublicKey: must be a PEM string"]
    try:
        kots.load_public_key(key)
    except kots.LicenseError as exc:
        return [f"kotsPublicKey: {exc}"]
    return []


def _query_time(raw: str | None, key: str, problems: list[str]) -> str | None:
    if raw is None or raw == "":
        return None
    try:
        t = parse_time(raw)
    except ValueError:
        problems.append(f"{key}: must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z")
        return None
    return to_stored_time(t) if t else None


def _customer_fields(
    body: Mapping[str, Any], problems: list[str], current: Customer | None
) -> tuple[str, str | None, str | None, str]:
    name = body.get("name", current.name if current else None)
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        problems.append("name: required, a non-empty string (at most 200 characters)")
        name = ""
    email = body.get("email", current.email if current else None)
    if email in ("", None):
        email = None
    elif not isinstance(email, str) or not EMAIL_RE.match(email) or len(email) > 254:
        problems.append("email: must be an email address")
        email = None
    ltype = body.get("licenseType", current.license_type if current else "prod")
    if ltype not in LICENSE_TYPES:
        problems.append(f"licenseType: one of {', '.join(LICENSE_TYPES)}")
        ltype = "prod"
    expires: str | None
    if "expiresAt" in body:
        raw = body["expiresAt"]
        expires = None
        if raw not in (None, ""):
            try:
                t = parse_time(raw) if isinstance(raw, str) else None
            except ValueError:
                t = None
            if t is None:
                problems.append("expiresAt: must be an ISO 8601 time (e.g. 2027-01-01T00:00:00Z) or null")
            else:
                expires = _iso_out(t)
    else:
        expires = _iso_out(current.expires_at) if current else None
    return name.strip(), email, expires, ltype


@dataclass
class _RegistryInput:
    provider: str
    endpoint: str
    slug: str
    url: str
    insecure: bool
    username: str | None
    secret: str | None  # None: keep the current sealed secret (update without new credentials)
    keep_sealed: str | None
    options: dict[str, str]
    app_ids: tuple[str, ...]
    allow_anonymous: bool
    anonymous_repositories: tuple[str, ...]
    skip_validation: bool
    image: str | None

    def build(self, rid: str, team_id: str, keyring: Keyring) -> Registry:
        sealed = keyring.seal(self.secret, rid) if self.secret else self.keep_sealed
        return Registry(
            id=rid,
            team_id=team_id,
            slug=self.slug,
            provider=self.provider,
            endpoint=self.endpoint,
            url=self.url,
            insecure=self.insecure,
            username=self.username,
            secret_sealed=sealed,
            allow_anonymous=self.allow_anonymous,
            options=self.options,
            app_ids=self.app_ids,
            anonymous_repositories=self.anonymous_repositories,
        )


# The generic request fields; each provider adds its declared ones (proxy.upstream.providers).
_GENERIC_REGISTRY_KEYS = frozenset(
    {
        *("provider", "endpoint", "slug", "authType", "appIds", "skipValidation", "url", "insecure", "image"),
        *("allowAnonymous", "anonymousRepositories"),
    }
)


def registry_keys() -> set[str]:
    """Every field a registry request may carry: the generic ones and every provider's."""
    declared = {name for p in PROVIDERS.values() for f in p.fields if f.in_api for name in (f.api, *f.aliases)}
    return set(_GENERIC_REGISTRY_KEYS) | declared


def _registry_input(body: Mapping[str, Any], apps: list[App], current: Registry | None) -> _RegistryInput:
    """Check a create (current None) or update request; every problem is listed."""
    problems = _unknown_keys(body, registry_keys())

    def opt_str(key: str, limit: int = 4096) -> str | None:
        v = body.get(key)
        if v is None or v == "":
            return None
        if not isinstance(v, str) or len(v) > limit:
            problems.append(f"{key}: must be a string (at most {limit} characters)")
            return None
        return v

    def opt_bool(key: str, default: bool) -> bool:
        v = body.get(key, default)
        if not isinstance(v, bool):
            problems.append(f"{key}: must be true or false")
            return default
        return v

    provider, endpoint, slug = _identity(body, current, problems, opt_str)

    insecure = opt_bool("insecure", current.insecure if current else False)
    url = opt_str("url", 2048)
    if url is None:
        url = current.url if current else provider_of(provider).default_url(endpoint)
    elif url.startswith("http://") and not insecure:
        problems.append("url: an http:// url needs insecure: true")
    elif not url.startswith(("http://", "https://")):
        problems.append("url: must start with https:// (or http:// with insecure)")
    problems += _credentials_in("url", url)
    skip = opt_bool("skipValidation", False)
    image = opt_str("image", 512)

    kind = provider_of(provider)
    username, secret, options = _credentials(kind, body, current, opt_str)
    has_secret = secret is not None or (current is not None and current.secret_sealed is not None)
    values = {**options, USERNAME: username, SECRET: secret}
    problems += problems_of(tuple(f for f in kind.fields if f.in_api), values, has_secret, lambda f: f.api)
    user = kind.field(USERNAME)
    if user is not None and not user.required and (username is None) == has_secret:
        problems.append("username and password: give both, or neither for anonymous access")
    for f in kind.fields:
        if f.url:
            problems += _credentials_in(f.api, options.get(f.stored))
    if current is not None and secret is None and not problems:
        problems += _destination_changes(current, url.rstrip("/"), insecure, options)
    if not problems:
        # The provider's own rules (endpoint shapes), by field, never quoting a secret.
        api_names = {f.config: f.api for f in kind.fields if f.config and f.in_api}
        for problem in kind.validate(endpoint, username, secret, options, secret_stored=has_secret):
            field, _, rest = problem.partition(":")
            problems.append(f"{api_names.get(field, field)}:{rest}")
    auth = body.get("authType")
    if auth is not None and auth not in ("password", "token", "accesskey", "serviceaccount", "anonymous"):
        problems.append("authType: one of password, token, accesskey, serviceaccount, anonymous")

    app_ids = _app_ids(body, apps, current, problems)
    # Off by default; an update without the field keeps the current setting.
    anonymous = body.get("allowAnonymous", current.allow_anonymous if current else False)
    if not isinstance(anonymous, bool):
        problems.append("allowAnonymous: must be true or false")
        anonymous = False
    anonymous_repos = body.get("anonymousRepositories", list(current.anonymous_repositories) if current else [])
    problems += check_patterns(anonymous_repos, "anonymousRepositories")
    if problems:
        raise Invalid(problems)
    return _RegistryInput(
        provider=provider,
        endpoint=endpoint,
        slug=slug,
        url=url.rstrip("/"),
        insecure=insecure,
        username=username,
        secret=secret,
        keep_sealed=current.secret_sealed if current else None,
        options=options,
        app_ids=app_ids,
        allow_anonymous=anonymous,
        anonymous_repositories=tuple(anonymous_repos) if isinstance(anonymous_repos, list) else (),
        skip_validation=skip,
        image=image,
    )


def _identity(
    body: Mapping[str, Any], current: Registry | None, problems: list[str], opt_str: Callable[[str, int], str | None]
) -> tuple[str, str, str]:
    """Provider, endpoint and slug: chosen at creation (with the provider's default
    endpoint), fixed afterwards."""
    if current is not None:
        for key in ("provider", "endpoint", "slug"):
            if key in body and body[key] != getattr(current, key):
                problems.append(f"{key}: cannot be changed (remove and add the registry instead)")
        return current.provider, current.endpoint, current.slug
    provider = body.get("provider")
    if provider not in PROVIDERS:
        problems.append(f"provider: required, one of {', '.join(PROVIDERS)}")
        provider = "other"
    endpoint = opt_str("endpoint", 255) or provider_of(provider).default_endpoint
    if endpoint is None:
        problems.append("endpoint: required for this provider (the registry host, e.g. registry.example.com)")
        endpoint = ""
    elif not HOST_RE.match(endpoint):
        problems.append("endpoint: must be a host name (with an optional :port), no scheme or path")
    derived = re.sub(r"[^a-z0-9._-]+", "-", endpoint.lower()).strip("-._")
    slug = opt_str("slug", 255) or derived
    if slug == endpoint and not SLUG_RE.match(slug):
        slug = derived  # `replicated registry add` without --name sends the endpoint (host:port) as the slug
    if slug and (not SLUG_RE.match(slug) or len(slug) > 64):
        problems.append("slug: lowercase letters, digits and . _ - (at most 64)")
    elif slug in RESERVED_SLUGS:
        problems.append(f"slug: {slug!r} is reserved (it names an API path)")
    return provider, endpoint, slug


def _app_ids(
    body: Mapping[str, Any], apps: list[App], current: Registry | None, problems: list[str]
) -> tuple[str, ...]:
    """The apps that may use it, by id or slug; an update without the field keeps them."""
    if "appIds" not in body:
        return current.app_ids if current else ()
    raw = body["appIds"]
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        problems.append("appIds: must be a list of app ids or slugs")
        return current.app_ids if current else ()
    by_key = {a.id: a.id for a in apps} | {a.slug: a.id for a in apps}
    unknown = [a for a in raw if a not in by_key]
    if unknown:
        problems.append(f"appIds: unknown app(s) {', '.join(repr(u[:64]) for u in unknown)}")
    return tuple(sorted({by_key[a] for a in raw if a in by_key}))


def _credentials(
    kind: Provider, body: Mapping[str, Any], current: Registry | None, opt_str: Callable[[str, int], str | None]
) -> tuple[str | None, str | None, dict[str, str]]:
    """The request's username, new secret (None: keep the stored one) and options, by
    the provider's declared fields; what an update leaves out stays as it was."""
    username = current.username if current is not None and kind.field(USERNAME) is not None else None
    secret = None
    options: dict[str, str] = dict(current.options) if current else {}
    for f in kind.fields:
        if not f.in_api:
            continue
        value = next((v for v in (opt_str(n, f.max_length) for n in (f.api, *f.aliases)) if v is not None), None)
        if value is None:
            continue
        if f.stored == SECRET:
            secret = value  # a later secret field (serviceAccountKey) wins over an earlier (password)
        elif f.stored == USERNAME:
            username = value
        else:
            options[f.stored] = value
        for stored, implied in f.implies:
            username = implied if stored == USERNAME else username
    return username, secret, options


def _credentials_in(key: str, url: str | None) -> list[str]:
    """A url is stored and shown as typed: one carrying a user or password is refused, unquoted."""
    try:
        credentials = carries_credentials(url) if url else False
    except ValueError:
        return [f"{key}: not a valid URL"]
    if credentials:
        return [f"{key}: must not carry credentials (user:password@); give them as the registry's secret fields"]
    return []


def _secret_field(reg: Registry) -> str:
    """The API name of the field that gives this registry's stored secret again."""
    secrets_ = [f for f in provider_of(reg).fields if f.stored == SECRET and f.in_api]
    for f in reversed(secrets_):
        if f.implies and all(reg.username == v for k, v in f.implies if k == USERNAME):
            return f.api
    return next((f.api for f in secrets_ if not f.implies), "password")


def _destination_changes(current: Registry, url: str, insecure: bool, options: Mapping[str, str]) -> list[str]:
    """A stored secret is never sent to a destination its owner did not type it for.

    An update that changes where the registry is reached without giving the secret
    again is refused, one problem per changed field, naming the secret to give.
    """
    if current.secret_sealed is None:
        return []  # anonymous: nothing stored to replay
    changed = []
    if url != current.url.rstrip("/"):
        changed.append("url")
    if insecure != current.insecure:
        changed.append("insecure")
    destinations = [f for f in provider_of(current).fields if f.destination]
    changed += [f.api for f in destinations if options.get(f.stored) != current.options.get(f.stored)]
    secret = _secret_field(current)
    return [
        f"{name}: changing where the registry is reached requires giving the secret again ({secret}); "
        "the stored secret is only ever sent where it was given for"
        for name in changed
    ]
