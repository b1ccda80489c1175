"""How the CLI prints what the API answers: a table, or the JSON as it came."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def output_flag(p: argparse.ArgumentParser, csv: bool = False) -> None:
    """`-o table|json` (and `csv`, with `--csv` as its short form, where the API offers it)."""
    choices = ("table", "json", "csv") if csv else ("table", "json")
    p.add_argument("-o", "--output", choices=choices, default="table", help="output format")
    if csv:
        p.add_argument("--csv", dest="output", action="store_const", const="csv", help="same as -o csv")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
