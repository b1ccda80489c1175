"""Builds the two aiohttp applications and runs them.

The proxy listener serves only the OCI pull API; the admin listener (vendor
API, portal, metrics, health) is a separate application on its own socket, so
nothing of it can be reached through the proxy listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy import accesslog, bootstrap, logs, metrics, pulllog
from proxy.admin import api as vendor_api
from proxy.admin import hostnames as hostname_api
from proxy.admin import portal, usage_api
from proxy.admin.service import VendorService
from proxy.admin.usage import UsageService
from proxy.admin.webhooks import Notifier
from proxy.auth.gate import Gate
from proxy.auth.proxies import TrustedProxies
from proxy.auth.tokens import TokenIssuer
from proxy.config import Config, keys_path, parse_listen
from proxy.context import REQUEST_ID
from proxy.domains.names import Reserved
from proxy.domains.routing import HostTable
from proxy.domains.service import HostnameService
from proxy.domains.tls import SNIContexts
from proxy.listener import GuardedAppRunner
from proxy.pull.limits import StreamSlots
from proxy.pull.middleware import oci_errors
from proxy.pull.routes import OCIRoutes
from proxy.pulllog import PullLog
from proxy.ratelimit import RateLimiter
from proxy.secrets import Keyring
from proxy.store import Store, open_store
from proxy.store.readcache import StoreReadCache
from proxy.upstream.client import UpstreamClient

log = logging.getLogger("pullgate")

MAX_HEADER = 16 * 1024


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

    async def close(self) -> None:
        if self.pulllog is not None:
            await self.pulllog.close()  # writes what is still queued, before the store closes
        if self.notifier is not None:
            await self.notifier.close()
        await self.upstream.close()
        await self.store.close()


SERVICES = web.AppKey("services", Services)


async def build_services(cfg: Config) -> Services:
    keyring = await asyncio.to_thread(Keyring.load_or_create, keys_path(cfg))
    store = await open_store(cfg.store, cfg.base_dir)
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

    def changed_elsewhere(kind: str) -> None:
        # Another replica (or this one) changed something: drop caches, reload hostnames.
        read_cache.invalidate()
        hosts.changed()

    await store.listen(changed_elsewhere)
    notifier = Notifier(store, keyring, upstream, cfg.webhooks)

    async def thresholds(batch: list[pulllog.PullEvent]) -> None:
        await notifier.pulls_written((e.customer_id, e.time) for e in batch if e.customer_id)

    pulls = PullLog(store, cfg.pulllog, on_written=thresholds)
    return Services(cfg, store, keyring, read_cache, upstream, gate, pulls, hosts, hostnames, notifier)


@web.middleware
async def request_id(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request[REQUEST_ID] = secrets.token_hex(8)
    return await handler(request)


async def _set_request_id(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["X-Request-Id"] = rid


def proxy_app(services: Services) -> web.Application:
    middlewares: list[Middleware] = [request_id, oci_errors]
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
    routes.install(app)
    app.on_response_prepare.append(_set_request_id)
    return app


def admin_app(services: Services) -> web.Application:
    app = web.Application()
    app[SERVICES] = services

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        try:
            ok = await asyncio.wait_for(services.store.ping(), 2)
        except Exception:
            ok = False
        ready = ok and bool(services.keyring.keys)
        return web.json_response({"store": ok, "keyring": bool(services.keyring.keys)}, status=200 if ready else 503)

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

    vendor_api.install(app, vendor, extend=extend)
    # The web portal: the same team-scoped service layer, behind a browser session.
    portal.install(
        app,
        VendorService(services.store, services.keyring, services.read_cache, services.upstream, imports, public_host),
        services.cfg,
        hostnames,
    )
    return app


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


async def serve(cfg: Config, ready: Callable[[], None] | None = None) -> None:
    """Run both listeners until SIGTERM/SIGINT; then drain and exit."""
    services = await build_services(cfg)
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
    await proxy_runner.setup()
    await admin_runner.setup()
    phost, pport = parse_listen(cfg.proxy.listen, "proxy.listen")
    ahost, aport = parse_listen(cfg.admin.listen, "admin.listen")
    sni = services.hosts.sni if services.hosts else None
    await web.TCPSite(proxy_runner, phost, pport, ssl_context=sni.default if sni else None, backlog=1024).start()
    await web.TCPSite(admin_runner, ahost, aport).start()
    log.info("listening: proxy on %s, admin on %s", cfg.proxy.listen, cfg.admin.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_keyring(services.keyring))
    host_refresher = asyncio.create_task(services.hosts.run()) if services.hosts else None
    if services.pulllog is not None:
        services.pulllog.start()
    if services.notifier is not None:
        services.notifier.start()  # and delivers what a previous run left pending
    if ready is not None:
        ready()
    await stop.wait()
    watcher.cancel()
    if host_refresher is not None:
        host_refresher.cancel()
    log.info("stopping: no new connections; running streams get up to %.0fs", grace)
    # Stop accepting, let in-flight requests finish (up to the grace), then close.
    await proxy_runner.cleanup()
    await admin_runner.cleanup()
    with contextlib.suppress(Exception):
        await services.close()
    log.info("stopped")
