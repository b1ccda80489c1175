"""Vendor API routes for egress reports and the team webhook, mounted in the /vendor/v3 sub-app."""

from __future__ import annotations

from aiohttp import web

from proxy.admin import csvexport
from proxy.admin.api import TEAM, json_answer, json_body
from proxy.admin.usage import UsageService


def install(app: web.Application, service: UsageService) -> None:
    async def egress(request: web.Request) -> web.StreamResponse:
        report = await service.egress(request[TEAM], request.query)
        if csvexport.wants_csv(request):
            name = f"egress-{report['groupBy']}-{report['since']}-{report['until']}.csv"
            columns = csvexport.egress_columns(report["groupBy"])
            return await csvexport.stream(request, name, columns, csvexport.one_page(report["rows"]))
        return json_answer(report)

    async def get_webhook(request: web.Request) -> web.Response:
        return json_answer({"webhook": await service.webhook(request[TEAM])})

    async def put_webhook(request: web.Request) -> web.Response:
        body = await json_body(request)
        return json_answer({"webhook": await service.put_webhook(request[TEAM], body)})

    async def delete_webhook(request: web.Request) -> web.Response:
        await service.delete_webhook(request[TEAM])
        return web.Response(status=204)

    async def deliveries(request: web.Request) -> web.Response:
        return json_answer({"deliveries": await service.deliveries(request[TEAM], request.query)})

    async def customer_egress(request: web.Request) -> web.Response:
        state = await service.threshold_state(request[TEAM], request.match_info["id"])
        return json_answer({"egress": state})

    r = app.router
    r.add_get("/egress", egress)
    r.add_get("/team/webhook", get_webhook)
    r.add_put("/team/webhook", put_webhook)
    r.add_delete("/team/webhook", delete_webhook)
    r.add_get("/team/webhook/deliveries", deliveries)
    r.add_get("/customer/{id}/egress", customer_egress)
