"""The vendor API, `/vendor/v3/...` on the admin listener (never the proxy listener).

A sub-application: its auth and error middlewares apply to it alone, so the
portal and /metrics beside it are untouched. Authentication is a team API
token, `Authorization: <token>` or `Authorization: Bearer <token>`, looked up
by its SHA-256. Errors are `{"message": ...}` (plus `errors`, the list of every
problem, on a 400). Handlers only translate HTTP to VendorService calls.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.admin import csvexport
from proxy.admin.openapi import document
from proxy.admin.service import VendorService
from proxy.admin.usage import UsageService
from proxy.apierrors import Invalid, Unauthorized, VendorError
from proxy.store.models import Team

log = logging.getLogger("pullgate.vendor")

PREFIX = "/vendor/v3"
TEAM = web.RequestKey("vendor_team", Team)
SERVICE = web.AppKey("vendor_service", VendorService)
PUBLIC = {f"{PREFIX}/openapi.json"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_answer(data: Any, status: int = 200) -> web.Response:
    """A JSON answer of the vendor API (never cached: it may describe credentials)."""
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VendorError as exc:
        headers = {"WWW-Authenticate": 'Bearer realm="pullgate vendor API"'} if exc.status == 401 else {}
        return web.json_response(exc.body(), status=exc.status, headers=headers | exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"message": exc.reason.lower()}, status=exc.status)
    except Exception as exc:
        # The type only: messages of lower layers may carry URLs or values.
        log.error("vendor API internal error %s on %s %s", type(exc).__name__, request.method, request.path)
        return web.json_response({"message": "internal error"}, status=500)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC:
        raw = request.headers.get("Authorization", "").strip()
        scheme, _, rest = raw.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else raw
        team = await request.app[SERVICE].team_for_token(token)
        if team is None:
            raise Unauthorized("a valid API token is required (Authorization: <token>)")
        request[TEAM] = team
    return await handler(request)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; 400 Invalid when it is not one."""
    try:
        data = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise Invalid(["body: not valid JSON"]) from None
    if not isinstance(data, dict):
        raise Invalid(["body: must be a JSON object"])
    return data


def api_app(service: VendorService) -> web.Application:
    app = web.Application(middlewares=[errors, authenticate], client_max_size=1024 * 1024)
    app[SERVICE] = service
    svc = service
    r = app.router

    def team(request: web.Request) -> Team:
        return request[TEAM]

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(document())

    # -- external registries: the fixed paths come before {slug}
    async def registries(request: web.Request) -> web.Response:
        return json_answer({"external_registries": await svc.list_registries(team(request))})

    async def create_registry(request: web.Request) -> web.Response:
        body = await json_body(request)
        return json_answer({"external_registry": await svc.create_registry(team(request), body)}, 201)

    async def test_registry(request: web.Request) -> web.Response:
        result = await svc.test_registry(team(request), await json_body(request))
        return json_answer({"status": result.status, "ok": result.ok, "reason": result.reason})

    async def registry_logs(request: web.Request) -> web.Response:
        query = dict(request.query)
        if not query.get("endpoint"):
            raise Invalid(["endpoint: required (the registry's endpoint host or slug)"])
        return json_answer({"logs": await svc.pull_logs(team(request), query)})

    async def get_registry(request: web.Request) -> web.Response:
        return json_answer({"external_registry": await svc.registry_json(team(request), request.match_info["slug"])})

    async def update_registry(request: web.Request) -> web.Response:
        body = await json_body(request)
        registry = await svc.update_registry(team(request), request.match_info["slug"], body)
        return json_answer({"external_registry": registry})

    async def delete_registry(request: web.Request) -> web.Response:
        await svc.delete_registry(team(request), request.match_info["slug"])
        return web.Response(status=204)

    # -- apps
    async def apps(request: web.Request) -> web.Response:
        return json_answer({"apps": await svc.list_apps(team(request))})

    async def create_app(request: web.Request) -> web.Response:
        return json_answer({"app": await svc.create_app(team(request), await json_body(request))}, 201)

    async def get_app(request: web.Request) -> web.Response:
        t = team(request)
        return json_answer({"app": await svc.app_out(t, await svc.app(t, request.match_info["slug"]))})

    async def update_app(request: web.Request) -> web.Response:
        body = await json_body(request)
        return json_answer({"app": await svc.update_app(team(request), request.match_info["slug"], body)})

    # -- release channels, an app's customers and hostnames, as the `replicated` CLI asks for them
    async def channels(request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"channelName", "excludeDetail"})
        if unknown:
            raise Invalid([f"{k}: unknown query parameter" for k in unknown])
        name = request.query.get("channelName")
        return json_answer({"channels": await svc.channels(team(request), request.match_info["app"], name)})

    async def channel(request: web.Request) -> web.Response:
        app, cid = request.match_info["app"], request.match_info["channel"]
        return json_answer({"channel": await svc.channel(team(request), app, cid)})

    async def app_customers(request: web.Request) -> web.Response:
        page, total = await svc.customers_page(team(request), request.match_info["app"], request.query)
        return json_answer({"customers": page, "totalCustomers": total})

    async def app_hostnames(request: web.Request) -> web.Response:
        # `Body`: the CLI decodes into a struct field of that name, without a JSON tag.
        return json_answer({"Body": await svc.app_custom_hostnames(team(request), request.match_info["app"])})

    async def search_customers(request: web.Request) -> web.Response:
        hits, total = await svc.search_customers(team(request), await json_body(request))
        return json_answer({"customers": hits, "total_hits": total})

    # -- customers
    async def customers(request: web.Request) -> web.Response:
        unknown = sorted(set(request.query) - {"appSlug"})
        if unknown:
            raise Invalid([f"{k}: unknown query parameter" for k in unknown])
        return json_answer({"customers": await svc.list_customers(team(request), request.query.get("appSlug"))})

    async def create_customer(request: web.Request) -> web.Response:
        return json_answer({"customer": await svc.create_customer(team(request), await json_body(request))}, 201)

    async def get_customer(request: web.Request) -> web.Response:
        # The vendor's own view: it may see the license ID it hands to its customer.
        return json_answer({"customer": await svc.customer(team(request), request.match_info["id"], with_license=True)})

    async def update_customer(request: web.Request) -> web.Response:
        body = await json_body(request)
        return json_answer({"customer": await svc.update_customer(team(request), request.match_info["id"], body)})

    async def customer_action(request: web.Request) -> web.Response:
        cid, action = request.match_info["id"], request.match_info["action"]
        return json_answer({"customer": await svc.set_customer_status(team(request), cid, action)})

    async def import_license(request: web.Request) -> web.Response:
        body = await json_body(request)
        text = body.get("license")
        problems = [f"{k}: unknown field" for k in sorted(set(body) - {"license"})]
        if not isinstance(text, str) or not text.strip():
            problems.append("license: required, the KOTS License YAML as a string")
        if problems:
            raise Invalid(problems)
        assert isinstance(text, str)  # checked above
        customer, created = await svc.import_license(team(request), text)
        return json_answer({"customer": customer, "created": created}, 201 if created else 200)

    # -- pull logs
    async def pull_logs(request: web.Request) -> web.StreamResponse:
        if csvexport.wants_csv(request):  # every matching row, oldest first, streamed
            pages = await UsageService(svc).pull_log_pages(team(request), request.query)
            return await csvexport.stream(request, "pull-logs.csv", csvexport.PULL_LOG_COLUMNS, pages)
        query = dict(request.query)
        if query.pop("format", "json") != "json":
            raise Invalid(["format: json or csv"])
        return json_answer({"logs": await svc.pull_logs(team(request), query)})

    r.add_get("/openapi.json", openapi)
    r.add_get("/external_registries", registries)
    r.add_post("/external_registry", create_registry)
    r.add_put("/external_registry/test", test_registry)
    r.add_get("/external_registry/logs", registry_logs)
    r.add_get("/external_registry/{slug}", get_registry)
    r.add_put("/external_registry/{slug}", update_registry)
    r.add_delete("/external_registry/{slug}", delete_registry)
    r.add_get("/apps", apps)
    r.add_post("/app", create_app)
    r.add_get("/app/{slug}", get_app)
    r.add_patch("/app/{slug}", update_app)
    r.add_get("/app/{app}/channels", channels)
    r.add_get("/app/{app}/channel/{channel}", channel)
    r.add_get("/app/{app}/customers", app_customers)
    r.add_get("/app/{app}/custom-hostnames", app_hostnames)
    r.add_post("/customers/search", search_customers)
    r.add_get("/customers", customers)
    r.add_post("/customer", create_customer)
    r.add_get("/customer/{id}", get_customer)
    r.add_patch("/customer/{id}", update_customer)
    r.add_post("/customer/{id}/{action:revoke|archive|restore}", customer_action)
    r.add_post("/license/import", import_license)
    r.add_get("/pull_logs", pull_logs)
    return app


def install(
    admin: web.Application, service: VendorService, extend: Callable[[web.Application], None] | None = None
) -> None:
    """Mount the API; `extend` adds routes of other concerns (custom hostnames) to it."""
    sub = api_app(service)
    if extend is not None:
        extend(sub)
    admin.add_subapp(PREFIX, sub)

    async def other_version(request: web.Request) -> web.Response:
        # Clients of Replicated's other API versions (/vendor/v1...) get a JSON 404 that says why.
        return web.json_response({"message": f"not found: pullgate serves the vendor API under {PREFIX}"}, status=404)

    admin.router.add_route("*", "/vendor/{tail:.*}", other_version)
