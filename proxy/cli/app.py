"""`pullgate app create|update|ls`: apps through the vendor API."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from proxy.cli.api import Api, CLIError, command, segment
from proxy.cli.output import output_flag, print_json, table


def install(sub: Any) -> None:
    app = sub.add_parser("app", help="apps (vendor API)")
    aps = app.add_subparsers(dest="app_command", required=True)
    create = command(aps, "create", _app_create, "create an app")
    create.add_argument("slug")
    _app_flags(create)
    output_flag(create)
    aupd = command(aps, "update", _app_update, "change an app's name, image allowlist or KOTS public key")
    aupd.add_argument("slug")
    _app_flags(aupd)
    aupd.add_argument("--clear-allowlist", action="store_true", help="allow every repository again")
    output_flag(aupd)
    als = command(aps, "ls", _app_ls, "list apps")
    output_flag(als)


def _app_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="display name")
    p.add_argument(
        "--allow",
        action="append",
        metavar="PATTERN",
        help="allowed upstream repository pattern, e.g. 'vendor/*' (repeatable)",
    )
    p.add_argument("--kots-public-key", metavar="FILE", help="PEM public key that signs this app's KOTS licenses")


def _app_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.name:
        body["name"] = args.name
    if args.allow:
        body["imageAllowlist"] = args.allow
    if getattr(args, "clear_allowlist", False):
        body["imageAllowlist"] = []
    if args.kots_public_key:
        try:
            body["kotsPublicKey"] = Path(args.kots_public_key).read_text(encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"--kots-public-key: cannot read the file ({exc.strerror})") from None
    return body


def _print_apps(apps: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print_json(apps)
        return
    table(
        [
            [
                a["slug"],
                a["name"],
                a["id"],
                ",".join(c["name"] for c in a.get("channels", [])),
                ",".join(a["imageAllowlist"]) or "*",
                "yes" if a["kotsPublicKey"] else "no",
            ]
            for a in apps
        ],
        ("SLUG", "NAME", "ID", "CHANNELS", "ALLOWLIST", "KOTS_KEY"),
    )


def _app_create(api: Api, args: argparse.Namespace) -> int:
    app = api.call("POST", "/app", {"slug": args.slug, **_app_body(args)})["app"]
    _print_apps([app], args.output)
    return 0


def _app_update(api: Api, args: argparse.Namespace) -> int:
    app = api.call("PATCH", f"/app/{segment(args.slug)}", _app_body(args))["app"]
    _print_apps([app], args.output)
    return 0


def _app_ls(api: Api, args: argparse.Namespace) -> int:
    _print_apps(api.call("GET", "/apps")["apps"], args.output)
    return 0
