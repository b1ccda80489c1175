"""`pullgate serve`: run the proxy and admin listeners."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from proxy.cli.configfile import config_arg
from proxy.config import Config
from proxy.tuning import tune_malloc


def install(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the proxy and admin listeners")
    config_arg(serve)
    serve.set_defaults(config_call=run)


def run(cfg: Config, args: argparse.Namespace) -> int:
    # Lazy: the other commands start without loading the server.
    from proxy.app import serve

    tune_malloc()
    try:
        import uvloop  # optional: absent on Windows

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass
    asyncio.run(serve(cfg))
    return 0
