"""`pullgate serve`: run the proxy and admin listeners (`--workers N`: N processes, proxy.cli.workers)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import sys
from typing import Any

from proxy.cli.configfile import config_arg
from proxy.config import Config
from proxy.tuning import tune_malloc

MAX_WORKERS = 64


def _workers(value: str) -> int:
    n = int(value)
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 1..{MAX_WORKERS}")
    return n


def install(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the proxy and admin listeners")
    config_arg(serve)
    serve.add_argument(
        "--workers",
        type=_workers,
        default=os.environ.get("PULLGATE_WORKERS", "1"),  # a string default goes through `type` too
        help="server processes sharing the ports (SO_REUSEPORT), under a supervisor "
        "(default: $PULLGATE_WORKERS, else 1: no supervisor)",
    )
    # Given by the supervisor to the processes it starts; not for people.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(config_call=run)


def run(cfg: Config, args: argparse.Namespace) -> int:
    # Lazy: the other commands start without loading the server.
    from proxy.app import Worker, serve

    if args.workers > 1 and args.worker_index is None:
        # Lazy: the supervisor, only when asked for.
        from proxy.cli.workers import supervise

        return supervise(cfg, args.config, args.workers)
    tune_malloc()
    try:
        import uvloop  # optional: absent on Windows

        uvloop.install()
    except ImportError:  # pragma: no cover - optional speed-up
        pass
    worker = Worker(args.worker_index or 0, args.workers) if args.worker_index is not None else None
    try:
        asyncio.run(serve(cfg, worker=worker))
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        print(f"pullgate: cannot listen: {exc.strerror} ({cfg.proxy.listen}, {cfg.admin.listen})", file=sys.stderr)
        return 1
    return 0
