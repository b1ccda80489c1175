"""One request to a vendor registry: auth, redirects, bounded retries.

Hands out the upstream response with its body unread, so the caller streams it,
as an async context manager that releases it. Auth is a set of sans-I/O flows
(proxy.upstream.auth, .basic, .bearer, providers/ecr.py); `_drive` is the one
loop that sends what they ask for.
Redirects (ECR -> S3, Docker Hub -> CDN, relative Locations) are followed here,
inside the proxy; the Authorization header goes only to the registry's own
origin, never to the host a redirect points at.

Every connection the one session makes passes the egress policy
(proxy.egress) at connect time: registry URLs, each redirect hop,
token realms, the ECR and STS APIs, the custom-hostname HTTP check. Each
registry holds at most `pool_per_registry` of the `pool_size` connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy import egress, metrics
from proxy.egress import EgressPolicy, Refusal
from proxy.secrets import Keyring
from proxy.settings import UpstreamSection, parse_listen
from proxy.store.models import Registry
from proxy.upstream.auth import Answer, Authenticator, AuthTarget, handshake
from proxy.upstream.connector import EgressDenied, GuardedConnector, record_refusal
from proxy.upstream.errors import (
    EgressRefused,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.upstream.flow import MAX_ANSWER, Flow, Request, Response
from proxy.upstream.pool import PoolExhausted, RegistrySlots
from proxy.upstream.providers import CredentialContext, RegistryCredentials, provider_of
from proxy.upstream.realm import same_origin
from proxy.upstream.tokens import TokenCache

REDIRECTS = {301, 302, 303, 307, 308}
RETRY_STATUSES = {500, 502, 503, 504}
T = TypeVar("T")


def policy_for(cfg: UpstreamSection, listens: Sequence[str] = ()) -> EgressPolicy:
    """The egress policy of this process: `upstream.egress_allow`, and its own listeners
    (`proxy.listen`, `admin.listen`), which no entry can open."""
    listeners = [egress.listener_of(*parse_listen(listen, "listen")) for listen in listens]
    return EgressPolicy(egress.parse_allow(cfg.egress_allow), listeners)


DOWNGRADE = Refusal("https-to-http", "a redirect from https to http", overridable=False)


class UpstreamClient:
    def __init__(self, cfg: UpstreamSection, keyring: Keyring, listens: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.tokens = TokenCache()
        self.policy = policy_for(cfg, listens)
        self.slots = RegistrySlots(cfg.pool_per_registry, cfg.connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._connector: GuardedConnector | None = None
        self._auth: Authenticator | None = None

    async def start(self) -> None:
        self._connector = GuardedConnector(
            self.policy,
            limit=self.cfg.pool_size,
            limit_per_host=0,
            keepalive_timeout=self.cfg.keepalive_seconds,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                # Waiting for a free connection of the shared pool counts as connecting: bounded.
                connect=self.cfg.connect_timeout,
                sock_connect=self.cfg.connect_timeout,
                sock_read=self.cfg.idle_timeout,
            ),
            # Bytes pass through untouched: a gzip blob must not be "helpfully" inflated.
            auto_decompress=False,
            read_bufsize=self.cfg.chunk_size,
            max_field_size=16384,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
            headers={"User-Agent": "pullgate"},
            # One session serves every customer: no cookie state is kept or sent (and no
            # per-request cookie filtering to pay for).
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._auth = Authenticator(self.tokens, self.run)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def refusal_for(self, url: str) -> EgressDenied | None:
        """Would the policy refuse `url`'s destination (its name resolved now)? No connection is made."""
        assert self._connector is not None, "UpstreamClient.start() not called"
        target = egress.url_target(url)
        if target is None:
            return None
        return await self._connector.vet(*target)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "UpstreamClient.start() not called"
        return self._session

    async def credentials(self, registry: Registry, refresh: bool = False) -> RegistryCredentials:
        """The username and password the registry's challenge wants, from its provider."""
        ctx = CredentialContext(self.keyring, self.tokens, self.run)
        return await provider_of(registry).credentials(ctx, registry, refresh)

    @contextlib.asynccontextmanager
    async def request(
        self,
        registry: Registry,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        scope: str,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """`async with client.request(...) as resp:` the registry's answer, auth done, body unread.

        On exit the response is released (or closed, when its body was not read to
        the end), and the registry's pool slot it held is given back."""
        try:
            release_slot = await self.slots.acquire(registry.id, registry.slug)
        except PoolExhausted:
            raise UpstreamBusy(registry.slug) from None
        try:
            resp = await self._request(registry, method, path_and_query, headers, scope)
            try:
                yield resp
            finally:
                if resp.connection is None or resp.content.is_eof():
                    resp.release()
                else:
                    resp.close()  # the rest of the body is not worth reading: drop the connection
        finally:
            release_slot()

    async def _request(
        self,
        registry: Registry,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        scope: str,
    ) -> aiohttp.ClientResponse:
        assert self._auth is not None
        auth = self._auth
        base = _base_url(registry.url)
        url = base.join(URL(path_and_query, encoded=True))
        target = AuthTarget(registry.id, registry.slug, base, registry.insecure)
        cached = auth.cached(target, scope)
        if cached is not None:
            metrics.child(metrics.UPSTREAM_TOKEN_CACHE_HITS, registry.slug).inc()

        async def answer(step: Answer) -> str:
            # A cached credential that was refused may be out of date (an ECR token): refresh it.
            creds = await self.credentials(registry, refresh=step.stale is not None)
            return await auth.answer(target, step.challenges, scope, creds, step.stale, upstream_status=401)

        request = Request(method, str(url), dict(headers), stream=True)
        _, resp = await self._drive(handshake(request, cached, registry.slug), registry.slug, registry, answer)
        assert resp is not None, "the handshake ends on a registry response"
        return resp

    async def run(self, flow: Flow[T], slug: str) -> T:
        """A token flow (realm, ECR, STS) to its result."""
        result, _ = await self._drive(flow, slug)
        return result

    async def _drive(
        self,
        flow: Generator[Request | Answer, Any, T],
        slug: str,
        registry: Registry | None = None,
        answer: Callable[[Answer], Awaitable[str]] | None = None,
    ) -> tuple[T, aiohttp.ClientResponse | None]:
        """The one send loop: sends what a flow yields and sends it back the answers.

        A registry request (`stream`) goes through redirects and retries and its body
        is left unread; the last one is returned with the flow's result, the others
        released. Any other request (a token realm, ECR, STS) gets no redirect and no
        retry, and its answer is read whole, bounded. `Answer` steps get a header."""
        last: aiohttp.ClientResponse | None = None
        reply: Response | str | None = None
        try:
            while True:
                try:
                    step = flow.send(reply)  # the first send is None, as generators want
                except StopIteration as done:
                    return done.value, last
                if last is not None:
                    last.release()
                    last = None
                if isinstance(step, Answer):
                    assert answer is not None, "only the handshake asks for an answer"
                    reply = await answer(step)
                elif step.stream:
                    assert registry is not None, "only the handshake sends registry requests"
                    last = await self._send_retrying(registry, step)
                    reply = Response(last.status, CIMultiDict(last.headers))
                else:
                    reply = await self._exchange(step, slug)
        except BaseException:
            if last is not None:
                last.release()
            raise

    async def _exchange(self, request: Request, slug: str) -> Response:
        """One credential-exchange request, answered whole (token services, ECR and STS answer small)."""
        try:
            async with asyncio.timeout(self.cfg.first_byte_timeout):
                async with self.session.request(
                    request.method,
                    URL(request.url, encoded=True),
                    headers=request.headers,
                    data=request.body or None,
                    allow_redirects=False,
                ) as resp:
                    body = await _read_bounded(resp.content, MAX_ANSWER + 1)
                    return Response(resp.status, CIMultiDict(resp.headers), body)
        except TimeoutError:
            raise UpstreamTimeout(slug, f"{request.purpose} timed out") from None
        except EgressDenied as exc:
            record_refusal(slug, exc, f"the {request.purpose} endpoint")
            raise EgressRefused(slug, exc.refusal) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(slug, f"{request.purpose} unreachable ({type(exc).__name__})") from None

    async def _send_retrying(self, registry: Registry, request: Request) -> aiohttp.ClientResponse:
        method, url = request.method, URL(request.url, encoded=True)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        auth = request.headers.get("Authorization")  # for the registry's own origin only (see _send)
        attempts = self.cfg.retries + 1 if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._send(registry, method, url, headers, auth)
            except TimeoutError:
                if last:
                    raise UpstreamTimeout(registry.slug, f"registry {registry.slug!r} timed out") from None
            except aiohttp.ClientError as exc:
                if last:
                    raise UpstreamUnavailable(
                        registry.slug, f"registry {registry.slug!r} is unreachable ({type(exc).__name__})"
                    ) from None
            else:
                if resp.status not in RETRY_STATUSES or last:
                    return resp
                resp.release()
            await asyncio.sleep(min(0.25 * 2**attempt, 2.0))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self, registry: Registry, method: str, url: URL, headers: Mapping[str, str], auth: str | None
    ) -> aiohttp.ClientResponse:
        base = _base_url(registry.url)
        for hop in range(self.cfg.max_redirects + 1):
            send_headers = dict(headers)
            if auth and same_origin(url, base):
                send_headers["Authorization"] = auth
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.cfg.first_byte_timeout):
                    resp = await self.session.request(method, url, headers=send_headers, allow_redirects=False)
            except EgressDenied as exc:
                record_refusal(registry.slug, exc, "the registry" if hop == 0 else "a redirect to")
                raise EgressRefused(registry.slug, exc.refusal) from None
            metrics.child(metrics.UPSTREAM_LATENCY, registry.slug).observe(time.monotonic() - started)
            metrics.child(metrics.UPSTREAM_REQUESTS, registry.slug, str(resp.status)).inc()
            location = resp.headers.get("Location")
            if resp.status not in REDIRECTS or not location:
                return resp
            resp.release()
            with contextlib.suppress(ValueError):
                nxt = url.join(URL(location, encoded=True))  # keep presigned URLs byte-exact
                if url.scheme == "https" and nxt.scheme == "http":
                    # Never downgrade, even for an insecure registry: a plain hop can be read and steered.
                    record_refusal(registry.slug, DOWNGRADE, "a redirect")
                    raise EgressRefused(registry.slug, DOWNGRADE)
                if nxt.scheme == "https" or (nxt.scheme == "http" and registry.insecure):
                    url = nxt
                    if resp.status == 303:
                        method = "GET" if method != "HEAD" else "HEAD"
                    continue
            raise UpstreamUnavailable(registry.slug, f"registry {registry.slug!r} sent an unusable redirect")
        raise UpstreamUnavailable(registry.slug, f"registry {registry.slug!r} redirected too many times")


@functools.lru_cache(maxsize=1024)
def _base_url(url: str) -> URL:
    """A registry's parsed URL (parsed once, not on every request; URLs are immutable)."""
    return URL(url)


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to `limit` bytes of a body (a read returns what has arrived, not all of it)."""
    data = bytearray()
    while len(data) < limit:
        chunk = await content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)
