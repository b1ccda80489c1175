"""The `pullgate` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from proxy import __version__, cli_hostnames, cli_vendor, logs
from proxy.config import Config, ConfigError, load
from proxy.secrets import Keyring, SecretError

DEFAULT_CONFIG = "/etc/pullgate/config.yaml"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get("PULLGATE_CONFIG"),
        help=f"YAML config file (default: $PULLGATE_CONFIG, else {DEFAULT_CONFIG} if present)",
    )


def _load(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return load(path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pullgate", description="License-gated pull proxy for container images.")
    p.add_argument("--version", action="version", version=f"pullgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy and admin listeners")
    _config_arg(serve)

    keys = sub.add_parser("keys", help="manage the master keyring")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="add a master key, make it current, re-encrypt every secret")
    _config_arg(rotate)
    ls = keys_sub.add_parser("ls", help="list master key ids (never the keys)")
    _config_arg(ls)
    admin = cli_vendor.install(p, sub)  # registry, app, customer, license, logs (vendor API); admin (store)
    cli_hostnames.install(sub)
    cli_hostnames.install_admin(admin, _config_arg)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "api_call", None) is not None:
        return cli_vendor.run(args)  # talks to the API: no config needed
    try:
        cfg = _load(args)
    except ConfigError as exc:
        print(f"pullgate: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log.level)
    try:
        if args.command == "serve":
            return _serve(cfg)
        if args.command == "keys":
            return asyncio.run(_keys(cfg, args.keys_command))
        if args.command == "admin" and args.admin_command == "hostname":
            return asyncio.run(cli_hostnames.admin(cfg, args))
        if args.command == "admin":
            return asyncio.run(cli_vendor.admin_token_create(cfg, args.team, args.name))
    except (ConfigError, SecretError) as exc:
        print(f"pullgate: {exc}", file=sys.stderr)
        return 2
    return 1


def _serve(cfg: Config) -> int:
    from proxy.app import serve
    from proxy.tuning import tune_malloc

    tune_malloc()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass
    asyncio.run(serve(cfg))
    return 0


async def _keys(cfg: Config, command: str) -> int:
    from proxy.app import keys_path
    from proxy.keyrotation import rotate
    from proxy.store import open_store

    path = keys_path(cfg)
    if command == "ls":
        ring = Keyring.load(path)
        for kid in sorted(ring.keys):
            print(f"{kid}{'  (current)' if kid == ring.current else ''}")
        return 0
    ring = await asyncio.to_thread(Keyring.load_or_create, path)
    store = await open_store(cfg.store, cfg.base_dir)
    try:
        kid, count = await rotate(store, ring)
    finally:
        await store.close()
    print(f"new current key {kid}; re-encrypted {count} secret(s)")
    return 0
