"""`pullgate keys rotate|ls`: the master keyring."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.cli.configfile import config_arg
from proxy.config import Config, keys_path
from proxy.secrets import Keyring


def install(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage the master keyring")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="add a master key, make it current, re-encrypt every secret")
    config_arg(rotate)
    ls = keys_sub.add_parser("ls", help="list master key ids (never the keys)")
    config_arg(ls)
    for p in (rotate, ls):
        p.set_defaults(config_call=run)


def run(cfg: Config, args: argparse.Namespace) -> int:
    return asyncio.run(_keys(cfg, args.keys_command))


async def _keys(cfg: Config, command: str) -> int:
    # Lazy: the other commands start without loading the store and its drivers.
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
