"""`pullgate registry add|update|ls|rm|test|logs`: external registries through the vendor API.

Secrets are taken from `--…-stdin` or a masked prompt as well as from flags, so
they need not be in shell history; they are never printed.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from proxy.cli.api import Api, CLIError, command, segment
from proxy.cli.logs import print_logs
from proxy.cli.output import output_flag, print_json, table
from proxy.upstream.providers import PROVIDERS, Provider, provider_of
from proxy.upstream.providers.base import SECRET, USERNAME, Field


def install(sub: Any) -> None:
    reg = sub.add_parser("registry", help="external registries (vendor API)")
    rs = reg.add_subparsers(dest="registry_command", required=True)
    add = command(rs, "add", _registry_add, "add an external registry", token_flag=False)
    kinds = add.add_subparsers(dest="provider", required=True, metavar="provider")
    for provider in PROVIDERS.values():
        help = f"add a {provider.title} registry" + (f" ({provider.name})" if provider.kind_label else "")
        p = kinds.add_parser(provider.name, help=help, description=help)
        default = f" (default {provider.default_endpoint})" if provider.default_endpoint else ""
        p.add_argument("--endpoint", help=f"registry host as in image references{default}")
        p.add_argument("--name", help="slug used in pull paths (default: from the endpoint)")
        _secret_flags(p, (provider,))
        output_flag(p)
    upd = command(
        rs, "update", _registry_update, "rotate a registry's credentials (or change apps, url)", token_flag=False
    )
    upd.add_argument("name")
    _secret_flags(upd, tuple(PROVIDERS.values()))
    output_flag(upd)
    ls = command(rs, "ls", _registry_ls, "list external registries")
    ls.add_argument("name", nargs="?")
    output_flag(ls)
    rm = command(rs, "rm", _registry_rm, "remove an external registry")
    rm.add_argument("name")
    test = command(rs, "test", _registry_test, "test that the stored credentials can pull an image")
    test.add_argument("hostname", help="the registry's endpoint (or slug)")
    test.add_argument("--image", required=True, help="repository[:tag|@digest] at that registry")
    logs = command(rs, "logs", _registry_logs, "pull log of one registry")
    logs.add_argument("name")
    output_flag(logs)


def _dest(flag: str) -> str:
    return "field_" + flag.lstrip("-").replace("-", "_")


def _secret_flags(p: argparse.ArgumentParser, providers: tuple[Provider, ...]) -> None:
    """The providers' declared flags; for several (update), each help says which take it."""
    helps: dict[str, dict[str, list[str]]] = {}
    declared: dict[str, Field] = {}
    for provider in providers:
        for f in provider.fields:
            for flag in f.flags:
                declared.setdefault(flag, f)
                helps.setdefault(flag, {}).setdefault(f.help, []).append(provider.name)
    g = p.add_argument_group("credentials (each secret also by --…-stdin, or a masked prompt on a terminal)")
    for flag, f in declared.items():
        by = helps[flag]
        text = f.help if len(providers) == 1 else "; ".join(f"{'/'.join(k)}: {h}" for h, k in by.items())
        if f.secret and f.multiline:
            g.add_argument(flag, dest=_dest(flag), metavar="FILE", help=f"{text} (a file)")
        elif f.secret:
            g.add_argument(flag, dest=_dest(flag), help=f"{text} (prefer {flag}-stdin)")
        else:
            g.add_argument(flag, dest=_dest(flag), help=text)
        if f.secret:
            stdin = f"{flag}-stdin"
            g.add_argument(stdin, dest=_dest(stdin), action="store_true", help=f"read it from standard input: {text}")
    p.add_argument("--app-ids", help="comma-separated app ids or slugs that may use it (default: every app)")
    p.add_argument("--url", help="where to reach the registry (default https://<endpoint>)")
    p.add_argument("--insecure", action="store_true", default=None, help="allow an http:// --url")
    p.add_argument("--skip-validation", action="store_true", help="store without testing the credentials")
    p.add_argument("--image", help="image to test the credentials with (repository[:tag])")


def _read_stdin_once(args: argparse.Namespace) -> None:
    flags = [k for k, v in vars(args).items() if k.startswith("field_") and k.endswith("_stdin") and v]
    if len(flags) > 1:
        raise CLIError("only one --…-stdin flag at a time: standard input holds one secret")


def _stdin_secret(multiline: bool = False) -> str:
    data = sys.stdin.read()
    value = data.strip() if multiline else data.rstrip("\r\n")
    if not value:
        raise CLIError("standard input was empty")
    return value


def _prompt(label: str) -> str | None:
    if not sys.stdin.isatty():
        return None
    value = getpass.getpass(f"{label}: ")
    return value or None


def _flag_value(args: argparse.Namespace, f: Field, flag: str) -> str | None:
    """What one declared flag gave: its value, standard input, or (multiline) a file's text."""
    if f.secret and getattr(args, _dest(f"{flag}-stdin"), False):
        return _stdin_secret(multiline=f.multiline)
    value = getattr(args, _dest(flag), None)
    if value is None or not (f.secret and f.multiline):
        return value
    try:
        return Path(value).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CLIError(f"{flag}: cannot read the file ({exc.strerror})") from None


def _registry_body(args: argparse.Namespace, provider: str | None, creating: bool) -> dict[str, Any]:
    _read_stdin_once(args)
    body: dict[str, Any] = {}
    for key, attr in (("url", "url"), ("image", "image")):
        if getattr(args, attr, None):
            body[key] = getattr(args, attr)
    if args.insecure:
        body["insecure"] = True
    if args.skip_validation:
        body["skipValidation"] = True
    if args.app_ids:
        body["appIds"] = [a.strip() for a in args.app_ids.split(",") if a.strip()]
    kind = provider_of(provider or "other")
    secret: tuple[Field, str] | None = None
    for f in kind.fields:
        for flag in f.flags:
            value = _flag_value(args, f, flag)
            if value is None:
                continue
            if f.stored == SECRET:
                secret = (f, value)  # a later one wins: a key file over a token over a password
            else:
                body[f.api] = value
    if secret is None:
        # On a terminal, ask for the secret when its account is named (or it is required and has no username).
        named = any(f.api in body for f in kind.fields if not f.secret and not f.destination)
        wanted = next((f for f in kind.fields if f.stored == SECRET and f.config), None)
        if wanted is not None and (named or (creating and wanted.required and kind.field(USERNAME) is None)):
            prompted = _prompt(wanted.label or wanted.help)
            if prompted is not None:
                secret = (wanted, prompted)
    if secret is not None:
        f, value = secret
        body[f.api] = value
        for stored, implied in f.implies:  # e.g. a bare --token means username oauth2accesstoken
            user = kind.field(stored)
            if user is not None:
                body.setdefault(user.api, implied)
    return body


def _registry_row(r: dict[str, Any]) -> list[Any]:
    return [r["slug"], r["provider"], r["endpoint"], ",".join(r["appIds"]), r["authType"]]


REGISTRY_HEADERS = ("NAME", "PROVIDER", "ENDPOINT", "APP_IDS", "AUTHTYPE")


def _registry_add(api: Api, args: argparse.Namespace) -> int:
    body = _registry_body(args, args.provider, creating=True)
    body["provider"] = args.provider
    if args.endpoint:
        body["endpoint"] = args.endpoint
    if args.name:
        body["slug"] = args.name
    reg = api.call("POST", "/external_registry", body)["external_registry"]
    if args.output == "json":
        print_json(reg)
    else:
        table([_registry_row(reg)], REGISTRY_HEADERS)
    return 0


def _registry_update(api: Api, args: argparse.Namespace) -> int:
    current = api.call("GET", f"/external_registry/{segment(args.name)}")["external_registry"]
    body = _registry_body(args, current["provider"], creating=False)
    try:
        reg = api.call("PUT", f"/external_registry/{segment(args.name)}", body)["external_registry"]
    except CLIError as exc:
        if "requires giving the secret again" in str(exc):
            hint = _SECRET_AGAIN.get(current["authType"], _SECRET_AGAIN["password"])
            raise CLIError(f"{exc}\nhint: {hint}") from None
        raise
    if args.output == "json":
        print_json(reg)
    else:
        table([_registry_row(reg)], REGISTRY_HEADERS)
    return 0


# The stored secret goes only where it was given for: a new url/region/... needs it again.
_SECRET_AGAIN = {
    "password": "give the password again with --password-stdin (or --password, --token-stdin) in the same command",
    "token": "give the token again with --token-stdin (or --password-stdin) in the same command",
    "accesskey": "give the secret key again with --secretaccesskey-stdin (or --secretaccesskey) in the same command",
    "serviceaccount": "give the key again with --serviceaccountkey FILE (or --serviceaccountkey-stdin) in the same "
    "command",
}


def _registry_ls(api: Api, args: argparse.Namespace) -> int:
    if args.name:
        regs = [api.call("GET", f"/external_registry/{segment(args.name)}")["external_registry"]]
    else:
        regs = api.call("GET", "/external_registries")["external_registries"]
    if args.output == "json":
        print_json(regs)
    else:
        table([_registry_row(r) for r in regs], REGISTRY_HEADERS)
    return 0


def _registry_rm(api: Api, args: argparse.Namespace) -> int:
    api.call("DELETE", f"/external_registry/{segment(args.name)}")
    print(f"registry {args.name} removed")
    return 0


def _registry_test(api: Api, args: argparse.Namespace) -> int:
    res = api.call("PUT", "/external_registry/test", {"endpoint": args.hostname, "image": args.image})
    if res["ok"]:
        print(f"ok: {args.hostname} serves {args.image} with the stored credentials (status {res['status']})")
        return 0
    if res["status"] == 404:
        print(f"MANIFEST_UNKNOWN: {res['reason']}", file=sys.stderr)
        print(
            "hint: the credentials work; check the repository name and tag (the image is given as it is "
            "at the registry, e.g. vendor/app:1.0)",
            file=sys.stderr,
        )
    else:
        print(f"failed: status {res['status']}: {res['reason']}", file=sys.stderr)
    return 1


def _registry_logs(api: Api, args: argparse.Namespace) -> int:
    print_logs(api.call("GET", "/external_registry/logs", query={"endpoint": args.name})["logs"], args.output)
    return 0
