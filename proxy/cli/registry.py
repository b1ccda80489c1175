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
from proxy.config import PROVIDERS


def install(sub: Any) -> None:
    reg = sub.add_parser("registry", help="external registries (vendor API)")
    rs = reg.add_subparsers(dest="registry_command", required=True)
    add = command(rs, "add", _registry_add, "add an external registry", token_flag=False)
    add.add_argument("provider", choices=PROVIDERS)
    add.add_argument("--endpoint", help="registry host as in image references (default for dockerhub, ghcr, quay, gcr)")
    add.add_argument("--name", help="slug used in pull paths (default: from the endpoint)")
    _secret_flags(add)
    output_flag(add)
    upd = command(rs, "update", _registry_update, "rotate a registry's credentials (or change apps, url)",
              token_flag=False)  # fmt: skip
    upd.add_argument("name")
    _secret_flags(upd)
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


def _secret_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("credentials (each secret also by --…-stdin, or a masked prompt on a terminal)")
    g.add_argument("--username", help="registry user name (gcr/gar: _json_key or oauth2accesstoken)")
    g.add_argument("--password", help="registry password (prefer --password-stdin)")
    g.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    g.add_argument("--token", dest="registry_token", help="registry access token (prefer --token-stdin)")
    g.add_argument("--token-stdin", action="store_true", help="read the registry token from standard input")
    g.add_argument("--accesskeyid", help="ecr: AWS access key id")
    g.add_argument("--secretaccesskey", help="ecr: AWS secret access key (prefer --secretaccesskey-stdin)")
    g.add_argument("--secretaccesskey-stdin", action="store_true", help="ecr: read the secret key from stdin")
    g.add_argument("--serviceaccountkey", metavar="FILE", help="gcr/gar: the service-account JSON key file")
    g.add_argument("--serviceaccountkey-stdin", action="store_true", help="gcr/gar: read the JSON key from stdin")
    g.add_argument("--region", help="ecr: AWS region (default: from the endpoint)")
    g.add_argument("--role-arn", help="ecr: role to assume")
    g.add_argument("--api-url", help="ecr: ECR API endpoint (VPC endpoints)")
    p.add_argument("--app-ids", help="comma-separated app ids or slugs that may use it (default: every app)")
    p.add_argument("--url", help="where to reach the registry (default https://<endpoint>)")
    p.add_argument("--insecure", action="store_true", default=None, help="allow an http:// --url")
    p.add_argument("--skip-validation", action="store_true", help="store without testing the credentials")
    p.add_argument("--image", help="image to test the credentials with (repository[:tag])")


def _read_stdin_once(args: argparse.Namespace) -> None:
    flags = [f for f in ("password_stdin", "token_stdin", "secretaccesskey_stdin", "serviceaccountkey_stdin")
             if getattr(args, f, False)]  # fmt: skip
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


def _registry_body(args: argparse.Namespace, provider: str | None, creating: bool) -> dict[str, Any]:
    _read_stdin_once(args)
    body: dict[str, Any] = {}
    for key, attr in (("url", "url"), ("image", "image"), ("region", "region"), ("roleArn", "role_arn"),
                      ("apiUrl", "api_url")):  # fmt: skip
        if getattr(args, attr, None):
            body[key] = getattr(args, attr)
    if args.insecure:
        body["insecure"] = True
    if args.skip_validation:
        body["skipValidation"] = True
    if args.app_ids:
        body["appIds"] = [a.strip() for a in args.app_ids.split(",") if a.strip()]
    password = _stdin_secret() if args.password_stdin else args.password
    token = _stdin_secret() if args.token_stdin else args.registry_token
    secret_key = _stdin_secret() if args.secretaccesskey_stdin else args.secretaccesskey
    sa_key = None
    if args.serviceaccountkey_stdin:
        sa_key = _stdin_secret(multiline=True)
    elif args.serviceaccountkey:
        try:
            sa_key = Path(args.serviceaccountkey).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CLIError(f"--serviceaccountkey: cannot read the file ({exc.strerror})") from None
    if provider == "ecr":
        if args.accesskeyid:
            body["accessKeyId"] = args.accesskeyid
        if secret_key is None and (creating or args.accesskeyid):
            secret_key = _prompt("AWS secret access key")
        if secret_key is not None:
            body["secretAccessKey"] = secret_key
        return body
    if sa_key is not None:
        body["serviceAccountKey"] = sa_key
        return body
    if token is not None:
        body["username"] = args.username or ("oauth2accesstoken" if provider in ("gcr", "gar") else None)
        body["password"] = token
    elif password is not None:
        body["password"] = password
        if args.username:
            body["username"] = args.username
    elif args.username:
        body["username"] = args.username
        prompted = _prompt("Password")
        if prompted is not None:
            body["password"] = prompted
    return {k: v for k, v in body.items() if v is not None}


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
        print("hint: the credentials work; check the repository name and tag (the image is given as it is "
              "at the registry, e.g. vendor/app:1.0)", file=sys.stderr)  # fmt: skip
    else:
        print(f"failed: status {res['status']}: {res['reason']}", file=sys.stderr)
    return 1


def _registry_logs(api: Api, args: argparse.Namespace) -> int:
    print_logs(api.call("GET", "/external_registry/logs", query={"endpoint": args.name})["logs"], args.output)
    return 0
