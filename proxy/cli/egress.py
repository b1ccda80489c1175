"""`pullgate egress`: bytes served per day, month, customer, app or image; a customer's
monthly threshold; the team webhook that hears when one is crossed (vendor API)."""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from typing import Any

from proxy.cli.api import Api, CLIError, command, segment
from proxy.cli.output import output_flag, print_json, table

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3}
UNITS |= {"t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """`500000`, `750MB`, `10GiB`, `1.5TB` -> bytes."""
    m = SIZE_RE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500000, 750MB, 10GiB)")
    return int(float(m.group(1)) * UNITS[unit])


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def install(sub: Any) -> None:
    eg = command(sub, "egress", _report, "egress (bytes served) per day, month, customer, app or image")
    eg.add_argument("--customer", help="customer id")
    eg.add_argument("--app", help="app slug")
    eg.add_argument("--since", help="first day (UTC), YYYY-MM-DD; default: the first of this month")
    eg.add_argument("--until", help="the day after the last, YYYY-MM-DD; default: tomorrow")
    eg.add_argument(
        "--group-by", default="day", choices=("day", "month", "customer", "app", "image"), help="default day"
    )
    output_flag(eg, csv=True)
    es = eg.add_subparsers(dest="egress_command")
    th = command(es, "threshold", _threshold, "set a customer's monthly egress threshold (or `none`)")
    th.add_argument("customer", help="customer id")
    th.add_argument("size", help="bytes per month: 500000, 750MB, 10GiB; `none` removes it")
    st = command(es, "status", _status, "this month's egress of a customer against its threshold")
    st.add_argument("customer", help="customer id")
    output_flag(st)
    wh = es.add_parser("webhook", help="the team webhook told when a customer crosses its threshold")
    ws = wh.add_subparsers(dest="webhook_command", required=True)
    wset = command(ws, "set", _webhook_set, "set the webhook URL (and its signing secret)")
    wset.add_argument("url")
    secret = wset.add_mutually_exclusive_group()
    secret.add_argument("--secret-stdin", action="store_true", help="read the signing secret from stdin")
    secret.add_argument("--no-secret", action="store_true", help="send unsigned")
    command(ws, "show", _webhook_show, "show the webhook (never its secret)")
    command(ws, "rm", _webhook_rm, "remove the webhook")
    dl = command(ws, "deliveries", _deliveries, "every delivery attempt, newest first")
    dl.add_argument("--customer", help="customer id")
    dl.add_argument("--limit", help="at most this many (default 100)")
    output_flag(dl)


def _report(api: Api, args: argparse.Namespace) -> int:
    query = {"groupBy": args.group_by}
    for key in ("customer", "app", "since", "until"):
        if getattr(args, key):
            query[key] = getattr(args, key)
    if args.output == "csv":
        api.download("/egress", query, sys.stdout.buffer)
        return 0
    report = api.call("GET", "/egress", query=query)
    if args.output == "json":
        print_json(report)
        return 0
    keys = {
        "day": (("DAY", "day"),),
        "month": (("MONTH", "month"),),
        "customer": (("CUSTOMER", "customerName"), ("ID", "customerId"), ("APP", "appSlug")),
        "app": (("APP", "appSlug"),),
        "image": (("REGISTRY", "registry"), ("IMAGE", "image")),
    }[report["groupBy"]]
    rows = [[r[k] for _, k in keys] + [human(r["bytes"]), r["bytes"], r["pulls"]] for r in report["rows"]]
    t = report["totals"]
    rows.append(["TOTAL"] + [""] * (len(keys) - 1) + [human(t["bytes"]), t["bytes"], t["pulls"]])
    table(rows, [h for h, _ in keys] + ["EGRESS", "BYTES", "PULLS"])
    print(f"\n{report['since']} to {report['until']} (UTC days, the last exclusive)")
    return 0


def _threshold(api: Api, args: argparse.Namespace) -> int:
    try:
        size = None if args.size.lower() == "none" else parse_size(args.size)
    except argparse.ArgumentTypeError as exc:
        raise CLIError(str(exc)) from None
    c = api.call("PATCH", f"/customer/{segment(args.customer)}", {"egressThresholdBytes": size})["customer"]
    limit = c["egressThresholdBytes"]
    print(f"customer {c['id']} ({c['name']}): " + (f"threshold {human(limit)} a month" if limit else "no threshold"))
    return 0


def _status(api: Api, args: argparse.Namespace) -> int:
    s = api.call("GET", f"/customer/{segment(args.customer)}/egress")["egress"]
    if args.output == "json":
        print_json(s)
        return 0
    limit = s["thresholdBytes"]
    note = s["notification"]
    table(
        [
            [
                s["month"],
                human(s["bytes"]),
                human(limit) if limit else "none",
                f"{s['percent']}%" if s["percent"] is not None else "",
                "yes" if s["reached"] else "no",
                f"{note['state']} ({note['attempts']} attempt(s))" if note else "",
            ]
        ],
        ["MONTH", "EGRESS", "THRESHOLD", "USED", "REACHED", "NOTIFICATION"],
    )
    return 0


def _webhook_set(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.url}
    if args.no_secret:
        body["secret"] = None
    elif args.secret_stdin:
        body["secret"] = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        body["secret"] = getpass.getpass("Signing secret (empty: none): ") or None
    w = api.call("PUT", "/team/webhook", body)["webhook"]
    print(f"webhook {w['url']} ({'signed' if w['secretSet'] else 'unsigned'})")
    return 0


def _webhook_show(api: Api, args: argparse.Namespace) -> int:
    w = api.call("GET", "/team/webhook")["webhook"]
    if w is None:
        print("no webhook is set")
    else:
        print(f"{w['url']}  secret: {'set' if w['secretSet'] else 'none'}  updated: {w['updatedAt']}")
    return 0


def _webhook_rm(api: Api, args: argparse.Namespace) -> int:
    api.call("DELETE", "/team/webhook")
    print("webhook removed")
    return 0


def _deliveries(api: Api, args: argparse.Namespace) -> int:
    query = {k: getattr(args, k) for k in ("customer", "limit") if getattr(args, k)}
    rows = api.call("GET", "/team/webhook/deliveries", query=query)["deliveries"]
    if args.output == "json":
        print_json(rows)
        return 0
    table(
        [
            [d["time"], d["event"], d["customerId"], d["month"], d["attempt"], d["status"] or "", d["error"] or "ok"]
            for d in rows
        ],
        ["TIME", "EVENT", "CUSTOMER", "MONTH", "ATTEMPT", "STATUS", "RESULT"],
    )
    return 0
