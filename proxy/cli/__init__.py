"""The `pullgate` command: one module per command group.

serve, keys and admin read the config file (`--config`); registry, app,
customer, license, logs, egress and hostname call the vendor API (proxy.cli.api) and
need no config.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.cli import admin, api, app, customer, egress, hostname, keys, license, registry, serve
from proxy.cli import logs as pull_logs
from proxy.cli.configfile import load_config
from proxy.config import ConfigError
from proxy.logs import setup as setup_logging
from proxy.secrets import SecretError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pullgate", description="License-gated pull proxy for container images.")
    p.add_argument("--version", action="version", version=f"pullgate {__version__}")
    api.install(p)
    sub = p.add_subparsers(dest="command", required=True)
    # The order of `pullgate --help`.
    for group in (serve, keys, registry, app, customer, license, pull_logs, egress, admin, hostname):
        group.install(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "api_call", None) is not None:
        return api.run(args)  # talks to the API: no config needed
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        print(f"pullgate: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg.log.level)
    try:
        return int(args.config_call(cfg, args))
    except (ConfigError, SecretError) as exc:
        print(f"pullgate: {exc}", file=sys.stderr)
        return 2
