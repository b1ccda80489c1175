"""`pullgate customer create|ls|revoke|archive|restore`: customers and their licenses through the vendor API."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.cli.api import Api, command, segment
from proxy.cli.output import output_flag, print_json, table


def install(sub: Any) -> None:
    cust = sub.add_parser("customer", help="customers and their licenses (vendor API)")
    cs = cust.add_subparsers(dest="customer_command", required=True)
    ccreate = command(cs, "create", _customer_create, "create a customer; prints the license ID once")
    ccreate.add_argument("--name", required=True)
    ccreate.add_argument("--email")
    ccreate.add_argument("--app", required=True, help="app slug")
    ccreate.add_argument("--type", dest="license_type", default="prod", help="license type (default prod)")
    ccreate.add_argument("--expires-at", help="ISO 8601 time, e.g. 2027-01-01T00:00:00Z")
    ccreate.add_argument(
        "--channel",
        action="append",
        metavar="NAME",
        help="release channel (repeatable; the first is the customer's default; default: the app's Stable)",
    )
    ccreate.add_argument("--custom-id", help="your own id for this customer (e.g. from your CRM)")
    output_flag(ccreate)
    cls = command(cs, "ls", _customer_ls, "list customers")
    cls.add_argument("--app", help="only this app's customers")
    output_flag(cls)
    for action in ("revoke", "archive", "restore"):
        c = command(cs, action, _customer_action, f"{action} a customer's license")
        c.add_argument("id")


CUSTOMER_HEADERS = ("ID", "NAME", "EMAIL", "APP", "CHANNELS", "TYPE", "EXPIRES", "STATUS")


def customer_row(c: dict[str, Any]) -> list[Any]:
    channels = ",".join(ch["name"] for ch in c.get("channels", []))
    return [
        c["id"],
        c["name"],
        c["email"],
        c["appSlug"],
        channels,
        c["licenseType"],
        c["expiresAt"] or "never",
        c["status"],
    ]


def _customer_create(api: Api, args: argparse.Namespace) -> int:
    body = {"name": args.name, "appSlug": args.app, "licenseType": args.license_type}
    if args.email:
        body["email"] = args.email
    if args.expires_at:
        body["expiresAt"] = args.expires_at
    if args.channel:
        body["channels"] = args.channel
    if args.custom_id:
        body["customId"] = args.custom_id
    c = api.call("POST", "/customer", body)["customer"]
    if args.output == "json":
        print_json(c)
    else:
        table([customer_row(c)], CUSTOMER_HEADERS)
        print(f"\nLicense ID (shown once here; give it to the customer): {c['licenseId']}")
    return 0


def _customer_ls(api: Api, args: argparse.Namespace) -> int:
    customers = api.call("GET", "/customers", query={"appSlug": args.app} if args.app else None)["customers"]
    if args.output == "json":
        print_json(customers)
    else:
        table([customer_row(c) for c in customers], CUSTOMER_HEADERS)
    return 0


def _customer_action(api: Api, args: argparse.Namespace) -> int:
    action = args.customer_command
    c = api.call("POST", f"/customer/{segment(args.id)}/{action}")["customer"]
    print(f"customer {c['id']} ({c['name']}): {c['status']}")
    return 0
