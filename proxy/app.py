"""Builds the two aiohttp applications and runs them.

The proxy listener serves only the OCI pull API; the admin listener (vendor
API, portal, metrics, health) is a separate application on its own socket, so
nothing of it can be reached through the proxy listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy import accesslog, bootstrap, logs, metrics, pulllog
from proxy.admin import api as vendor_api
from proxy.admin import cache as cache_api
from proxy.admin import hostnames as hostname_api
from proxy.admin import portal, usage_api
from proxy.admin.service import VendorService
from proxy.admin.usage import UsageService
from proxy.admin.webhooks import Notifier
from proxy.auth.gate import Gate
from proxy.auth.proxies import TrustedProxies
from proxy.auth.tokens import TokenIssuer
from proxy.cache.backend import Backend
from proxy.cache.fs import FilesystemBackend
from proxy.cache.s3store import S3Backend
from proxy.cache.service import CHANGED as CACHE_CHANGED
from proxy.cache.service import Cache
from proxy.config import Config, keys_path, parse_listen
from proxy.context import REQUEST_ID
from proxy.domains.names import Reserved
from proxy.domains.routing import HostTable
from proxy.domains.service import HostnameService
from proxy.domains.tls import SNIContexts
from proxy.listener import GuardedAppRunner
from proxy.pull.cached import CachedPulls
from proxy.pull.limits import StreamSlots
from proxy.pull.middleware import oci_errors
from proxy.pull.routes import OCIRoutes
from proxy.pulllog import PullLog
from proxy.ratelimit import RateLimiter
from proxy.secrets import Keyring
from proxy.settings import cache_path, parse_size
from proxy.store import Store, open_store
from proxy.store.readcache import StoreReadCache
from proxy.upstream.client import UpstreamClient
from proxy.upstream.connector import GuardedConnector

log = logging.getLogger("pullgate")

MAX_HEADER = 16 * 1024


ReadyCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class Worker:
    """This process's place among `pullgate serve --workers N` (index 0 of 1 without a supervisor)."""

    index: int = 0
    count: int = 1

    @property
    def supervised(self) -> bool:
        return self.count > 1

    @property
    def runs_singletons(self) -> bool:
        # Jobs one process does for all (pull-log purge): worker 0, restarted if it dies.
        return self.index == 0


@dataclass
class Services:
    cfg: Config
    store: Store
    keyring: Keyring
    read_cache: StoreReadCache
    upstream: UpstreamClient
    gate: Gate
    pulllog: PullLog | None = None
    hosts: HostTable | None = None
    hostnames: HostnameService | None = None
    notifier: Notifier | None = None
    cache: Cache | None = None
    # /readyz: (name, check) pairs, each answering True when its dependency is reachable. The
    # store's is registered here; a cache backend appends its own when it is built.
    ready_checks: list[tuple[str, ReadyCheck]] = field(default_factory=list)
    worker: Worker = field(default_factory=Worker)

    async def close(self) -> None:
        if self.pulllog is not None:
            await self.pulllog.close()  # writes what is still queued, before the store closes
        if self.notifier is not None:
            await self.notifier.close()
        if self.cache is not None:
            await self.cache.close()  # the index's last changes, before the store closes
        await self.upstream.close()
        await self.store.close()


SERVICES = web.AppKey("services", Services)


async def startup_jobs(cfg: Config) -> None:
    """What one process does before the workers start (`serve --workers N`): create the
    keyring, migrate the schema, apply the bootstrap. The workers then only open them."""
    keyring = await asyncio.to_thread(Keyring.load_or_create, keys_path(cfg))
    store = await open_store(cfg.store, cfg.base_dir)
    try:
        async with store.exclusive():
            await bootstrap.apply(cfg, store, keyring)
    finally:
        await store.close()


async def build_services(cfg: Config, worker: Worker | None = None) -> Services:
    worker = worker or Worker()
    keyring = await asyncio.to_thread(Keyring.load_or_create, keys_path(cfg))
    store = await open_store(cfg.store, cfg.base_dir)
    if not worker.supervised:  # a supervisor ran the bootstrap once for all its workers
        try:
            async with store.exclusive():  # replicas starting together must not race their inserts
                await bootstrap.apply(cfg, store, keyring)
        except BaseException:
            await store.close()  # its worker thread would keep the process alive
            raise
    read_cache = StoreReadCache(store, cfg.auth.license_cache_seconds)
    upstream = UpstreamClient(cfg.upstream, keyring, listens=(cfg.proxy.listen, cfg.admin.listen))
    await upstream.start()
    failures = RateLimiter(cfg.auth.failed_per_minute, cfg.auth.failed_burst)
    issuer = TokenIssuer(keyring, cfg.auth.token_ttl_seconds)
    gate = Gate(read_cache, issuer, TrustedProxies(cfg.proxy.trusted_proxies), failures)
    tls = _tls_context(cfg)
    reserved = Reserved(cfg.proxy.hosts, cfg.domains.reserved)
    sni = SNIContexts(tls) if tls else None
    hosts = HostTable(store, keyring, cfg.proxy.hosts, sni, cfg.domains.refresh_seconds, reserved)
    hostnames = HostnameService(store, keyring, cfg.domains, lambda: upstream.session, hosts.changed, reserved)
    await hosts.refresh()

    cache: Cache | None = None

    def changed_elsewhere(kind: str) -> None:
        # Another replica (or this one) changed something: drop caches, reload hostnames;
        # a purge: the cache's index drops what the store no longer has.
        if kind == CACHE_CHANGED:
            if cache is not None:
                cache.changed_elsewhere()
            return
        read_cache.invalidate()
        hosts.changed()

    await store.listen(changed_elsewhere)
    notifier = Notifier(store, keyring, upstream, cfg.webhooks)

    async def thresholds(batch: list[pulllog.PullEvent]) -> None:
        await notifier.pulls_written((e.customer_id, e.time) for e in batch if e.customer_id)

    pull_log = PullLog(store, cfg.pulllog, on_written=thresholds, purge=worker.runs_singletons)
    cache = await open_cache(cfg, store, upstream)
    services = Services(
        cfg, store, keyring, read_cache, upstream, gate, pull_log, hosts, hostnames, notifier, cache, worker=worker
    )
    services.ready_checks.append(("store", store.ping))
    if cache is not None:
        services.ready_checks.append(("cache", cache.ready))
    return services


async def open_cache(cfg: Config, store: Store, upstream: UpstreamClient) -> Cache | None:
    """The pull-through cache of `cache.backend` (none: every pull goes upstream)."""
    if cfg.cache.backend == "none":
        return None
    c = cfg.cache
    backend: Backend
    if c.backend == "s3":

        def connector() -> aiohttp.BaseConnector:
            # The bucket is an outbound connection like any other: the same egress policy.
            return GuardedConnector(upstream.policy, limit=64, limit_per_host=0, keepalive_timeout=30)

        # Fills spool here too, so that followers tail a local file while the parts upload.
        backend = S3Backend.from_config(c.s3, cache_path(cfg) / "spool", connector, cfg.base_dir, upstream.policy)
    else:
        backend = FilesystemBackend(cache_path(cfg))
    cache = Cache(
        backend,
        store,
        parse_size(c.max_size, "cache.max_size"),
        c.tag_ttl,
        c.serve_stale,
        c.hit_io,
        shared_evict_every=c.shared_eviction_seconds,
        # Who shares the store shares the backend: a bucket always; a disk when the store is
        # SQLite (one host). Replicas on PostgreSQL may each have a disk of their own.
        shared_eviction=c.backend == "s3" or store.one_host,
    )
    await cache.start()
    return cache


READY_CHECK_SECONDS = 2.0


async def readiness(services: Services) -> tuple[bool, dict[str, object]]:
    """Every registered check at once, each bounded; a check that raises or times out failed."""

    async def one(check: ReadyCheck) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), READY_CHECK_SECONDS))
        except Exception:
            return False

    names = [name for name, _ in services.ready_checks]
    results = await asyncio.gather(*(one(check) for _, check in services.ready_checks))
    checks: dict[str, bool] = dict(zip(names, results, strict=True))
    checks["keyring"] = bool(services.keyring.keys)
    failed = [name for name, ok in checks.items() if not ok]
    body: dict[str, object] = dict(checks)
    if failed:
        body["reason"] = "unreachable or not loaded: " + ", ".join(failed)
    return not failed, body


def request_id(worker: Worker) -> Middleware:
    served = metrics.WORKER_REQUESTS.labels(str(worker.index))  # bound once, not per request

    @web.middleware
    async def with_request_id(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # A correlation id, not a secret: the non-cryptographic generator is enough (no syscall).
        request[REQUEST_ID] = f"{random.getrandbits(64):016x}"
        served.inc()
        return await handler(request)

    return with_request_id


async def _set_request_id(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["X-Request-Id"] = rid


def proxy_app(services: Services) -> web.Application:
    middlewares: list[Middleware] = [request_id(services.worker), oci_errors]
    if services.hosts is not None:
        middlewares.insert(1, services.hosts.middleware())
    if services.pulllog is not None:
        # Outside oci_errors: refusals are recorded with the status the client saw.
        middlewares.insert(1, pulllog.middleware(services.pulllog))
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[SERVICES] = services
    logs.quiet_parser_refusals()  # a malformed request is the client's error, not ours
    up = services.cfg.upstream
    limiter = RateLimiter(services.cfg.anonymous.rate_per_minute, services.cfg.anonymous.burst)
    limits = services.cfg.limits
    routes = OCIRoutes(
        services.gate, services.read_cache, services.upstream, up.chunk_size, up.idle_timeout, limiter, limits
    )
    # A license holds at most half of a registry's upstream share: the rest stays for its other customers.
    routes.slots = StreamSlots(
        limits.streams_per_license, limits.streams_per_address, max(1, up.pool_per_registry // 2)
    )
    if services.cache is not None:
        redirect = services.cfg.cache.backend == "s3" and services.cfg.cache.s3.redirect
        routes.cached = CachedPulls(services.cache, services.upstream, up.idle_timeout, redirect)
    routes.install(app)
    app.on_response_prepare.append(_set_request_id)
    return app


def admin_app(services: Services) -> web.Application:
    app = web.Application()
    app[SERVICES] = services

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, body = await readiness(services)
        return web.json_response(body, status=200 if ready else 503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics.handler)
    hostnames = services.hostnames
    # One budget of KOTS license imports per team, for the API and the portal together.
    per_minute = services.cfg.limits.license_imports_per_minute
    imports = RateLimiter(per_minute, per_minute, max_keys=10_000, key=str)
    public_host = services.cfg.proxy.hosts[0] if services.cfg.proxy.hosts else None
    vendor = VendorService(
        services.store, services.keyring, services.read_cache, services.upstream, imports, public_host
    )

    def extend(sub: web.Application) -> None:
        if hostnames is not None:
            hostname_api.install(sub, hostnames)
        usage_api.install(sub, UsageService(vendor))
        cache_api.install(sub, cache_api.CacheService(vendor, services.cache))

    vendor_api.install(app, vendor, extend=extend)
    # The web portal: the same team-scoped service layer, behind a browser session.
    portal_vendor = VendorService(
        services.store, services.keyring, services.read_cache, services.upstream, imports, public_host
    )
    portal.install(app, portal_vendor, services.cfg, hostnames, cache_api.CacheService(portal_vendor, services.cache))
    return app


async def _watch_parent(stop: asyncio.Event, every: float = 1.0) -> None:
    """A supervised worker stops when its supervisor is gone (its parent changes)."""
    parent = os.getppid()
    while True:  # no event to wait on: the kernel re-parents us silently
        await asyncio.sleep(every)
        if os.getppid() != parent:
            break
    log.warning("supervisor gone: stopping")
    stop.set()


async def _sample_tasks(every: float = 5.0) -> None:
    """The task-count gauge, kept current in every worker (not only the one scraped)."""
    while True:
        metrics.ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
        await asyncio.sleep(every)


async def _watch_keyring(keyring: Keyring, every: float = 2.0) -> None:
    """A key rotation done by the CLI reaches this process within seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(keyring.reload_if_changed)
        except Exception as exc:  # keep serving on the keys we have
            log.error("keyring reload failed: %s", exc)


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The default certificate; SNI swaps in a custom hostname's own (proxy.domains.tls)."""
    if not cfg.proxy.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.proxy.tls_cert_file, cfg.proxy.tls_key_file)
    return ctx


async def serve(cfg: Config, ready: Callable[[], None] | None = None, worker: Worker | None = None) -> None:
    """Run both listeners until SIGTERM/SIGINT; then drain and exit.

    A supervised worker (`serve --workers N`) binds its listeners with SO_REUSEPORT beside
    its siblings: the kernel spreads new connections over them. A listener that cannot
    be bound ends the process (the store closed first, or its thread would keep it alive)."""
    worker = worker or Worker()
    services = await build_services(cfg, worker)
    grace = cfg.proxy.shutdown_grace_seconds
    handler_args = {"max_field_size": MAX_HEADER, "max_line_size": MAX_HEADER}
    proxy_runner = GuardedAppRunner(
        proxy_app(services),
        header_timeout=cfg.limits.header_timeout,
        max_connections=cfg.limits.max_connections,
        access_log_class=accesslog.AccessLogger,
        access_log=logging.getLogger("pullgate.access") if cfg.log.access_log else None,
        handler_cancellation=False,
        shutdown_timeout=grace,
        **handler_args,
    )
    admin_runner = web.AppRunner(admin_app(services), access_log=None, shutdown_timeout=2)
    background: list[asyncio.Task[None]] = []
    try:
        await proxy_runner.setup()
        await admin_runner.setup()
        phost, pport = parse_listen(cfg.proxy.listen, "proxy.listen")
        ahost, aport = parse_listen(cfg.admin.listen, "admin.listen")
        sni = services.hosts.sni if services.hosts else None
        shared = worker.supervised or None  # reuse_port=None leaves the option unset
        ssl_ctx = sni.default if sni else None
        await web.TCPSite(proxy_runner, phost, pport, ssl_context=ssl_ctx, backlog=1024, reuse_port=shared).start()
        await web.TCPSite(admin_runner, ahost, aport, reuse_port=shared).start()
        where = f" (worker {worker.index} of {worker.count}, pid {os.getpid()})" if worker.supervised else ""
        log.info("listening: proxy on %s, admin on %s%s", cfg.proxy.listen, cfg.admin.listen, where)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        background.append(asyncio.create_task(_watch_keyring(services.keyring)))
        if services.hosts is not None:
            background.append(asyncio.create_task(services.hosts.run()))
        background.append(asyncio.create_task(_sample_tasks()))
        if worker.supervised:
            background.append(asyncio.create_task(_watch_parent(stop)))
        if services.pulllog is not None:
            services.pulllog.start()
        if services.notifier is not None:
            services.notifier.start()  # and delivers what a previous run left pending
        if ready is not None:
            ready()
        await stop.wait()
        log.info("stopping: no new connections; running streams get up to %.0fs", grace)
    finally:
        for task in background:
            task.cancel()
        # Stop accepting, let in-flight requests finish (up to the grace), then close.
        await proxy_runner.cleanup()
        await admin_runner.cleanup()
        with contextlib.suppress(Exception):
            await services.close()
    log.info("stopped")
