"""`pullgate license import`: licenses from other systems through the vendor API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proxy.cli.api import Api, CLIError, command
from proxy.cli.customer import CUSTOMER_HEADERS, customer_row
from proxy.cli.output import output_flag, print_json, table


def install(sub: Any) -> None:
    lic = sub.add_parser("license", help="licenses from other systems (vendor API)")
    ls_ = lic.add_subparsers(dest="license_command", required=True)
    imp = command(ls_, "import", _license_import, "import a signed KOTS License YAML as a customer")
    imp.add_argument("file", help="the License YAML ('-' for standard input)")
    output_flag(imp)


def _license_import(api: Api, args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"{args.file}: cannot read ({exc.strerror})") from None
    res = api.call("POST", "/license/import", {"license": text})
    c = res["customer"]
    if args.output == "json":
        print_json(res)
    else:
        table([customer_row(c)], CUSTOMER_HEADERS)
        print(f"\n{'imported' if res['created'] else 'updated'} customer {c['id']}")
    return 0
