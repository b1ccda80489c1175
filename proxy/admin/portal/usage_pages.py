"""What the portal's Insights page, the customer page's usage section and the Webhook page
show: egress and pulls per day, the top customers and images, the cache hit ratio and
threshold states, gathered from UsageService and drawn by proxy.admin.portal.charts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from proxy.admin.portal import charts
from proxy.admin.usage import UsageService, today
from proxy.store import usage
from proxy.store.models import Team

PERIODS = (7, 30, 90)
TOP = 10


def period_of(raw: str | None) -> int:
    return int(raw) if raw and raw.isdigit() and int(raw) in PERIODS else 30


def _span(days: int) -> tuple[str, str, list[str]]:
    """The last `days` UTC days, today included: (since, until, every day)."""
    end = today() + dt.timedelta(days=1)
    first = end - dt.timedelta(days=days)
    every = [(first + dt.timedelta(days=i)).isoformat() for i in range(days)]
    return first.isoformat(), end.isoformat(), every


def _daily(rows: list[dict[str, Any]], every: list[str], key: str) -> list[tuple[str, int]]:
    by_day = {r["day"]: r[key] for r in rows}
    return [(day[5:], int(by_day.get(day, 0))) for day in every]  # MM-DD under the bars


async def insights(svc: UsageService, team: Team, days: int, prefix: str) -> dict[str, Any]:
    since, until, every = _span(days)
    query = {"since": since, "until": until}
    daily = await svc.egress_rows(team, await svc.egress_query(team, {**query, "groupBy": "day"}))
    customers = await svc.egress_rows(team, await svc.egress_query(team, {**query, "groupBy": "customer"}), TOP)
    images = await svc.egress_rows(team, await svc.egress_query(team, {**query, "groupBy": "image"}), TOP)
    hits = await usage.cache_hits(svc.store, team.id, since, until)
    ratio = hits[0] / (hits[0] + hits[1]) if hits else None
    return {
        "days": days,
        "periods": PERIODS,
        "since": since,
        "until": until,
        "totals": {k: sum(r[k] for r in daily) for k in ("bytes", "pulls", "requests")},
        "egress_chart": charts.columns(_daily(daily, every, "bytes"), "Egress per day", charts.size),
        "pulls_chart": charts.columns(_daily(daily, every, "pulls"), "Pulls per day", charts.count, css="bars alt"),
        "top_customers": charts.ranking(
            [
                (r["customer_name"] or r["customer_id"], r["bytes"], f"{prefix}/customers/{r['customer_id']}")
                for r in customers
            ],
            "Top customers by egress",
        ),
        "top_images": charts.ranking([(_image(r), r["bytes"], None) for r in images], "Top images by egress"),
        "customers": customers,
        "images": images,
        "cache": {
            "hits": hits[0] if hits else None,
            "misses": hits[1] if hits else None,
            "gauge": charts.gauge(ratio, "Cache hit ratio"),
        },
    }


def _image(row: dict[str, Any]) -> str:
    return f"{row['registry_slug']}/{row['image']}" if row["image"] else "(token and catalog requests)"


async def customer_usage(svc: UsageService, team: Team, customer_id: str, prefix: str) -> dict[str, Any]:
    since, until, every = _span(30)
    query = {"customer": customer_id, "since": since, "until": until}
    daily = await svc.egress_rows(team, await svc.egress_query(team, {**query, "groupBy": "day"}))
    images = await svc.egress_rows(team, await svc.egress_query(team, {**query, "groupBy": "image"}), TOP)
    state = await svc.threshold_state(team, customer_id)
    limit = state["thresholdBytes"]
    return {
        "usage": {
            "state": state,
            "gauge": charts.gauge(state["bytes"] / limit if limit else None, "This month against the threshold"),
            "egress_chart": charts.columns(_daily(daily, every, "bytes"), "Egress per day", charts.size),
            "pulls_chart": charts.columns(_daily(daily, every, "pulls"), "Pulls per day", charts.count, css="bars alt"),
            "top_images": charts.ranking(
                [(f"{r['registry_slug']}/{r['image']}", r["bytes"], None) for r in images if r["image"]],
                "Images by egress",
                width=860,  # the page's full width
            ),
            "threshold_in": threshold_to_form(limit),
            "deliveries": await svc.deliveries(team, {"customer": customer_id, "limit": "10"}),
            "csv": f"{prefix}/insights.csv?groupBy=day&customer={customer_id}&since={since}&until={until}",
        }
    }


THRESHOLD_UNITS = {"MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def threshold_to_form(limit: int | None) -> tuple[str, str]:
    """The stored threshold in the largest unit that shows it as 1 or more (MiB below that)."""
    if not limit:
        return "", "GiB"
    unit = next((u for u in ("TiB", "GiB") if limit >= THRESHOLD_UNITS[u]), "MiB")
    return f"{limit / THRESHOLD_UNITS[unit]:.6g}", unit


def threshold_from_form(amount: str, unit: str) -> int | None:
    """The portal's threshold form: an amount and a unit; empty: none. ValueError when bad."""
    amount = amount.strip()
    if not amount:
        return None
    value = float(amount)
    if unit not in THRESHOLD_UNITS or not value > 0:
        raise ValueError("a positive amount and a unit")
    return int(value * THRESHOLD_UNITS[unit])
