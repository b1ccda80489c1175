"""`pullgate admin token create|hostname ls|rm`: operator commands on the store (need --config).

They work on the store directly: the first API token of a fresh install has no
token to call the API with, and the operator sees every team's hostnames. The
running servers pick a hostname removal up through the store's change
notification or their next host-table refresh.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from proxy.cli.configfile import config_arg
from proxy.cli.output import output_flag, print_json, table
from proxy.config import Config
from proxy.domains.names import Reserved


def install(sub: Any) -> None:
    admin = sub.add_parser("admin", help="operator commands on the store (needs --config)")
    ads = admin.add_subparsers(dest="admin_command", required=True)
    token = ads.add_parser("token", help="vendor API tokens")
    ts = token.add_subparsers(dest="token_command", required=True)
    tcreate = ts.add_parser("create", help="create an API token for a team (created if missing); printed once")
    tcreate.add_argument("--team", required=True)
    tcreate.add_argument("--name", default="cli", help="a label for the token")
    tcreate.add_argument(
        "--config", "-c", default=os.environ.get("PULLGATE_CONFIG"), help="YAML config file (default: $PULLGATE_CONFIG)"
    )
    tcreate.set_defaults(config_call=_token_create)
    host = ads.add_parser("hostname", help="every team's custom hostnames, on the store")
    hs = host.add_subparsers(dest="admin_hostname_command", required=True)
    ls = hs.add_parser("ls", help="list every team's hostnames", description="list every team's hostnames")
    ls.add_argument("--team", help="only this team's")
    output_flag(ls)
    config_arg(ls)
    rm = hs.add_parser("rm", help="remove any team's hostname", description="remove any team's hostname")
    rm.add_argument("hostname")
    rm.add_argument("--team", help="refuse unless the hostname belongs to this team")
    config_arg(rm)
    ls.set_defaults(config_call=_hostname_admin)
    rm.set_defaults(config_call=_hostname_admin)


def _token_create(cfg: Config, args: argparse.Namespace) -> int:
    return asyncio.run(admin_token_create(cfg, args.team, args.name))


def _hostname_admin(cfg: Config, args: argparse.Namespace) -> int:
    return asyncio.run(hostname_admin(cfg, args))


async def admin_token_create(cfg: Config, team_name: str, label: str) -> int:
    # Lazy: the API commands start without loading the store and its drivers.
    from proxy.admin.service import new_api_token
    from proxy.store import open_store

    store = await open_store(cfg.store, cfg.base_dir)
    try:
        existed = await store.team_by_name(team_name) is not None
        team = await store.ensure_team(team_name)
        token = new_api_token()
        await store.ensure_api_token(team.id, token, label)
    finally:
        await store.close()
    if not existed:
        print(f"pullgate: created team {team_name!r}", file=sys.stderr)
    print(token)
    return 0


async def hostname_admin(cfg: Config, args: argparse.Namespace) -> int:
    from proxy.store import open_store  # lazy, as above

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
        print_json(rows)
        return
    table(
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
