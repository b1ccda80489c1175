"""The vendor API client the CLI's API commands share: `/vendor/v3` on the admin listener.

The origin comes from `--api-origin` or PULLGATE_API_ORIGIN, the token from
`--token` or PULLGATE_API_TOKEN. A failed call is a CLIError that prints
`<METHOD> <URL> <status>: <message>` and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, BinaryIO

DEFAULT_ORIGIN = "http://127.0.0.1:8081"
PREFIX = "/vendor/v3"


class CLIError(Exception):
    """Printed as it is, exit 1."""


class Api:
    def __init__(self, origin: str, token: str) -> None:
        self.origin = origin.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> Any:
        url = self.origin + PREFIX + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": self.token, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - http(s) origin
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise CLIError(f"{method} {url} {exc.code}: {_message(exc.read())}") from None
        except urllib.error.URLError as exc:
            raise CLIError(f"{method} {url}: cannot connect ({exc.reason})") from None
        except TimeoutError:
            raise CLIError(f"{method} {url}: timed out") from None
        return json.loads(raw) if raw else None

    def download(self, path: str, query: dict[str, str], out: BinaryIO) -> None:
        """GET a CSV answer and copy it to `out` as it arrives (exports can be large)."""
        url = self.origin + PREFIX + path + "?" + urllib.parse.urlencode({**query, "format": "csv"})
        req = urllib.request.Request(url, headers={"Authorization": self.token, "Accept": "text/csv"})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - http(s) origin
                shutil.copyfileobj(resp, out, 256 * 1024)
        except urllib.error.HTTPError as exc:
            raise CLIError(f"GET {url} {exc.code}: {_message(exc.read())}") from None
        except urllib.error.URLError as exc:
            raise CLIError(f"GET {url}: cannot connect ({exc.reason})") from None
        except TimeoutError:
            raise CLIError(f"GET {url}: timed out") from None
        out.flush()


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:200] or "(no message)"


Command = Callable[[Api, argparse.Namespace], int]


def segment(value: str) -> str:
    """A value as one path segment of an API URL."""
    return urllib.parse.quote(value, safe="")


def install(root: argparse.ArgumentParser) -> None:
    """The flags every API command reads, given before the command."""
    root.add_argument("--token", dest="api_token", default=None, help="vendor API token (default: $PULLGATE_API_TOKEN)")
    root.add_argument(
        "--api-origin",
        default=None,
        help=f"admin listener origin (default: $PULLGATE_API_ORIGIN, else {DEFAULT_ORIGIN})",
    )


def api_token_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given before the command is not overwritten by the default.
    p.add_argument(
        "--token", dest="api_token", default=argparse.SUPPRESS, help="vendor API token (default: $PULLGATE_API_TOKEN)"
    )


def command(parent: Any, name: str, func: Command, help: str, token_flag: bool = True) -> argparse.ArgumentParser:
    """A subcommand that calls the API: `func(api, args)` runs it (see run)."""
    p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
    p.set_defaults(api_call=func)
    if token_flag:
        api_token_flag(p)
    return p


def run(args: argparse.Namespace) -> int:
    token = args.api_token or os.environ.get("PULLGATE_API_TOKEN")
    origin = args.api_origin or os.environ.get("PULLGATE_API_ORIGIN") or DEFAULT_ORIGIN
    try:
        if not token:
            raise CLIError("no API token: pass --token or set PULLGATE_API_TOKEN")
        return int(args.api_call(Api(origin, token), args))
    except CLIError as exc:
        print(f"pullgate: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
