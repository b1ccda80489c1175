"""Portal routes. Handlers translate forms to VendorService calls and render pages.

Every POST carries the session's CSRF token (checked in `guard` before any
handler runs). A successful POST redirects (303) to a page with a one-shot
flash message; a refused one re-renders its form with the problems and the
submitted values, secrets left out.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from multidict import MultiDict, MultiMapping

from proxy.admin import csvexport
from proxy.admin.mirrors import Mirror, default_hosts_toml
from proxy.admin.portal import forms, usage_pages
from proxy.admin.portal.session import (
    FLASH_COOKIE,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_TTL,
    Session,
    Sessions,
    same_token,
)
from proxy.admin.service import LICENSE_TYPES, VendorService
from proxy.admin.usage import UsageService
from proxy.apierrors import Invalid, NotFound, VendorError
from proxy.domains.service import HostnameService
from proxy.settings import Config
from proxy.store.models import Team

log = logging.getLogger("pullgate.portal")

PREFIX = "/portal"
HERE = Path(__file__).parent
SERVICE = web.AppKey("portal_service", VendorService)
SESSIONS = web.AppKey("portal_sessions", Sessions)
CONFIG = web.AppKey("portal_config", Config)
HOSTNAMES = web.AppKey("portal_hostnames", HostnameService)
TEAM = web.RequestKey("portal_team", Team)
SESSION = web.RequestKey("portal_session", Session)
FORM = web.RequestKey("portal_form", MultiDict)
PUBLIC = {f"{PREFIX}/login", f"{PREFIX}/static/portal.css"}
MAX_LICENSE_FILE = 256 * 1024

# No script at all, styles only from here, no framing, forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self';"
    " frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _url(path: str = "/") -> str:
    return PREFIX + path


def _set_cookie(request: web.Request, resp: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    # Secure whenever the browser reached us over TLS (a TLS admin listener or a trusted front).
    resp.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="Strict", secure=request.secure)


def _see_other(path: str) -> web.Response:
    # A plain response rather than a returned HTTPException, so cookies can ride on it.
    return web.Response(status=303, headers={"Location": _url(path)})


def _redirect(request: web.Request, path: str, flash: str | None = None, kind: str = "ok") -> web.Response:
    resp = _see_other(path)
    if flash:
        _set_cookie(request, resp, FLASH_COOKIE, request.app[SESSIONS].flash(flash, kind), 120)
    return resp


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session, CSRF, error pages and security headers for every portal request."""
    try:
        resp = await _guarded(request, handler)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "text/html":
            exc = _error_page(request, exc.status, exc.reason)
        resp = exc
        _headers(resp, request)
        raise resp from None
    _headers(resp, request)
    return resp


def _headers(resp: web.StreamResponse, request: web.Request) -> None:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    if not request.path.startswith(f"{PREFIX}/static/"):
        resp.headers["Cache-Control"] = "no-store"


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    if request.path in PUBLIC:
        return await handler(request)
    session = sessions.read(request.cookies.get(SESSION_COOKIE))
    team = await request.app[SERVICE].team_for_token_hash(session.token_hash) if session else None
    if session is None or team is None or team.id != session.team_id:
        if request.method == "POST":
            raise _error_page(request, 403, "Your session has ended; log in again.")
        raise web.HTTPSeeOther(_url("/login"))
    request[SESSION], request[TEAM] = session, team
    if request.method == "POST":
        form = await request.post()
        if not same_token(form.get("csrf"), session.csrf):
            log.warning("portal: POST %s refused, bad or missing CSRF token", request.path)
            raise _error_page(request, 403, "The form's security token is missing or stale. Reload and try again.")
        request[FORM] = MultiDict(form)
    try:
        return await handler(request)
    except NotFound as exc:
        raise _error_page(request, 404, exc.message) from None
    except VendorError as exc:
        raise _error_page(request, exc.status, exc.message) from None
    except web.HTTPException:
        raise
    except Exception as exc:
        # The type only: messages of lower layers may carry URLs or values.
        log.error("portal internal error %s on %s %s", type(exc).__name__, request.method, request.path)
        raise _error_page(request, 500, "Something went wrong on the server.") from None


def _error_page(request: web.Request, status: int, message: str) -> web.HTTPException:
    ctx = {"status": status, "message": message}
    html = aiohttp_jinja2.render_string("error.html", request, _context(request, ctx))
    cls = {
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        401: web.HTTPUnauthorized,
        500: web.HTTPInternalServerError,
    }
    return cls.get(status, web.HTTPBadRequest)(text=html, content_type="text/html")


def _context(request: web.Request, ctx: dict[str, Any]) -> dict[str, Any]:
    session = request.get(SESSION)
    team = request.get(TEAM)
    return {"prefix": PREFIX, "team": team, "csrf": session.csrf if session else "", "nav": request.path, **ctx}


def render(request: web.Request, template: str, ctx: dict[str, Any], status: int = 200) -> web.Response:
    full = _context(request, ctx)
    flash = request.app[SESSIONS].read_flash(request.cookies.get(FLASH_COOKIE))
    full.setdefault("flash", flash)
    resp = aiohttp_jinja2.render_template(template, request, full, status=status)
    if flash:
        resp.del_cookie(FLASH_COOKIE, path=PREFIX)
    return resp


def _form(request: web.Request) -> MultiDict[Any]:
    return request[FORM]


def _service(request: web.Request) -> VendorService:
    return request.app[SERVICE]


# --- login ------------------------------------------------------------------------


async def login_page(request: web.Request, error: str | None = None, status: int = 200) -> web.Response:
    csrf, cookie = request.app[SESSIONS].new_login()
    resp = aiohttp_jinja2.render_template(
        "login.html", request, {"prefix": PREFIX, "csrf": csrf, "error": error, "team": None}, status=status
    )
    _set_cookie(request, resp, LOGIN_COOKIE, cookie, 3600)
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    sessions = request.app[SESSIONS]
    form = await request.post()
    if not same_token(form.get("csrf"), sessions.login_csrf(request.cookies.get(LOGIN_COOKIE))):
        return await login_page(request, "The login form expired. Try again.", 403)
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    team = await _service(request).team_for_token(token)
    if team is None:
        return await login_page(request, "That API token is not valid.", 401)
    _, cookie = sessions.new(team.id, token)
    resp = _see_other("/images")
    _set_cookie(request, resp, SESSION_COOKIE, cookie, SESSION_TTL)
    resp.del_cookie(LOGIN_COOKIE, path=PREFIX)
    log.info("portal: team %s logged in", team.name)
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].end(request[SESSION])
    resp = _see_other("/login")
    resp.del_cookie(SESSION_COOKIE, path=PREFIX)
    return resp


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(_url("/images"))


# --- images (external registries) -------------------------------------------------


def _tab(request: web.Request, form: MultiMapping[Any] | None = None) -> str:
    tab = (form.get("tab") if form is not None else None) or request.query.get("provider") or "dockerhub"
    return tab if tab in forms.tabs() else "dockerhub"


async def images(request: web.Request, extra: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    svc, team = _service(request), request[TEAM]
    registries = await svc.list_registries(team)
    apps = await svc.list_apps(team)
    proxy_host = await _proxy_host(request)
    references = []
    for app in apps:
        serving = [r for r in registries if not r["appIds"] or app["id"] in r["appIds"]]
        refs = [f"{proxy_host}/proxy/{app['slug']}/{r['slug']}/<repo>:<tag>" for r in serving]
        # Cluster mirrors: the same images by their original names (containerd, podman/CRI-O).
        mirrors = [Mirror(proxy_host, app["slug"], r["slug"], r["endpoint"]) for r in serving]
        default = default_hosts_toml(proxy_host, app["slug"])
        references.append({"app": app, "refs": refs, "mirrors": mirrors, "default_toml": default})
    tab = (extra or {}).get("tab") or _tab(request)
    tabs = forms.tabs()
    ctx = {
        "registries": registries,
        "apps": apps,
        "references": references,
        "tabs": tabs,
        "tab": tab,
        "fields": tabs[tab][1],
        "common": forms.COMMON,
        "values": {},
        "errors": {},
        "test": None,
        "proxy_host": proxy_host,
        "test_choice": request.query.get("test", ""),
        **(extra or {}),
    }
    return render(request, "images.html", ctx, status)


async def add_registry(request: web.Request) -> web.StreamResponse:
    form = _form(request)
    tab = _tab(request, form)
    body = forms.registry_body(tab, form, forms.tabs()[tab][1])
    try:
        reg = await _service(request).create_registry(request[TEAM], body)
    except (Invalid, VendorError) as exc:
        problems = exc.problems or [exc.message]
        extra = {"tab": tab, "values": forms.echo(form), "errors": forms.problems_by_field(problems)}
        return await images(request, extra, exc.status)
    return _redirect(request, "/images", f"Added external registry {reg['slug']}.")


async def test_registry(request: web.Request) -> web.StreamResponse:
    form = _form(request)
    slug, image = str(form.get("slug", "")), str(form.get("image", "")).strip()
    try:
        result = await _service(request).test_registry(request[TEAM], {"endpoint": slug, "image": image})
        test = {"slug": slug, "image": image, "status": result.status, "ok": result.ok, "reason": result.reason}
    except Invalid as exc:
        test = {"slug": slug, "image": image, "status": None, "ok": False, "reason": "; ".join(exc.problems)}
    return await images(request, {"test": test})


async def remove_registry(request: web.Request) -> web.StreamResponse:
    slug = request.match_info["slug"]
    await _service(request).delete_registry(request[TEAM], slug)
    return _redirect(request, "/images", f"Removed external registry {slug}.")


async def edit_registry(request: web.Request, extra: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    svc, team = _service(request), request[TEAM]
    reg = await svc.registry_json(team, request.match_info["slug"])
    current = forms.edit_values(reg)
    ctx = {
        "reg": reg,
        "apps": await svc.list_apps(team),
        "fields": _edit_fields(reg["provider"]),
        "common": forms.COMMON,
        "values": current,
        "errors": {},
        **(extra or {}),
    }
    return render(request, "registry.html", ctx, status)


def _edit_fields(provider: str) -> tuple[forms.Field, ...]:
    return (*forms.credential_fields(provider), *forms.destination_fields(provider))


async def update_registry(request: web.Request) -> web.StreamResponse:
    form, slug = _form(request), request.match_info["slug"]
    svc, team = _service(request), request[TEAM]
    reg = await svc.registry(team, slug)
    body = forms.registry_body("", form, _edit_fields(reg.provider))
    try:
        await svc.update_registry(team, slug, body)
    except Invalid as exc:
        extra = {"values": forms.echo(form), "errors": forms.problems_by_field(exc.problems)}
        return await edit_registry(request, extra, 400)
    return _redirect(request, "/images", f"Updated external registry {slug}.")


# --- customers --------------------------------------------------------------------


def _date_in(raw: Any) -> str | None:
    """An <input type=date> value as the service's ISO time (midnight UTC), or None for empty."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    raw = raw.strip()
    return f"{raw}T00:00:00Z" if len(raw) == 10 else raw


async def customers(request: web.Request, extra: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    svc, team = _service(request), request[TEAM]
    apps = await svc.list_apps(team)
    ctx = {
        "customers": await svc.list_customers(team),
        "apps": apps,
        # Channel names across the team's apps (each app starts with Stable, Beta, Unstable).
        "channel_names": list(dict.fromkeys(ch["name"] for a in apps for ch in a["channels"])),
        "license_types": LICENSE_TYPES,
        "values": {},
        "errors": {},
        "import_errors": [],
        **(extra or {}),
    }
    return render(request, "customers.html", ctx, status)


async def create_customer(request: web.Request) -> web.StreamResponse:
    form = _form(request)
    body: dict[str, Any] = {k: str(form.get(k, "")).strip() for k in ("name", "email", "appSlug", "licenseType")}
    body["expiresAt"] = _date_in(form.get("expiresAt"))
    body["customId"] = str(form.get("customId", "")).strip() or None
    channel = str(form.get("channel", "")).strip()
    if channel:
        body["channels"] = [channel]
    try:
        c = await _service(request).create_customer(request[TEAM], body)
    except Invalid as exc:
        extra = {"values": forms.echo(form), "errors": forms.problems_by_field(exc.problems)}
        return await customers(request, extra, 400)
    return _redirect(request, f"/customers/{c['id']}", f"Created customer {c['name']}.")


async def import_license(request: web.Request) -> web.StreamResponse:
    upload = _form(request).get("license")
    text = ""
    if isinstance(upload, web.FileField):
        data = upload.file.read(MAX_LICENSE_FILE + 1)
        if len(data) <= MAX_LICENSE_FILE:
            text = data.decode("utf-8", "replace")
    if not text.strip():
        return await customers(request, {"import_errors": ["license: choose a KOTS license file (YAML)"]}, 400)
    try:
        c, created = await _service(request).import_license(request[TEAM], text)
    except VendorError as exc:
        return await customers(request, {"import_errors": exc.problems or [exc.message]}, exc.status)
    verb = "Imported" if created else "Updated"
    return _redirect(request, f"/customers/{c['id']}", f"{verb} customer {c['name']} from the license file.")


async def customer(request: web.Request, extra: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    svc, team = _service(request), request[TEAM]
    # The vendor's own page: the one place the portal shows a license ID.
    c = await svc.customer(team, request.match_info["id"], with_license=True)
    hosts = request.app[CONFIG].proxy.hosts
    ctx = {
        "c": c,
        "app_channels": await svc.channels(team, c["appId"]),
        "proxy_host": hosts[0] if hosts else "<proxy host>",
        "errors": {},
        **(extra or {}),
    }
    ctx |= await usage_pages.customer_usage(UsageService(svc), team, c["id"], PREFIX)
    return render(request, "customer.html", ctx, status)


async def customer_channels(request: web.Request) -> web.StreamResponse:
    """The checked channels, the one marked default first."""
    cid, form = request.match_info["id"], _form(request)
    chosen = [v for v in form.getall("channel", []) if isinstance(v, str)]
    default = str(form.get("default", ""))
    ordered = sorted(chosen, key=lambda ch: ch != default)
    try:
        if not ordered:
            raise Invalid(["channels: choose at least one channel"])
        await _service(request).update_customer(request[TEAM], cid, {"channels": ordered})
    except Invalid as exc:
        return await customer(request, {"errors": forms.problems_by_field(exc.problems)}, 400)
    return _redirect(request, f"/customers/{cid}", "Channels saved.")


async def customer_threshold(request: web.Request) -> web.StreamResponse:
    cid, form = request.match_info["id"], _form(request)
    try:
        limit = usage_pages.threshold_from_form(str(form.get("amount", "")), str(form.get("unit", "")))
    except ValueError:
        problem = "egressThresholdBytes: a positive amount and a unit, or empty for none"
        return await customer(request, {"errors": forms.problems_by_field([problem])}, 400)
    try:
        await _service(request).update_customer(request[TEAM], cid, {"egressThresholdBytes": limit})
    except Invalid as exc:
        return await customer(request, {"errors": forms.problems_by_field(exc.problems)}, 400)
    return _redirect(request, f"/customers/{cid}", "Egress threshold saved." if limit else "Egress threshold removed.")


async def customer_expiry(request: web.Request) -> web.StreamResponse:
    cid = request.match_info["id"]
    try:
        body = {"expiresAt": _date_in(_form(request).get("expiresAt"))}
        await _service(request).update_customer(request[TEAM], cid, body)
    except Invalid as exc:
        return await customer(request, {"errors": forms.problems_by_field(exc.problems)}, 400)
    return _redirect(request, f"/customers/{cid}", "Expiry saved.")


async def customer_action(request: web.Request) -> web.StreamResponse:
    cid, action = request.match_info["id"], request.match_info["action"]
    c = await _service(request).set_customer_status(request[TEAM], cid, action)
    return _redirect(request, f"/customers/{cid}", f"Customer {c['name']} is now {c['status']}.")


# --- pull logs ----------------------------------------------------------------------


def _time_in(raw: str) -> str:
    """<input type=datetime-local> gives a zone-less time; the portal shows and takes UTC."""
    raw = raw.strip()
    return raw + "Z" if raw and len(raw) <= 19 and "+" not in raw and not raw.endswith("Z") else raw


async def pull_logs(request: web.Request) -> web.Response:
    svc, team = _service(request), request[TEAM]
    q = {k: request.query.get(k, "").strip() for k in ("customer", "registry", "since", "until")}
    query = {k: (_time_in(v) if k in ("since", "until") else v) for k, v in q.items() if v}
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        rows = await svc.pull_logs(team, query)
    except Invalid as exc:
        problems = exc.problems
    except NotFound as exc:
        problems = [exc.message]
    ctx = {
        "rows": rows,
        "q": q,
        "log_problems": problems,
        "customers": await svc.list_customers(team),
        "registries": await svc.list_registries(team),
    }
    return render(request, "logs.html", ctx, 400 if problems else 200)


async def pull_logs_csv(request: web.Request) -> web.StreamResponse:
    """The pull log's filters as on the page, every matching row, oldest first."""
    q = {k: request.query.get(k, "").strip() for k in ("customer", "registry", "since", "until")}
    query = {k: (_time_in(v) if k in ("since", "until") else v) for k, v in q.items() if v}
    pages = await UsageService(_service(request)).pull_log_pages(request[TEAM], query)
    return await csvexport.stream(request, "pull-logs.csv", csvexport.PULL_LOG_COLUMNS, pages)


# --- insights: egress, top customers and images, the cache ---------------------------


async def insights(request: web.Request) -> web.Response:
    days = usage_pages.period_of(request.query.get("days"))
    ctx = await usage_pages.insights(UsageService(_service(request)), request[TEAM], days, PREFIX)
    return render(request, "insights.html", ctx)


async def insights_csv(request: web.Request) -> web.StreamResponse:
    keys = ("groupBy", "customer", "app", "since", "until")
    query = {k: request.query[k] for k in keys if request.query.get(k)}
    report = await UsageService(_service(request)).egress(request[TEAM], query)
    name = f"egress-{report['groupBy']}-{report['since']}-{report['until']}.csv"
    columns = csvexport.egress_columns(report["groupBy"])
    return await csvexport.stream(request, name, columns, csvexport.one_page(report["rows"]))


# --- the team webhook ----------------------------------------------------------------


async def webhook_page(request: web.Request, extra: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    svc = UsageService(_service(request))
    ctx = {
        "webhook": await svc.webhook(request[TEAM]),
        "deliveries": await svc.deliveries(request[TEAM], {"limit": "50"}),
        "values": {},
        "errors": {},
        **(extra or {}),
    }
    return render(request, "webhook.html", ctx, status)


async def set_webhook(request: web.Request) -> web.StreamResponse:
    form = _form(request)
    body: dict[str, Any] = {"url": str(form.get("url", "")).strip()}
    secret = str(form.get("secret", ""))
    if form.get("no_secret"):
        body["secret"] = None
    elif secret:
        body["secret"] = secret
    try:
        await UsageService(_service(request)).put_webhook(request[TEAM], body)
    except Invalid as exc:
        extra = {"values": {"url": body["url"]}, "errors": forms.problems_by_field(exc.problems)}
        return await webhook_page(request, extra, 400)
    return _redirect(request, "/webhook", "Webhook saved.")


async def remove_webhook(request: web.Request) -> web.StreamResponse:
    await UsageService(_service(request)).delete_webhook(request[TEAM])
    return _redirect(request, "/webhook", "Webhook removed.")


# --- apps ----------------------------------------------------------------------------


def _lines(raw: Any) -> list[str]:
    return [line.strip() for line in str(raw or "").splitlines() if line.strip()]


async def apps(request: web.Request, extra: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    ctx = {
        "apps": await _service(request).list_apps(request[TEAM]),
        "values": {},
        "errors": {},
        "edit_errors": {},
        **(extra or {}),
    }
    return render(request, "apps.html", ctx, status)


async def create_app(request: web.Request) -> web.StreamResponse:
    form = _form(request)
    body: dict[str, Any] = {"slug": str(form.get("slug", "")).strip(), "imageAllowlist": _lines(form.get("allowlist"))}
    if str(form.get("name", "")).strip():
        body["name"] = str(form["name"]).strip()
    key = str(form.get("kotsPublicKey", "")).strip()
    if key:
        body["kotsPublicKey"] = key
    try:
        app = await _service(request).create_app(request[TEAM], body)
    except VendorError as exc:
        extra = {"values": forms.echo(form), "errors": forms.problems_by_field(exc.problems or [exc.message])}
        return await apps(request, extra, exc.status)
    return _redirect(request, "/apps", f"Created app {app['slug']}.")


async def update_app(request: web.Request) -> web.StreamResponse:
    slug, form = request.match_info["slug"], _form(request)
    try:
        await _service(request).update_app(request[TEAM], slug, {"imageAllowlist": _lines(form.get("allowlist"))})
    except Invalid as exc:
        return await apps(request, {"edit_errors": {slug: exc.problems}}, 400)
    return _redirect(request, "/apps", f"Saved the image allowlist of {slug}.")


# --- custom hostnames ---------------------------------------------------------------


def _hostnames(request: web.Request) -> HostnameService:
    svc = request.app.get(HOSTNAMES)
    if svc is None:
        raise _error_page(request, 404, "Custom hostnames are not enabled on this server.")
    return svc


async def _proxy_host(request: web.Request) -> str:
    """The host in pull references: the team's default verified hostname, else the first configured one."""
    svc = request.app.get(HOSTNAMES)
    default = await svc.default_hostname(request[TEAM]) if svc is not None else None
    if default:
        return default
    hosts = request.app[CONFIG].proxy.hosts
    return hosts[0] if hosts else "<proxy host>"


def cert_state(cert: dict[str, Any] | None, now: dt.datetime | None = None) -> str:
    """none | ok | expiring | expired, for a hostname_json certificate."""
    if not cert:
        return "none"
    not_after = dt.datetime.fromisoformat(cert["notAfter"].replace("Z", "+00:00"))
    if not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=dt.UTC)
    if not_after <= (now or dt.datetime.now(dt.UTC)):
        return "expired"
    return "expiring" if cert.get("expiringSoon") else "ok"


async def hostnames_page(request: web.Request, extra: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    rows = await _hostnames(request).list(request[TEAM])
    for h in rows:
        h["certState"] = cert_state(h["certificate"])
    hosts = request.app[CONFIG].proxy.hosts
    ctx = {
        "hostnames": rows,
        "config_host": hosts[0] if hosts else "<proxy host>",
        "values": {},
        "errors": [],
        "http_challenge": request.app[CONFIG].domains.http_challenge,
        "cert_for": None,
        "cert_errors": [],
        "cert_value": "",
        "row_errors": {},
        **(extra or {}),
    }
    return render(request, "hostnames.html", ctx, status)


async def add_hostname(request: web.Request) -> web.StreamResponse:
    form = _form(request)
    name = str(form.get("hostname", "")).strip().lower()
    try:
        h = await _hostnames(request).add(request[TEAM], {"hostname": name})
    except VendorError as exc:
        extra = {"values": {"hostname": name}, "errors": exc.problems or [exc.message]}
        return await hostnames_page(request, extra, exc.status)
    return _redirect(request, "/hostnames", f"Added {h['hostname']}: create its TXT record, then verify.")


async def verify_hostname(request: web.Request) -> web.StreamResponse:
    name = request.match_info["hostname"]
    h = await _hostnames(request).verify(request[TEAM], name)
    if h["status"] == "verified" and not h["reason"]:
        return _redirect(request, "/hostnames", f"{h['hostname']} is verified.")
    return _redirect(request, "/hostnames", f"Verification of {h['hostname']} failed: {h['reason']}", "error")


async def default_hostname(request: web.Request) -> web.StreamResponse:
    name = request.match_info["hostname"]
    try:
        h = await _hostnames(request).set_default(request[TEAM], name)
    except VendorError as exc:
        return await hostnames_page(request, {"row_errors": {name.lower(): exc.problems or [exc.message]}}, exc.status)
    return _redirect(request, "/hostnames", f"{h['hostname']} is now the default for pull references.")


async def hostname_certificate(request: web.Request) -> web.StreamResponse:
    name, form = request.match_info["hostname"], _form(request)
    body = {"certificate": forms.pem_field(form, "certificate"), "key": forms.pem_field(form, "key")}
    try:
        h = await _hostnames(request).set_certificate(request[TEAM], name, body)
    except Invalid as exc:
        # The certificate is public and comes back; the key never does.
        extra = {"cert_for": name.lower(), "cert_errors": exc.problems, "cert_value": body["certificate"].strip()}
        return await hostnames_page(request, extra, exc.status)
    expiry = _when(h["certificate"]["notAfter"]) if h["certificate"] else "?"
    return _redirect(request, "/hostnames", f"Certificate for {h['hostname']} saved; it expires {expiry}.")


async def remove_hostname(request: web.Request) -> web.StreamResponse:
    name = request.match_info["hostname"]
    await _hostnames(request).remove(request[TEAM], name)
    return _redirect(request, "/hostnames", f"Removed {name.lower()}.")


# --- wiring --------------------------------------------------------------------------


def _when(value: str | None, seconds: bool = False) -> str:
    """Stored ISO times, shown in UTC to the minute (pull logs: to the second)."""
    if not value:
        return "—"
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if t.tzinfo:
        t = t.astimezone(dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def _short(ref: str | None) -> str:
    """A digest cut to what a person compares (the full one is in the cell's title)."""
    if ref and ref.startswith("sha256:") and len(ref) > 19:
        return ref[:19] + "…"
    return ref or "—"


def _size(n: int | None) -> str:
    if not n:
        return "0 B"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def portal_app(
    service: VendorService, sessions: Sessions, cfg: Config, hostnames: HostnameService | None = None
) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_LICENSE_FILE + 64 * 1024)
    app[SERVICE], app[SESSIONS], app[CONFIG] = service, sessions, cfg
    if hostnames is not None:
        app[HOSTNAMES] = hostnames
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    env.filters["when"] = _when
    env.filters["size"] = _size
    env.filters["short"] = _short
    r = app.router
    r.add_get("/", home)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/images", images)
    r.add_post("/images", add_registry)
    r.add_post("/images/test", test_registry)
    r.add_get("/images/{slug}", edit_registry)
    r.add_post("/images/{slug}", update_registry)
    r.add_post("/images/{slug}/remove", remove_registry)
    r.add_get("/customers", customers)
    r.add_post("/customers", create_customer)
    r.add_post("/customers/import", import_license)
    r.add_get("/customers/{id}", customer)
    r.add_post("/customers/{id}/expiry", customer_expiry)
    r.add_post("/customers/{id}/threshold", customer_threshold)
    r.add_post("/customers/{id}/channels", customer_channels)
    r.add_post("/customers/{id}/{action:revoke|archive|restore}", customer_action)
    r.add_get("/logs", pull_logs)
    r.add_get("/logs.csv", pull_logs_csv)
    r.add_get("/insights", insights)
    r.add_get("/insights.csv", insights_csv)
    r.add_get("/webhook", webhook_page)
    r.add_post("/webhook", set_webhook)
    r.add_post("/webhook/remove", remove_webhook)
    r.add_get("/apps", apps)
    r.add_post("/apps", create_app)
    r.add_post("/apps/{slug}", update_app)
    r.add_get("/hostnames", hostnames_page)
    r.add_post("/hostnames", add_hostname)
    r.add_post("/hostnames/{hostname}/verify", verify_hostname)
    r.add_post("/hostnames/{hostname}/default", default_hostname)
    r.add_post("/hostnames/{hostname}/certificate", hostname_certificate)
    r.add_post("/hostnames/{hostname}/remove", remove_hostname)
    r.add_get("/static/portal.css", _stylesheet)
    return app


_CSS = HERE / "static" / "portal.css"


async def _stylesheet(_: web.Request) -> web.FileResponse:
    return web.FileResponse(_CSS, headers={"Cache-Control": "max-age=300", "Content-Type": "text/css"})


def install(
    admin: web.Application, service: VendorService, cfg: Config, hostnames: HostnameService | None = None
) -> None:
    """Mount at /portal/ on the admin app; `/` sends a browser there."""
    sessions = Sessions(service.keyring)
    admin.add_subapp(PREFIX, portal_app(service, sessions, cfg, hostnames))

    async def root(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(_url("/"))

    admin.router.add_get("/", root)
