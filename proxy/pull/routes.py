"""The proxy listener: /v2/, /v2/token and the pull routes.

A pull request goes: path grammar -> client auth (license) -> registry
resolution (no I/O) -> upstream request (its own auth) -> relay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from proxy import metrics
from proxy.auth.anonymous import throttle
from proxy.auth.endpoint import TokenEndpoint
from proxy.auth.gate import Gate, authorize_anonymous, authorize_catalog
from proxy.context import HOST_TEAM, ctx
from proxy.oci.allowlist import allowed
from proxy.oci.digest import MAX_MANIFEST, digest_of, is_digest, manifest_digest_problem
from proxy.oci.errors import OCICode, OCIError, PullgateCode
from proxy.oci.grammar import MANIFEST_TYPES, Route, check_page_size, decode_path, parse_route, split_proxy_name
from proxy.oci.names import is_anonymous
from proxy.pull.anonymous import anonymous_allows, resolve_anonymous
from proxy.pull.cached import CachedPulls
from proxy.pull.limits import SLOT_KEY, StreamSlots
from proxy.pull.relay import Pace, StreamAborted, abort_connection, passed_headers, relay, upstream_error
from proxy.pull.resolve import resolve
from proxy.ratelimit import RateLimiter
from proxy.settings import LimitsSection
from proxy.store.models import Customer, Registry
from proxy.store.readcache import StoreReadCache
from proxy.upstream.client import UpstreamClient
from proxy.upstream.errors import UpstreamError

log = logging.getLogger("pullgate.oci")

READ_METHODS = ("GET", "HEAD")
MAX_TAGS_BODY = 8 * 1024 * 1024
_RANGE_RE = re.compile(r"^bytes=(?:[0-9]{1,19}-[0-9]{0,19}|-[0-9]{1,19})\Z")  # ASCII digits only
_LINK_RE = re.compile(r"<([^>]*)>")
_QUERY_KEYS = {"tags": ("n", "last"), "referrers": ("artifactType",)}

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


class OCIRoutes:
    slots: StreamSlots | None = None  # concurrent bodies per license and address (proxy.pull.limits)
    cached: CachedPulls | None = None  # the pull-through cache, when it is on (proxy.pull.cached)

    def __init__(
        self,
        gate: Gate,
        read_cache: StoreReadCache,
        upstream: UpstreamClient,
        chunk_size: int,
        idle_timeout: float,
        limiter: RateLimiter | None = None,
        limits: LimitsSection | None = None,
    ) -> None:
        self.limits = limits or LimitsSection()
        self.pace = Pace(self.limits.min_stream_rate, self.limits.min_stream_window)
        self.idle_timeout = idle_timeout
        self.limiter = limiter
        self.gate = gate
        self.read_cache = read_cache
        self.upstream = upstream
        self.chunk_size = chunk_size
        self.tokens = TokenEndpoint(gate, limiter)
        self.tokens.on_customer = _note_token_customer

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", "/v2/", self.base)
        app.router.add_route("*", "/v2/token", self.token)
        app.router.add_route("*", "/v2/_catalog", self.catalog)
        app.router.add_route("*", "/v2/{tail:.+}", self.pull)

    async def base(self, request: web.Request) -> web.Response:
        ctx(request).route = "base"
        _reads_only(request)
        await self.gate.authorize(request, None)
        return web.json_response({}, headers=API_VERSION)

    async def token(self, request: web.Request) -> web.Response:
        c = ctx(request)
        c.route, c.action = "token", "auth"
        if request.method == "POST":
            await self._read_form_in_time(request)
        return await self.tokens.handle(request)

    async def _read_form_in_time(self, request: web.Request) -> None:
        """The token form is the one body the proxy reads: like headers, it must arrive within
        `limits.header_timeout`, or a client trickling it would hold its connection for ever."""
        try:
            async with asyncio.timeout(self.limits.header_timeout):
                await request.read()  # kept by aiohttp: the form is parsed from it
        except TimeoutError:
            metrics.CONNECTIONS_REFUSED.labels("body_timeout").inc()
            ctx(request).aborted = "body_timeout"  # our cut, not the client leaving: logged as 408
            abort_connection(request)
            raise OCIError(PullgateCode.REQUEST_TIMEOUT, "the request body did not arrive in time") from None

    async def pull(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._pull(request)
        finally:
            slot = request.pop(SLOT_KEY, None)
            if slot is not None:
                slot.release()  # the body is done: sent, aborted, or the client left

    def _hold_stream_slot(self, request: web.Request, route: Route, registry: Registry) -> None:
        """Manifest and blob bodies hold a slot of their license and address (429 when full),
        taken before the upstream request so a refused one costs the upstream nothing."""
        if self.slots is None or request.method != "GET" or route.kind not in ("manifests", "blobs"):
            return
        address = self.gate.proxies.client_address(request)
        # The license's share of this registry is counted later, only for a body the upstream sends.
        request[SLOT_KEY] = self.slots.acquire(ctx(request).customer_id, address)

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        c = ctx(request)
        _reads_only(request)
        route = parse_route(decode_path(request.raw_path))
        c.route = route.kind
        c.action = "HEAD" if request.method == "HEAD" else _ACTIONS.get(route.kind, route.kind)
        c.reference = route.reference
        if is_anonymous(route.name):
            registry, repo = await self._anonymous(request, route)
        else:
            registry, repo = await self._licensed(request, route)
        c.registry, c.image = registry.slug, repo
        self._hold_stream_slot(request, route, registry)
        path = _upstream_path(route, repo, request)
        headers = _upstream_headers(request, route)
        if self.cached is not None:  # after the license and allowlist checks above, always
            answer = await self.cached.answer(request, route, registry, repo, headers, API_VERSION)
            if answer is not None:
                return answer
        if (slot := request.get(SLOT_KEY)) is not None:
            slot.share(registry.id)
        try:
            async with self.upstream.request(
                registry, request.method, path, headers, scope=f"repository:{repo}:pull"
            ) as upstream:
                return await self._answer(request, upstream, route, registry, repo, "Range" in headers)
        except UpstreamError as exc:
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            raise OCIError(exc.code, exc.message, headers=retry) from None

    async def _answer(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        route: Route,
        registry: Registry,
        repo: str,
        ranged: bool,
    ) -> web.StreamResponse:
        c = ctx(request)
        metrics.observe_ratelimit(registry.slug, upstream.headers.get("RateLimit-Remaining"))
        if upstream.status not in (200, 206, 304):
            raise await upstream_error(upstream, route.kind, registry.slug)
        if upstream.status == 206 and not ranged:
            # Only a whole body can be checked against its digest: a part nobody asked for is refused.
            raise OCIError(PullgateCode.UPSTREAM_ERROR, f"registry {registry.slug!r} sent a part, not the whole")
        if route.kind == "tags" and request.method == "GET":
            return await self._tags(request, upstream, route.name, repo)
        extra = _rewrite_link(upstream, repo, route.name) | API_VERSION
        if route.kind == "manifests" and request.method == "GET" and upstream.status == 200:
            manifest = await self._manifest(request, upstream, route, registry.slug, extra)
            if self.cached is not None:
                await self.cached.keep_manifest(request, registry, repo, route.reference, manifest)
            return manifest
        # Only a whole blob can be checked against its digest; a 206 range is relayed as is.
        verify = route.reference if route.kind == "blobs" and upstream.status == 200 else None
        try:
            resp, c.bytes_sent = await relay(
                request, upstream, self.chunk_size, extra, self.idle_timeout, verify, self.pace
            )
        except StreamAborted as exc:
            c.bytes_sent, c.aborted = exc.sent, exc.reason
            upstream.close()  # drop the connection: the body is not fully read
            if exc.reason == "digest":
                _digest_mismatch(registry.slug, "blob", route.reference, repo)
            elif exc.reason == "slow":
                log.info("client dropped: read slower than limits.min_stream_rate (%s)", registry.slug)
            return exc.response
        return resp

    async def _manifest(
        self, request: web.Request, upstream: aiohttp.ClientResponse, route: Route, slug: str, extra: dict[str, str]
    ) -> web.Response:
        """Manifests are small: read whole, checked against the digest asked for (or the one
        the upstream announced for a tag) before the first byte goes out."""
        try:
            # A few MiB at most: a registry that trickles it is cut off, not waited on for ever.
            async with asyncio.timeout(self.idle_timeout):
                body = await _read_manifest(upstream, slug)
        except TimeoutError:
            upstream.close()
            raise OCIError(PullgateCode.UPSTREAM_TIMEOUT, f"registry {slug!r} sends its manifest too slowly") from None
        except OCIError:
            upstream.close()  # the rest of an oversize or broken body is not worth reading
            raise
        requested = route.reference if is_digest(route.reference) else None
        announced = upstream.headers.get("Docker-Content-Digest")
        problem = manifest_digest_problem(body, requested, announced)
        if problem is not None:
            _digest_mismatch(slug, "manifest", requested or announced or "-", ctx(request).image)
            raise OCIError(PullgateCode.UPSTREAM_ERROR, f"registry {slug!r} sent a bad manifest: {problem}")
        headers = passed_headers(upstream) | extra
        headers.pop("Content-Length", None)  # ours: the length of the bytes we hold
        headers["Docker-Content-Digest"] = requested or announced or digest_of(body)
        ctx(request).bytes_sent = len(body)
        return web.Response(status=200, body=body, headers=headers)

    async def _licensed(self, request: web.Request, route: Route) -> tuple[Registry, str]:
        """`proxy/<app>/<upstream>/<repo>`: the license's app, its registries, its allowlist."""
        c = ctx(request)
        pname = split_proxy_name(route.name)
        customer = await self.gate.authorize(request, pname)
        c.note(customer)
        app = await self.read_cache.app(pname.app)
        if app is None or app.id != customer.app_id:
            raise OCIError(OCICode.NAME_UNKNOWN, "repository name not known to registry")
        registry, repo = resolve(await self.read_cache.registries_for(app), pname, request.query.get("ns"))
        # Before any upstream I/O; refused exactly like an unknown name (see allowlist.py).
        if not allowed(app.image_allowlist, repo):
            raise OCIError(OCICode.NAME_UNKNOWN, "repository name not known to registry", detail={"name": pname.full})
        return registry, repo

    async def _anonymous(self, request: web.Request, route: Route) -> tuple[Registry, str]:
        """`anonymous/<upstream>/<repo>`: only registries that allow it; rate-limited per address."""
        if self.limiter is not None:
            throttle(self.limiter, self.gate.proxies.client_address(request))
        customer = await authorize_anonymous(self.gate, request, route.name)
        if customer is not None:
            ctx(request).note(customer)
        registries = await self.read_cache.anonymous_registries(request.get(HOST_TEAM))
        registry, repo = resolve_anonymous(registries, route.name)
        # Before any upstream I/O; refused exactly like an unknown name (see proxy.pull.anonymous).
        if not anonymous_allows(registry, await self.read_cache.team_apps(registry.team_id), repo):
            raise OCIError(OCICode.NAME_UNKNOWN, "repository name not known to registry", detail={"name": route.name})
        return registry, repo

    async def catalog(self, request: web.Request) -> web.Response:
        """Harbor and Nexus mirrors list repositories: the app's allowlisted names (when it
        has one registry) and the repositories its customers have pulled."""
        c = ctx(request)
        c.route, c.action = "catalog", "catalog"
        _reads_only(request)
        customer = await authorize_catalog(self.gate, request)
        c.note(customer)
        app = await self.read_cache.app(customer.app_slug)
        if app is None:
            raise OCIError(OCICode.NAME_UNKNOWN, "no such app")
        names = {f"proxy/{app.slug}/{slug}/{image}" for slug, image in await self.read_cache.pulled(app)}
        registries = await self.read_cache.registries_for(app)
        if len(registries) == 1:
            literal = [p for p in app.image_allowlist if not any(ch in p for ch in "*?[")]
            names |= {f"proxy/{app.slug}/{registries[0].slug}/{p}" for p in literal}
        n = request.query.get("n")
        check_page_size(n)
        page, link = paginate(sorted(names), n, request.query.get("last"), "/v2/_catalog")
        return web.json_response({"repositories": page}, headers=API_VERSION | ({"Link": link} if link else {}))

    async def _tags(
        self, request: web.Request, upstream: aiohttp.ClientResponse, client_name: str, repo: str
    ) -> web.Response:
        """Tag lists are small: rewrite `name` to the client's repository name, and
        paginate here when the upstream ignored `n`/`last` (docker-registry 2.8 does)."""
        body = bytearray()
        try:
            # read(n) returns what has arrived, not n bytes: gather the whole list, bounded in size and time.
            async with asyncio.timeout(self.idle_timeout):
                while chunk := await upstream.content.readany():
                    body += chunk
                    if len(body) > MAX_TAGS_BODY:
                        upstream.close()
                        raise OCIError(PullgateCode.UPSTREAM_ERROR, "tag list too large")
        except TimeoutError:
            upstream.close()
            raise OCIError(PullgateCode.UPSTREAM_TIMEOUT, "upstream sends its tag list too slowly") from None
        except aiohttp.ClientError:
            raise OCIError(PullgateCode.UPSTREAM_ERROR, "upstream broke off while sending its tag list") from None
        try:
            data = json.loads(body)
            tags = data.get("tags") or []
        except (ValueError, AttributeError):
            raise OCIError(PullgateCode.UPSTREAM_ERROR, "upstream tag list is not JSON") from None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise OCIError(PullgateCode.UPSTREAM_ERROR, "upstream tag list is malformed")
        headers = _rewrite_link(upstream, repo, client_name) | API_VERSION
        if "Link" not in headers:
            path = f"/v2/{client_name}/tags/list"
            tags, link = paginate(tags, request.query.get("n"), request.query.get("last"), path)
            if link:
                headers["Link"] = link
        return web.json_response({"name": client_name, "tags": tags}, headers=headers)


def paginate(items: list[str], n: str | None, last: str | None, path: str) -> tuple[list[str], str | None]:
    """The spec's pagination (tags, catalog): lexical order, after `last`, at most `n`."""
    if n is None and last is None:
        return items, None
    items = sorted(items)
    if last is not None:
        items = [t for t in items if t > last]
    if n is None:
        return items, None
    limit = int(n)
    if len(items) <= limit or limit == 0:
        return items[:limit], None
    page = items[:limit]
    query = urlencode({"n": limit, "last": page[-1]})
    return page, f'<{path}?{query}>; rel="next"'


async def _read_manifest(upstream: aiohttp.ClientResponse, slug: str) -> bytes:
    too_large = OCIError(
        PullgateCode.UPSTREAM_ERROR, f"registry {slug!r} sent a manifest too large (over {MAX_MANIFEST} bytes)"
    )
    if (upstream.content_length or 0) > MAX_MANIFEST:
        raise too_large
    body = bytearray()
    try:
        while chunk := await upstream.content.readany():
            body += chunk
            if len(body) > MAX_MANIFEST:
                raise too_large
    except aiohttp.ClientError:
        raise OCIError(PullgateCode.UPSTREAM_ERROR, f"registry {slug!r} broke off while sending a manifest") from None
    if upstream.content_length is not None and len(body) != upstream.content_length:
        raise OCIError(PullgateCode.UPSTREAM_ERROR, f"registry {slug!r} sent a short manifest")
    return bytes(body)


def _digest_mismatch(slug: str, kind: str, digest: str | None, image: str | None) -> None:
    metrics.DIGEST_MISMATCH.labels(slug, kind).inc()
    fields = {"registry": slug, "kind": kind, "digest": digest, "image": image}
    log.warning("digest mismatch: registry %s sent a %s that is not %s", slug, kind, digest, extra={"fields": fields})


_ACTIONS = {"manifests": "manifest", "blobs": "blob", "tags": "tags", "referrers": "referrers"}


def _note_token_customer(request: web.Request, customer: Customer) -> None:
    """The token endpoint found the license's customer: the pull log records the auth."""
    ctx(request).note(customer)


def _reads_only(request: web.Request) -> None:
    if request.method not in READ_METHODS:
        raise OCIError(OCICode.UNSUPPORTED, "this registry is read-only: only pulls are supported")


def _upstream_path(route: Route, repo: str, request: web.Request) -> str:
    if route.kind == "tags":
        path = f"/v2/{repo}/tags/list"
    else:
        path = f"/v2/{repo}/{route.kind}/{route.reference}"
    keys = _QUERY_KEYS.get(route.kind, ())
    query = [(k, v) for k, v in request.query.items() if k in keys]
    if route.kind == "tags":
        check_page_size(request.query.get("n"))
    if query:
        path += "?" + urlencode(query)
    return path


def _upstream_headers(request: web.Request, route: Route) -> dict[str, str]:
    headers: dict[str, str] = {}
    if route.kind == "manifests":
        accept = ", ".join(request.headers.getall("Accept", []))[:4096]
        # A client that names no manifest type (none, or */*) gets every type we relay: some
        # registries otherwise fall back to schema 1 conversions, or refuse.
        if "application/vnd." not in accept:
            accept = ", ".join([*MANIFEST_TYPES, *([accept] if accept else [])])
        headers["Accept"] = accept
    elif route.kind in ("tags", "referrers"):
        headers["Accept"] = "application/json, application/vnd.oci.image.index.v1+json"
    rng = request.headers.get("Range")
    if rng is not None and route.kind == "blobs":
        if not _RANGE_RE.match(rng.strip()):
            raise OCIError(PullgateCode.RANGE_INVALID, "only a single bytes=start-end range is supported")
        headers["Range"] = rng.strip()
    inm = request.headers.get("If-None-Match")
    if inm is not None and len(inm) < 1024:
        headers["If-None-Match"] = inm
    return headers


def _rewrite_link(upstream: aiohttp.ClientResponse, repo: str, client_name: str) -> dict[str, str]:
    """Pagination links point at the upstream name; point them at ours."""
    link = upstream.headers.get("Link")
    if not link:
        return {}
    prefix = f"/v2/{repo}/"

    def fix(m: re.Match[str]) -> str:
        target = m.group(1)
        path_start = target.find(prefix)
        if path_start < 0:
            return m.group(0)
        return f"</v2/{client_name}/{target[path_start + len(prefix) :]}>"

    return {"Link": _LINK_RE.sub(fix, link)}
