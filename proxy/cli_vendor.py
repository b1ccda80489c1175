"""`pullgate registry|app|customer|license|logs ...`: the vendor API from a shell.

Talks to the admin listener's `/vendor/v3` (origin from `--api-origin` or
PULLGATE_API_ORIGIN, token from `--token` or PULLGATE_API_TOKEN). Secrets are
taken from `--…-stdin` or a masked prompt as well as from flags, so they need
not be in shell history; they are never printed. A failed call prints
`<METHOD> <URL> <status>: <message>` and exits 1.

`pullgate admin token create --team NAME` is the exception: it works on the
store directly (the first token of a fresh install has no token to call with).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proxy.config import PROVIDERS, Config

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


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode("utf-8", "replace")[:200] or "(no message)"


# --- arguments ---------------------------------------------------------------------


Command = Callable[[Api, argparse.Namespace], int]


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")


def _api_token_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given before the command is not overwritten by the default.
    p.add_argument("--token", dest="api_token", default=argparse.SUPPRESS,
                   help="vendor API token (default: $PULLGATE_API_TOKEN)")  # fmt: skip


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


def install(root: argparse.ArgumentParser, sub: Any) -> Any:
    """The vendor API commands, and `admin`; returns admin's subparsers for more operator commands."""
    root.add_argument("--token", dest="api_token", default=None,
                      help="vendor API token (default: $PULLGATE_API_TOKEN)")  # fmt: skip
    root.add_argument("--api-origin", default=None,
                      help=f"admin listener origin (default: $PULLGATE_API_ORIGIN, else {DEFAULT_ORIGIN})")  # fmt: skip

    def cmd(parent: Any, name: str, func: Command, help: str, token_flag: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        p.set_defaults(api_call=func)
        if token_flag:
            _api_token_flag(p)
        return p

    reg = sub.add_parser("registry", help="external registries (vendor API)")
    rs = reg.add_subparsers(dest="registry_command", required=True)
    add = cmd(rs, "add", _registry_add, "add an external registry", token_flag=False)
    add.add_argument("provider", choices=PROVIDERS)
    add.add_argument("--endpoint", help="registry host as in image references (default for dockerhub, ghcr, quay, gcr)")
    add.add_argument("--name", help="slug used in pull paths (default: from the endpoint)")
    _secret_flags(add)
    _output(add)
    upd = cmd(rs, "update", _registry_update, "rotate a registry's credentials (or change apps, url)",
              token_flag=False)  # fmt: skip
    upd.add_argument("name")
    _secret_flags(upd)
    _output(upd)
    ls = cmd(rs, "ls", _registry_ls, "list external registries")
    ls.add_argument("name", nargs="?")
    _output(ls)
    rm = cmd(rs, "rm", _registry_rm, "remove an external registry")
    rm.add_argument("name")
    test = cmd(rs, "test", _registry_test, "test that the stored credentials can pull an image")
    test.add_argument("hostname", help="the registry's endpoint (or slug)")
    test.add_argument("--image", required=True, help="repository[:tag|@digest] at that registry")
    logs = cmd(rs, "logs", _registry_logs, "pull log of one registry")
    logs.add_argument("name")
    _output(logs)

    app = sub.add_parser("app", help="apps (vendor API)")
    aps = app.add_subparsers(dest="app_command", required=True)
    create = cmd(aps, "create", _app_create, "create an app")
    create.add_argument("slug")
    _app_flags(create)
    _output(create)
    aupd = cmd(aps, "update", _app_update, "change an app's name, image allowlist or KOTS public key")
    aupd.add_argument("slug")
    _app_flags(aupd)
    aupd.add_argument("--clear-allowlist", action="store_true", help="allow every repository again")
    _output(aupd)
    als = cmd(aps, "ls", _app_ls, "list apps")
    _output(als)

    cust = sub.add_parser("customer", help="customers and their licenses (vendor API)")
    cs = cust.add_subparsers(dest="customer_command", required=True)
    ccreate = cmd(cs, "create", _customer_create, "create a customer; prints the license ID once")
    ccreate.add_argument("--name", required=True)
    ccreate.add_argument("--email")
    ccreate.add_argument("--app", required=True, help="app slug")
    ccreate.add_argument("--type", dest="license_type", default="prod", help="license type (default prod)")
    ccreate.add_argument("--expires-at", help="ISO 8601 time, e.g. 2027-01-01T00:00:00Z")
    _output(ccreate)
    cls = cmd(cs, "ls", _customer_ls, "list customers")
    cls.add_argument("--app", help="only this app's customers")
    _output(cls)
    for action in ("revoke", "archive", "restore"):
        c = cmd(cs, action, _customer_action, f"{action} a customer's license")
        c.add_argument("id")

    lic = sub.add_parser("license", help="licenses from other systems (vendor API)")
    ls_ = lic.add_subparsers(dest="license_command", required=True)
    imp = cmd(ls_, "import", _license_import, "import a signed KOTS License YAML as a customer")
    imp.add_argument("file", help="the License YAML ('-' for standard input)")
    _output(imp)

    pl = cmd(sub, "logs", _pull_logs, "the pull log (vendor API)")
    pl.add_argument("--customer", help="customer id")
    pl.add_argument("--registry", help="registry slug or endpoint")
    pl.add_argument("--since", help="ISO 8601 time")
    pl.add_argument("--until", help="ISO 8601 time")
    pl.add_argument("--limit", help="at most this many rows (default 500)")
    _output(pl)

    admin = sub.add_parser("admin", help="operator commands on the store (needs --config)")
    ads = admin.add_subparsers(dest="admin_command", required=True)
    token = ads.add_parser("token", help="vendor API tokens")
    ts = token.add_subparsers(dest="token_command", required=True)
    tcreate = ts.add_parser("create", help="create an API token for a team (created if missing); printed once")
    tcreate.add_argument("--team", required=True)
    tcreate.add_argument("--name", default="cli", help="a label for the token")
    tcreate.add_argument("--config", "-c", default=os.environ.get("PULLGATE_CONFIG"),
                         help="YAML config file (default: $PULLGATE_CONFIG)")  # fmt: skip
    return ads


def _app_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="display name")
    p.add_argument("--allow", action="append", metavar="PATTERN",
                   help="allowed upstream repository pattern, e.g. 'vendor/*' (repeatable)")  # fmt: skip
    p.add_argument("--kots-public-key", metavar="FILE", help="PEM public key that signs this app's KOTS licenses")


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


# --- output --------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# --- secrets -------------------------------------------------------------------------


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
        _print_json(reg)
    else:
        _table([_registry_row(reg)], REGISTRY_HEADERS)
    return 0


def _registry_update(api: Api, args: argparse.Namespace) -> int:
    current = api.call("GET", f"/external_registry/{_seg(args.name)}")["external_registry"]
    body = _registry_body(args, current["provider"], creating=False)
    try:
        reg = api.call("PUT", f"/external_registry/{_seg(args.name)}", body)["external_registry"]
    except CLIError as exc:
        if "requires giving the secret again" in str(exc):
            hint = _SECRET_AGAIN.get(current["authType"], _SECRET_AGAIN["password"])
            raise CLIError(f"{exc}\nhint: {hint}") from None
        raise
    if args.output == "json":
        _print_json(reg)
    else:
        _table([_registry_row(reg)], REGISTRY_HEADERS)
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
        regs = [api.call("GET", f"/external_registry/{_seg(args.name)}")["external_registry"]]
    else:
        regs = api.call("GET", "/external_registries")["external_registries"]
    if args.output == "json":
        _print_json(regs)
    else:
        _table([_registry_row(r) for r in regs], REGISTRY_HEADERS)
    return 0


def _registry_rm(api: Api, args: argparse.Namespace) -> int:
    api.call("DELETE", f"/external_registry/{_seg(args.name)}")
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


LOG_HEADERS = ("TIME", "CUSTOMER", "REGISTRY", "ACTION", "IMAGE", "REFERENCE", "STATUS", "BYTES")


def _print_logs(logs: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        _print_json(logs)
        return
    _table([[e["time"], e["customerName"] or e["customerId"], e["registry"], e["action"], e["image"],
             e["reference"], e["status"], e["bytes"]] for e in logs], LOG_HEADERS)  # fmt: skip


def _registry_logs(api: Api, args: argparse.Namespace) -> int:
    _print_logs(api.call("GET", "/external_registry/logs", query={"endpoint": args.name})["logs"], args.output)
    return 0


def _pull_logs(api: Api, args: argparse.Namespace) -> int:
    query = {k: getattr(args, k) for k in ("customer", "registry", "since", "until", "limit") if getattr(args, k)}
    _print_logs(api.call("GET", "/pull_logs", query=query)["logs"], args.output)
    return 0


# --- apps ------------------------------------------------------------------------------


def _app_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.name:
        body["name"] = args.name
    if args.allow:
        body["imageAllowlist"] = args.allow
    if getattr(args, "clear_allowlist", False):
        body["imageAllowlist"] = []
    if args.kots_public_key:
        try:
            body["kotsPublicKey"] = Path(args.kots_public_key).read_text(encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"--kots-public-key: cannot read the file ({exc.strerror})") from None
    return body


def _print_apps(apps: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        _print_json(apps)
        return
    _table([[a["slug"], a["name"], a["id"], ",".join(a["imageAllowlist"]) or "*",
             "yes" if a["kotsPublicKey"] else "no"] for a in apps],
           ("SLUG", "NAME", "ID", "ALLOWLIST", "KOTS_KEY"))  # fmt: skip


def _app_create(api: Api, args: argparse.Namespace) -> int:
    app = api.call("POST", "/app", {"slug": args.slug, **_app_body(args)})["app"]
    _print_apps([app], args.output)
    return 0


def _app_update(api: Api, args: argparse.Namespace) -> int:
    app = api.call("PATCH", f"/app/{_seg(args.slug)}", _app_body(args))["app"]
    _print_apps([app], args.output)
    return 0


def _app_ls(api: Api, args: argparse.Namespace) -> int:
    _print_apps(api.call("GET", "/apps")["apps"], args.output)
    return 0


# --- customers -------------------------------------------------------------------------

CUSTOMER_HEADERS = ("ID", "NAME", "EMAIL", "APP", "TYPE", "EXPIRES", "STATUS")


def _customer_row(c: dict[str, Any]) -> list[Any]:
    return [c["id"], c["name"], c["email"], c["appSlug"], c["licenseType"], c["expiresAt"] or "never", c["status"]]


def _customer_create(api: Api, args: argparse.Namespace) -> int:
    body = {"name": args.name, "appSlug": args.app, "licenseType": args.license_type}
    if args.email:
        body["email"] = args.email
    if args.expires_at:
        body["expiresAt"] = args.expires_at
    c = api.call("POST", "/customer", body)["customer"]
    if args.output == "json":
        _print_json(c)
    else:
        _table([_customer_row(c)], CUSTOMER_HEADERS)
        print(f"\nLicense ID (shown once here; give it to the customer): {c['licenseId']}")
    return 0


def _customer_ls(api: Api, args: argparse.Namespace) -> int:
    customers = api.call("GET", "/customers", query={"appSlug": args.app} if args.app else None)["customers"]
    if args.output == "json":
        _print_json(customers)
    else:
        _table([_customer_row(c) for c in customers], CUSTOMER_HEADERS)
    return 0


def _customer_action(api: Api, args: argparse.Namespace) -> int:
    action = args.customer_command
    c = api.call("POST", f"/customer/{_seg(args.id)}/{action}")["customer"]
    print(f"customer {c['id']} ({c['name']}): {c['status']}")
    return 0


def _license_import(api: Api, args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"{args.file}: cannot read ({exc.strerror})") from None
    res = api.call("POST", "/license/import", {"license": text})
    c = res["customer"]
    if args.output == "json":
        _print_json(res)
    else:
        _table([_customer_row(c)], CUSTOMER_HEADERS)
        print(f"\n{'imported' if res['created'] else 'updated'} customer {c['id']}")
    return 0


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --- admin (on the store) ------------------------------------------------------------


async def admin_token_create(cfg: Config, team_name: str, label: str) -> int:
    from proxy.store import open_store
    from proxy.vendor.service import new_api_token

    store = await open_store(cfg.store, cfg.base_dir)
    try:
        existed = await store.team_by_name(team_name) is not None
        team = await store.ensure_team(team_name)
        token = new_api_token()
        await store.ensure_api_token(team.id, token, label)
    finally:
        await store.close()
    if not existed:
        print(f"pullgate: created team {team_name!r}", file=sys.stderr)
    print(token)
    return 0
