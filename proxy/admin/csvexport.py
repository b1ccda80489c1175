"""CSV answers (pull logs, egress) for the API and the portal: streamed, RFC 4180 quoting,
and safe to open in a spreadsheet.

A cell a spreadsheet would read as a formula (text starting with = + - @, or a tab or
carriage return that hides one) is prefixed with a single quote, as OWASP advises:
customer names and image names are the vendor's customers' input.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from aiohttp import web

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CONTENT_TYPE = "text/csv; charset=utf-8"


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if isinstance(value, str) and text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def encode(rows: Iterable[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerows([cell(v) for v in row] for row in rows)
    return buf.getvalue().encode()


def wants_csv(request: web.Request) -> bool:
    """`?format=csv`, or (with no format) an Accept that asks for text/csv before JSON."""
    fmt = request.query.get("format")
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("Accept", "")
    at_csv, at_json = accept.find("text/csv"), accept.find("application/json")
    return at_csv >= 0 and (at_json < 0 or at_csv < at_json)


async def stream(
    request: web.Request,
    filename: str,
    columns: Sequence[tuple[str, str]],
    pages: AsyncIterator[list[dict[str, Any]]],
) -> web.StreamResponse:
    """Write a header row (the second of each column pair) and then each page of dicts
    (keyed by the first), as the pages come: memory holds one page, never the export."""
    resp = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPE,
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        }
    )
    await resp.prepare(request)
    await resp.write(encode([[title for _, title in columns]]))
    async for page in pages:
        await resp.write(encode([[row.get(key) for key, _ in columns] for row in page]))
    await resp.write_eof()
    return resp


async def one_page(rows: list[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    yield rows


PULL_LOG_COLUMNS = (
    ("time", "time"),
    ("customerId", "customer_id"),
    ("customerName", "customer_name"),
    ("appSlug", "app"),
    ("registry", "registry"),
    ("action", "action"),
    ("image", "image"),
    ("reference", "reference"),
    ("status", "status"),
    ("success", "success"),
    ("bytes", "bytes"),
)

EGRESS_KEYS = {
    "day": (("day", "day"),),
    "month": (("month", "month"),),
    "customer": (("customerId", "customer_id"), ("customerName", "customer_name"), ("appSlug", "app")),
    "app": (("appSlug", "app"),),
    "image": (("registry", "registry"), ("image", "image")),
}


def egress_columns(group_by: str) -> tuple[tuple[str, str], ...]:
    return (*EGRESS_KEYS[group_by], ("bytes", "bytes"), ("pulls", "pulls"), ("requests", "requests"))
