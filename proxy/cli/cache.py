"""`pullgate cache stats|ls|purge`: the pull-through cache through the vendor API,
for the team's own registries."""

from __future__ import annotations

import argparse
from typing import Any

from proxy.cli.api import Api, command
from proxy.cli.output import output_flag, print_json, table


def install(sub: Any) -> None:
    cache = sub.add_parser("cache", help="the pull-through cache (vendor API)")
    cs = cache.add_subparsers(dest="cache_command", required=True)
    stats = command(cs, "stats", _stats, "the cache's size and hit ratio, and what your registries hold")
    output_flag(stats)
    ls = command(cs, "ls", _ls, "cached objects of your registries")
    _filters(ls)
    output_flag(ls)
    purge = command(cs, "purge", _purge, "forget cached objects (e.g. after rebuilding a tag in place)")
    _filters(purge)
    purge.add_argument("--all", action="store_true", help="every object of every registry of yours")
    output_flag(purge)


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", metavar="SLUG", help="registry slug or endpoint")
    p.add_argument("--repo", metavar="REPO", help="upstream repository, e.g. vendor/app")
    p.add_argument("--digest", metavar="D", help="sha256:<hex>")


def _query(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in ("registry", "repo", "digest") if getattr(args, k)}


def _stats(api: Api, args: argparse.Namespace) -> int:
    stats = api.call("GET", "/cache")["cache"]
    if args.output == "json":
        print_json(stats)
        return 0
    if not stats.get("enabled"):
        print("the cache is off (cache.backend: none)")
        return 0
    rows = [
        ["size", _size(stats["sizeBytes"]) + " of " + _size(stats["maxSizeBytes"])],
        ["entries", stats["entries"]],
        ["hits", stats["hits"]],
        ["misses", stats["misses"]],
        ["hit ratio", f"{stats['hitRatio']:.1%}"],
        ["your entries", stats.get("teamEntries", 0)],
        ["your bytes", _size(stats.get("teamBytes", 0))],
    ]
    table(rows, ("", ""))
    return 0


def _ls(api: Api, args: argparse.Namespace) -> int:
    entries = api.call("GET", "/cache/entries", query=_query(args))["entries"]
    if args.output == "json":
        print_json(entries)
        return 0
    table(
        [[e["registry"], e["repository"], e["digest"], _size(e["size"]), e["lastAccess"]] for e in entries],
        ("REGISTRY", "REPOSITORY", "DIGEST", "SIZE", "LAST USED"),
    )
    return 0


def _purge(api: Api, args: argparse.Namespace) -> int:
    query = _query(args)
    if not query and not args.all:
        print("pullgate: name what to purge (--registry, --repo, --digest) or pass --all")
        return 2
    purged = api.call("DELETE", "/cache/entries", query=query)["purged"]
    if args.output == "json":
        print_json(purged)
    else:
        print(
            f"purged: {purged['bindings']} binding(s), {purged['tags']} tag(s); {purged['deleted']} object(s) deleted"
        )
    return 0


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
