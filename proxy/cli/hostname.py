"""`pullgate hostname add|ls|rm|verify|default|cert`: custom hostnames through the vendor API.

`pullgate admin hostname ls|rm`, the operator's on the store, is in proxy.cli.admin.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxy.cli.api import Api, CLIError, api_token_flag, segment
from proxy.cli.output import output_flag, print_json, table


def install(sub: Any) -> None:
    host = sub.add_parser("hostname", help="custom hostnames for the proxy (vendor API)")
    hs = host.add_subparsers(dest="hostname_command", required=True)

    def cmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = hs.add_parser(name, help=help, description=help)
        p.set_defaults(api_call=func)
        api_token_flag(p)
        return p

    add = cmd("add", _add, "add a hostname; prints the DNS TXT record that proves you own it")
    add.add_argument("hostname")
    output_flag(add)
    ls = cmd("ls", _ls, "list hostnames with their state")
    output_flag(ls)
    rm = cmd("rm", _rm, "remove a hostname")
    rm.add_argument("hostname")
    verify = cmd(
        "verify", _verify, "check ownership (the DNS TXT record; the HTTP challenge if the operator allows it)"
    )
    verify.add_argument("hostname")
    output_flag(verify)
    default = cmd("default", _default, "make a verified hostname the team's default")
    default.add_argument("hostname")
    cert = cmd("cert", _cert, "upload the TLS certificate and key served for a hostname")
    cert.add_argument("hostname")
    cert.add_argument("--cert", required=True, metavar="FILE", help="PEM certificate chain, leaf first")
    cert.add_argument("--key", required=True, metavar="FILE", help="PEM private key ('-' for standard input)")


def _row(h: dict[str, Any]) -> list[Any]:
    cert = h.get("certificate") or {}
    expiry = f"{cert['expiresInDays']}d{' (renew!)' if cert.get('expiringSoon') else ''}" if cert else ""
    return [h["hostname"], h["status"], "yes" if h["isDefault"] else "", expiry, h.get("reason") or ""]


def _show(hosts: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print_json(hosts)
    else:
        table([_row(h) for h in hosts], ["HOSTNAME", "STATUS", "DEFAULT", "CERTIFICATE", "REASON"])


def _add(api: Api, args: argparse.Namespace) -> int:
    h = api.call("POST", "/custom_hostnames", {"hostname": args.hostname})["custom_hostname"]
    if args.output == "json":
        print_json(h)
        return 0
    v = h["verification"]
    print(f"added {h['hostname']} (pending). Prove you own it, then run: pullgate hostname verify {h['hostname']}")
    print(f'  DNS:  {v["dnsRecord"]}  TXT  "{v["dnsValue"]}"')
    if v.get("httpUrl"):  # null when the operator has not turned the HTTP challenge on
        print(f"  or HTTP: serve pullgate on the hostname; it answers {v['httpUrl']}")
    return 0


def _ls(api: Api, args: argparse.Namespace) -> int:
    _show(api.call("GET", "/custom_hostnames")["custom_hostnames"], args.output)
    return 0


def _rm(api: Api, args: argparse.Namespace) -> int:
    api.call("DELETE", f"/custom_hostname/{segment(args.hostname)}")
    print(f"removed {args.hostname}")
    return 0


def _verify(api: Api, args: argparse.Namespace) -> int:
    h = api.call("POST", f"/custom_hostname/{segment(args.hostname)}/verify")["custom_hostname"]
    _show([h], args.output)
    return 0 if h["status"] == "verified" and not h.get("reason") else 1


def _default(api: Api, args: argparse.Namespace) -> int:
    api.call("POST", f"/custom_hostname/{segment(args.hostname)}/default")
    print(f"{args.hostname} is now the default hostname")
    return 0


def _cert(api: Api, args: argparse.Namespace) -> int:
    try:
        cert = Path(args.cert).read_text()
        key = sys.stdin.read() if args.key == "-" else Path(args.key).read_text()
    except OSError as exc:
        raise CLIError(f"cannot read {exc.filename}: {exc.strerror}") from None
    h = api.call("PUT", f"/custom_hostname/{segment(args.hostname)}/certificate", {"certificate": cert, "key": key})
    print(f"certificate for {args.hostname} stored; expires {h['custom_hostname']['certificate']['notAfter']}")
    return 0
