"""Vendor API routes for custom hostnames, mounted in the /vendor/v3 sub-app."""

from __future__ import annotations

from aiohttp import web

from proxy.admin.api import TEAM, json_answer, json_body
from proxy.domains.service import HostnameService


def install(app: web.Application, service: HostnameService) -> None:
    async def listing(request: web.Request) -> web.Response:
        return json_answer({"custom_hostnames": await service.list(request[TEAM])})

    async def add(request: web.Request) -> web.Response:
        return json_answer({"custom_hostname": await service.add(request[TEAM], await json_body(request))}, 201)

    async def remove(request: web.Request) -> web.Response:
        await service.remove(request[TEAM], request.match_info["hostname"])
        return web.Response(status=204)

    async def verify(request: web.Request) -> web.Response:
        return json_answer({"custom_hostname": await service.verify(request[TEAM], request.match_info["hostname"])})

    async def default(request: web.Request) -> web.Response:
        hostname = request.match_info["hostname"]
        return json_answer({"custom_hostname": await service.set_default(request[TEAM], hostname)})

    async def certificate(request: web.Request) -> web.Response:
        body = await json_body(request)
        hostname = request.match_info["hostname"]
        return json_answer({"custom_hostname": await service.set_certificate(request[TEAM], hostname, body)})

    r = app.router
    r.add_get("/custom_hostnames", listing)
    r.add_post("/custom_hostnames", add)
    r.add_delete("/custom_hostname/{hostname}", remove)
    r.add_post("/custom_hostname/{hostname}/verify", verify)
    r.add_post("/custom_hostname/{hostname}/default", default)
    r.add_put("/custom_hostname/{hostname}/certificate", certificate)
