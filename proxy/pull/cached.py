"""The pull routes' way into the cache (proxy.cache): the one facade routes.py calls,
after the license and allowlist checks, before any upstream request of its own.

`answer` serves what the cache can (a hit, a stale tag, a blob miss through the single
flight) and returns None for what goes upstream as before (a HEAD or Range on a miss, a
manifest miss, a moved tag); `keep_manifest` takes in a manifest the routes fetched and
verified. A digest held for another repository is served only once the upstream confirms
it for this one (a HEAD, remembered as a binding).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web

from proxy import metrics
from proxy.cache import metrics as cache_metrics
from proxy.cache.flight import Opener, Source
from proxy.cache.send import ReaderAborted, send_growing, send_object
from proxy.cache.service import Cache
from proxy.cache.tags import STALE_WARNING, After, accept_kind, after_head, fresh
from proxy.context import ctx
from proxy.oci.digest import is_digest
from proxy.oci.errors import OCICode, OCIError
from proxy.oci.grammar import Route
from proxy.oci.names import is_anonymous
from proxy.pull.limits import SLOT_KEY
from proxy.pull.relay import abort_connection, upstream_error
from proxy.store.models import Registry
from proxy.upstream.client import UpstreamClient
from proxy.upstream.errors import UpstreamError

log = logging.getLogger("pullgate.cache")

PRESIGNED_SECONDS = 60  # as distribution's storage redirect: long enough to start, short to leak


class CachedPulls:
    def __init__(self, cache: Cache, upstream: UpstreamClient, idle_timeout: float, redirect: bool = False) -> None:
        self.cache = cache
        self.upstream = upstream
        self.idle = idle_timeout
        # `cache.s3.redirect`: a licensed blob hit answers 307 to a presigned GET (the proxy moves no bytes).
        self.redirect = redirect

    async def answer(
        self,
        request: web.Request,
        route: Route,
        registry: Registry,
        repo: str,
        upstream_headers: Mapping[str, str],
        extra: Mapping[str, str],
    ) -> web.StreamResponse | None:
        if route.reference is None:
            return None
        if route.kind == "blobs":
            offload = self.redirect and not is_anonymous(route.name)  # never a signed URL for anonymous
            return await self._blob(request, route.reference, registry, repo, extra, offload)
        if route.kind == "manifests":
            return await self._manifest(request, route.reference, registry, repo, upstream_headers, extra)
        return None

    # --- blobs ------------------------------------------------------------------------
    async def _blob(
        self,
        request: web.Request,
        digest: str,
        registry: Registry,
        repo: str,
        extra: Mapping[str, str],
        offload: bool = False,
    ) -> web.StreamResponse | None:
        c = ctx(request)
        binding = (registry.id, repo)
        flight = self.cache.flights.get(digest)
        if flight is None and await self.cache.adopt(digest) is None:  # another replica's fill is a hit
            flight = self.cache.flights.get(digest)  # one may have started while the store was asked
        known = self.cache.held(digest) is not None or flight is not None
        if known and not self.cache.bound(digest, binding) and not (flight and binding in flight.bindings):
            if not await self.cache.bound_anywhere(digest, binding):
                await self._confirm(registry, repo, "blobs", digest, {})
            if (flight := self.cache.flights.get(digest)) is not None:
                flight.bindings.add(binding)
        entry = self.cache.held(digest)
        if entry is not None and offload and request.method == "GET" and "Range" not in request.headers:
            url = await self.cache.redirect_url(digest, PRESIGNED_SECONDS)
            if url is not None:  # the license was checked before this facade was asked
                c.cache = "hit"
                self.cache.hit("blob")
                # Egress all the same (the vendor's bucket sends it): per customer, thresholds.
                c.bytes_sent = entry.size
                headers = {"Location": url, "Docker-Content-Digest": digest, **extra}
                return web.Response(status=307, headers=headers)
        if entry is not None:
            opened = await self.cache.open(digest)
            if opened is not None:
                c.cache = "hit"
                self.cache.hit("blob")
                headers = {
                    "Content-Type": entry.media_type or "application/octet-stream",
                    "Docker-Content-Digest": digest,
                    "ETag": f'"{digest}"',
                    **extra,
                }
                try:
                    resp = await send_object(request, opened, headers, self.cache.hit_io, self.idle)
                except ReaderAborted as exc:
                    return self._aborted(request, exc)
                finally:
                    await opened.close()
                if request.method == "GET":
                    c.bytes_sent = resp.content_length or 0
                return resp
        c.cache = "miss"
        self.cache.miss("blob")
        if request.method == "HEAD" or "Range" in request.headers:
            return None  # upstream as before: a part, or headers only, are not worth a fetch
        if self.cache.flights.get(digest) is None and (slot := request.get(SLOT_KEY)) is not None:
            slot.share(registry.id)  # this request starts a fill: an upstream connection
        flight, joined = self.cache.fetch(digest, binding, self._opener(registry, repo, digest))
        flight.join()
        try:
            headers = {"Docker-Content-Digest": digest, "ETag": f'"{digest}"', **extra}
            resp, c.bytes_sent = await send_growing(request, flight, headers, self.cache.hit_io, self.idle)
            return resp
        except ReaderAborted as exc:
            if exc.reason == "digest" and not joined:
                metrics.DIGEST_MISMATCH.labels(registry.slug, "blob").inc()
                log.warning(
                    "digest mismatch: registry %s sent a blob that is not %s (nothing cached)",
                    registry.slug,
                    digest,
                    extra={"fields": {"registry": registry.slug, "kind": "blob", "digest": digest, "image": repo}},
                )
            return self._aborted(request, exc)
        finally:
            flight.leave()

    def _aborted(self, request: web.Request, exc: ReaderAborted) -> web.StreamResponse:
        c = ctx(request)
        c.bytes_sent, c.aborted = exc.sent, exc.reason
        metrics.STREAMS_ABORTED.labels(exc.reason).inc()
        abort_connection(request)
        assert exc.response is not None, "aborted after the response started"
        return exc.response

    def _opener(self, registry: Registry, repo: str, digest: str) -> Opener:
        @contextlib.asynccontextmanager
        async def open_upstream() -> AsyncIterator[Source]:
            try:
                async with self.upstream.request(
                    registry, "GET", f"/v2/{repo}/blobs/{digest}", {}, scope=f"repository:{repo}:pull"
                ) as up:
                    metrics.observe_ratelimit(registry.slug, up.headers.get("RateLimit-Remaining"))
                    if up.status != 200:
                        raise await upstream_error(up, "blobs", registry.slug)
                    yield Source(up.content_length, up.headers.get("Content-Type"), _chunks(up))
            except UpstreamError as exc:
                retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
                raise OCIError(exc.code, exc.message, headers=retry) from None

        return open_upstream

    async def _confirm(self, registry: Registry, repo: str, kind: str, digest: str, headers: Mapping[str, str]) -> None:
        """The upstream holds `digest` in `repo` too (HEAD): remembered; otherwise its answer."""
        try:
            async with self.upstream.request(
                registry, "HEAD", f"/v2/{repo}/{kind}/{digest}", headers, scope=f"repository:{repo}:pull"
            ) as up:
                if up.status == 200:
                    self.cache.bind(digest, (registry.id, repo))
                    return
                raise await upstream_error(up, kind, registry.slug)
        except UpstreamError as exc:
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            raise OCIError(exc.code, exc.message, headers=retry) from None

    # --- manifests ----------------------------------------------------------------------
    async def _manifest(
        self,
        request: web.Request,
        reference: str,
        registry: Registry,
        repo: str,
        upstream_headers: Mapping[str, str],
        extra: Mapping[str, str],
    ) -> web.StreamResponse | None:
        c = ctx(request)
        head_headers = {"Accept": upstream_headers.get("Accept", "")}
        if is_digest(reference):
            entry = await self.cache.adopt(reference)
            if entry is not None:
                if not await self.cache.bound_anywhere(reference, (registry.id, repo)):
                    await self._confirm(registry, repo, "manifests", reference, head_headers)
                body = await self.cache.read_small(reference)
                if body is not None:
                    return self._manifest_hit(request, body, reference, entry.media_type, extra, stale=False)
            c.cache = "miss"
            self.cache.miss("manifest")
            return None
        key = (registry.id, repo, reference, accept_kind(_accept(request)))
        tag = await self.cache.adopt_tag(key)
        if tag is None or self.cache.held(tag.digest) is None:
            c.cache = "miss"
            self.cache.miss("manifest")
            return None
        stale = False
        if not fresh(tag, self.cache.clock(), self.cache.tag_ttl):
            decision, error = await self._revalidate(registry, repo, reference, head_headers, tag.digest)
            if decision is After.SERVE:
                self.cache.set_tag(key, tag.digest, tag.media_type)
            elif decision is After.REFETCH:
                c.cache = "miss"
                self.cache.miss("manifest")
                return None
            elif decision is After.NOT_FOUND:
                self.cache.drop_tag(key)
                raise OCIError(OCICode.MANIFEST_UNKNOWN, "manifest unknown")
            elif decision is After.STALE:
                stale = True
            else:
                assert error is not None
                raise error
        body = await self.cache.read_small(tag.digest)
        if body is None:
            c.cache = "miss"
            self.cache.miss("manifest")
            return None
        if stale:
            cache_metrics.STALE.inc()
            log.info("serving tag %s of %s stale: the upstream %s failed", reference, repo, registry.slug)
        return self._manifest_hit(request, body, tag.digest, tag.media_type, extra, stale)

    async def _revalidate(
        self, registry: Registry, repo: str, tag: str, headers: Mapping[str, str], cached: str
    ) -> tuple[After, OCIError | None]:
        """A HEAD for the tag; Docker Hub does not count HEADs against the pull allowance."""
        try:
            async with self.upstream.request(
                registry, "HEAD", f"/v2/{repo}/manifests/{tag}", headers, scope=f"repository:{repo}:pull"
            ) as up:
                decision = after_head(
                    up.status, up.headers.get("Docker-Content-Digest"), cached, self.cache.serve_stale
                )
                error = await upstream_error(up, "manifests", registry.slug) if decision is After.FAIL else None
                return decision, error
        except UpstreamError as exc:
            decision = after_head(None, None, cached, self.cache.serve_stale)
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
            return decision, OCIError(exc.code, exc.message, headers=retry)

    def _manifest_hit(
        self,
        request: web.Request,
        body: bytes,
        digest: str,
        media_type: str | None,
        extra: Mapping[str, str],
        stale: bool,
    ) -> web.Response:
        c = ctx(request)
        c.cache = "hit"
        self.cache.hit("manifest")
        headers = {
            "Content-Type": media_type or "application/vnd.oci.image.manifest.v1+json",
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
            **extra,
        }
        if stale:
            headers["Warning"] = STALE_WARNING
        if request.method == "GET":
            c.bytes_sent = len(body)
            cache_metrics.BYTES.labels("cache").inc(len(body))
        return web.Response(status=200, body=body, headers=headers)

    async def keep_manifest(
        self, request: web.Request, registry: Registry, repo: str, reference: str | None, verified: web.Response
    ) -> None:
        """A manifest the routes fetched and verified (`verified`, their answer): kept under
        its digest, and the tag remembered."""
        body, media_type = verified.body, verified.headers.get("Content-Type")
        digest = verified.headers.get("Docker-Content-Digest")
        if not isinstance(body, bytes) or not media_type or not digest or reference is None:
            return  # a manifest without its type cannot be served back faithfully
        ctx(request).cache = "miss"
        cache_metrics.BYTES.labels("upstream").inc(len(body))
        await self.cache.keep(digest, body, media_type, (registry.id, repo))
        if not is_digest(reference):
            self.cache.set_tag((registry.id, repo, reference, accept_kind(_accept(request))), digest, media_type)


def _accept(request: web.Request) -> str:
    return ", ".join(request.headers.getall("Accept", []))[:4096]


async def _chunks(up: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    # The buffers as the parser made them: read(n) would join them, a copy of every byte
    # (the fetch batches them for its threads, without joining).
    async for chunk, _ in up.content.iter_chunks():
        if chunk:
            yield chunk
