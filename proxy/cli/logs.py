"""`pullgate logs`: the pull log through the vendor API."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from proxy.cli.api import Api, command
from proxy.cli.output import output_flag, print_json, table


def install(sub: Any) -> None:
    pl = command(sub, "logs", _pull_logs, "the pull log (vendor API)")
    pl.add_argument("--customer", help="customer id")
    pl.add_argument("--registry", help="registry slug or endpoint")
    pl.add_argument("--since", help="ISO 8601 time")
    pl.add_argument("--until", help="ISO 8601 time")
    pl.add_argument("--limit", help="at most this many rows (default 500; CSV: every row unless given)")
    output_flag(pl, csv=True)


LOG_HEADERS = ("TIME", "CUSTOMER", "REGISTRY", "ACTION", "IMAGE", "REFERENCE", "STATUS", "BYTES")


def print_logs(logs: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print_json(logs)
        return
    table(
        [
            [
                e["time"],
                e["customerName"] or e["customerId"],
                e["registry"],
                e["action"],
                e["image"],
                e["reference"],
                e["status"],
                e["bytes"],
            ]
            for e in logs
        ],
        LOG_HEADERS,
    )


def _pull_logs(api: Api, args: argparse.Namespace) -> int:
    query = {k: getattr(args, k) for k in ("customer", "registry", "since", "until", "limit") if getattr(args, k)}
    if args.output == "csv":  # every matching row, oldest first, streamed to stdout
        api.download("/pull_logs", query, sys.stdout.buffer)
        return 0
    print_logs(api.call("GET", "/pull_logs", query=query)["logs"], args.output)
    return 0
