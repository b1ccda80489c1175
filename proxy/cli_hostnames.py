"""`pullgate hostname add|ls|rm|verify|default|cert`: custom hostnames through the vendor API.

`pullgate admin hostname ls|rm` is the operator's: it works on the store directly
(every team's hostnames; needs --config), and the running servers pick a removal up
through the store's change notification or their next host-table refresh.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.cli_vendor import Api, CLIError, _api_token_flag, _output, _print_json, _seg, _table
from proxy.config import Config


def install(sub: Any) -> None:
    host = sub.add_parser("hostname", help="custom hostnames for the proxy (vendor API)")
    hs = host.add_subparsers(dest="hostname_command", required=True)

    def cmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = hs.add_parser(name, help=help, description=help)
        p.set_defaults(api_call=func)
        _api_token_flag(p)
        return p

    add = cmd("add", _add, "add a hostname; prints the DNS TXT record that proves you own it")
    add.add_argument("hostname")
    _output(add)
    ls = cmd("ls", _ls, "list hostnames with their state")
    _output(ls)
    rm = cmd("rm", _rm, "remove a hostname")
    rm.add_argument("hostname")
    verify = cmd(
        "verify", _verify, "check ownership (the DNS TXT record; the HTTP challenge if the operator allows it)"
    )
    verify.add_argument("hostname")
    _output(verify)
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
        _print_json(hosts)
    else:
        _table([_row(h) for h in hosts], ["HOSTNAME", "STATUS", "DEFAULT", "CERTIFICATE", "REASON"])


def _add(api: Api, args: argparse.Namespace) -> int:
    h = api.call("POST", "/custom_hostnames", {"hostname": args.hostname})["custom_hostname"]
    if args.output == "json":
        _print_json(h)
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
    api.call("DELETE", f"/custom_hostname/{_seg(args.hostname)}")
    print(f"removed {args.hostname}")
    return 0


def _verify(api: Api, args: argparse.Namespace) -> int:
    h = api.call("POST", f"/custom_hostname/{_seg(args.hostname)}/verify")["custom_hostname"]
    _show([h], args.output)
    return 0 if h["status"] == "verified" and not h.get("reason") else 1


def _default(api: Api, args: argparse.Namespace) -> int:
    api.call("POST", f"/custom_hostname/{_seg(args.hostname)}/default")
    print(f"{args.hostname} is now the default hostname")
    return 0


def _cert(api: Api, args: argparse.Namespace) -> int:
    try:
        cert = Path(args.cert).read_text()
        key = sys.stdin.read() if args.key == "-" else Path(args.key).read_text()
    except OSError as exc:
        raise CLIError(f"cannot read {exc.filename}: {exc.strerror}") from None
    h = api.call("PUT", f"/custom_hostname/{_seg(args.hostname)}/certificate", {"certificate": cert, "key": key})
    print(f"certificate for {args.hostname} stored; expires {h['custom_hostname']['certificate']['notAfter']}")
    return 0


# --- admin (on the store) ------------------------------------------------------------


def install_admin(ads: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    host = ads.add_parser("hostname", help="every team's custom hostnames, on the store")
    hs = host.add_subparsers(dest="admin_hostname_command", required=True)
    ls = hs.add_parser("ls", help="list every team's hostnames", description="list every team's hostnames")
    ls.add_argument("--team", help="only this team's")
    _output(ls)
    config_arg(ls)
    rm = hs.add_parser("rm", help="remove any team's hostname", description="remove any team's hostname")
    rm.add_argument("hostname")
    rm.add_argument("--team", help="refuse unless the hostname belongs to this team")
    config_arg(rm)


async def admin(cfg: Config, args: argparse.Namespace) -> int:
    from proxy.domains.names import Reserved
    from proxy.store import open_store

    store = await open_store(cfg.store, cfg.base_dir)
    try:
        teams = {r["id"]: r["name"] for r in await store.fetchall("SELECT id, name FROM teams")}
        if args.admin_hostname_command == "ls":
            reserved = Reserved(cfg.proxy.hosts, cfg.domains.reserved)
            rows = [
                {
                    "team": teams.get(h.team_id, h.team_id),
                    "hostname": h.hostname,
                    "status": h.status,
                    "isDefault": h.is_default,
                    "reserved": reserved.covers(h.hostname),
                    "reason": h.reason,
                    "createdAt": h.created_at,
                }
                for h in await store.hostnames()
                if args.team is None or teams.get(h.team_id) == args.team
            ]
            _admin_show(rows, args.output)
            return 0
        name = args.hostname.strip().lower().rstrip(".")
        found = await store.hostname(name)
        if found is None or (args.team is not None and teams.get(found.team_id) != args.team):
            owner = f" of team {args.team!r}" if args.team else ""
            print(f"pullgate: no hostname {name!r}{owner}", file=sys.stderr)
            return 1
        await store.delete_hostname(found.team_id, name)
        await store.notify("hostname")  # the running replicas reload their host tables
    finally:
        await store.close()
    print(f"removed {name} (team {teams.get(found.team_id, found.team_id)})")
    return 0


def _admin_show(rows: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        _print_json(rows)
        return
    _table(
        [
            [
                r["team"],
                r["hostname"],
                r["status"],
                "yes" if r["isDefault"] else "",
                "reserved by the operator: not served" if r["reserved"] else (r["reason"] or ""),
            ]
            for r in rows
        ],
        ["TEAM", "HOSTNAME", "STATUS", "DEFAULT", "NOTE"],
    )
