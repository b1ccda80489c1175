"""Settings: one YAML file plus PULLGATE_<SECTION>_<KEY> environment overrides.

Validated at start: an unknown key or a value of the wrong type stops the start
with a message naming the key. Secrets are never written in the file; they are
referenced with `*_file` (a path, as Kubernetes mounts secrets) or `*_env`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.dnsname import HOSTNAME_RE
from proxy.egress import EgressPolicy, listener_of, parse_allow, url_target
from proxy.oci.allowlist import check_patterns


class ConfigError(ValueError):
    """A configuration problem, always naming the key at fault."""


@dataclass
class ProxySection:
    listen: str = "0.0.0.0:8080"
    # Hosts served besides verified custom domains; the first is the default.
    hosts: list[str] = field(default_factory=list)
    # Peers whose X-Forwarded-Proto / X-Forwarded-Host are believed (CIDRs).
    trusted_proxies: list[str] = field(default_factory=list)
    # On SIGTERM, running streams get this long to finish.
    shutdown_grace_seconds: float = 30.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


@dataclass
class AdminSection:
    listen: str = "127.0.0.1:8081"


@dataclass
class KeysSection:
    file: str = "/var/lib/pullgate/keys.yaml"


@dataclass
class AuthSection:
    token_ttl_seconds: int = 300
    # A revoked license stops pulling within this long, even with a live token.
    license_cache_seconds: float = 5.0
    # Refused credentials per client address: after `failed_burst` (refilled at
    # `failed_per_minute`), that address gets 429 until it cools down.
    failed_per_minute: int = 30
    failed_burst: int = 50


@dataclass
class UpstreamSection:
    connect_timeout: float = 10.0
    first_byte_timeout: float = 60.0
    idle_timeout: float = 60.0
    max_redirects: int = 5
    retries: int = 2
    chunk_size: int = 1024 * 1024
    # Upstream connections in all; one registry may hold at most pool_per_registry of them.
    pool_size: int = 200
    pool_per_registry: int = 50
    # An idle upstream connection is closed this long after its last use.
    keepalive_seconds: float = 30.0
    # Exceptions to the egress policy's private-address block: CIDR, ADDRESS:PORT or [IPV6]:PORT.
    egress_allow: list[str] = field(default_factory=list)


@dataclass
class LogSection:
    level: str = "INFO"
    access_log: bool = True


@dataclass
class PullLogSection:
    # Rows older than this many days are deleted (hourly); 0 keeps them forever.
    retention_days: int = 90
    # Events wait here for the writer; when full, new events are dropped and counted.
    queue_size: int = 10000
    batch_size: int = 500
    flush_seconds: float = 1.0


@dataclass
class DomainsSection:
    # Nameservers ("ip" or "ip:port") for ownership checks; empty: the system's.
    resolver: list[str] = field(default_factory=list)
    # Port of the HTTP ownership check (the proxy's plain-HTTP port as clients reach it).
    http_verify_port: int = 80
    # How often every replica reloads hostnames and certificates from the store.
    refresh_seconds: float = 5.0
    # Also accept the HTTP challenge as proof of ownership. Off: the proxy answering
    # for a name proves only that DNS points here, not who owns the name.
    http_challenge: bool = False
    # Names no team may claim, besides proxy.hosts: each entry reserves the name and
    # every name under it (a leading "*." is accepted and means the same).
    reserved: list[str] = field(default_factory=list)


@dataclass
class AnonymousSection:
    # Per client address, for /v2/anonymous/...: sustained pulls per minute and burst.
    rate_per_minute: int = 600
    burst: int = 100


@dataclass
class LimitsSection:
    # Seconds a client has to send a request's headers, from connecting or from the
    # previous response on a keep-alive connection (slowloris).
    header_timeout: float = 10.0
    # Open connections on the proxy listener; beyond it new ones are closed at once.
    max_connections: int = 10000
    # Concurrent manifest and blob bodies (GET) per license and per client address
    # (IPv6 by /64); more get 429 TOOMANYREQUESTS with Retry-After.
    streams_per_license: int = 64
    streams_per_address: int = 128
    # A client reading a body slower than this many bytes/s over `min_stream_window`
    # seconds is dropped; 0 turns the check off.
    min_stream_rate: int = 8192
    min_stream_window: float = 30.0
    # KOTS license imports per team and minute (vendor API and portal).
    license_imports_per_minute: int = 30


@dataclass
class ApiTokenSpec:
    token_env: str | None = None
    token_file: str | None = None
    name: str = "bootstrap"


@dataclass
class AppSpec:
    slug: str
    name: str | None = None


@dataclass
class RegistrySpec:
    provider: str
    endpoint: str
    slug: str | None = None
    url: str | None = None
    insecure: bool = False
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    apps: list[str] = field(default_factory=list)
    allow_anonymous: bool = False
    # Repository patterns served on /v2/anonymous/... (empty: all its apps' allowlists allow).
    anonymous_repositories: list[str] = field(default_factory=list)
    # Amazon ECR
    access_key_id: str | None = None
    secret_access_key_file: str | None = None
    secret_access_key_env: str | None = None
    region: str | None = None
    role_arn: str | None = None
    api_url: str | None = None  # the ECR API endpoint (VPC endpoints, tests)
    sts_url: str | None = None  # the STS endpoint for role_arn


@dataclass
class CustomerSpec:
    name: str
    app: str
    email: str | None = None
    license_id_env: str | None = None
    license_id_file: str | None = None
    license_type: str = "prod"
    expires_at: str | None = None


@dataclass
class TeamSpec:
    name: str
    api_tokens: list[ApiTokenSpec] = field(default_factory=list)
    apps: list[AppSpec] = field(default_factory=list)
    registries: list[RegistrySpec] = field(default_factory=list)
    customers: list[CustomerSpec] = field(default_factory=list)


@dataclass
class BootstrapSection:
    teams: list[TeamSpec] = field(default_factory=list)


@dataclass
class Config:
    proxy: ProxySection = field(default_factory=ProxySection)
    admin: AdminSection = field(default_factory=AdminSection)
    store: str = "sqlite:///var/lib/pullgate/pullgate.db"
    keys: KeysSection = field(default_factory=KeysSection)
    auth: AuthSection = field(default_factory=AuthSection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    log: LogSection = field(default_factory=LogSection)
    pulllog: PullLogSection = field(default_factory=PullLogSection)
    domains: DomainsSection = field(default_factory=DomainsSection)
    anonymous: AnonymousSection = field(default_factory=AnonymousSection)
    bootstrap: BootstrapSection = field(default_factory=BootstrapSection)
    # Where relative paths in the file are anchored.
    base_dir: Path = field(default=Path("."), metadata={"internal": True})


PROVIDERS = ("dockerhub", "ecr", "gcr", "gar", "ghcr", "quay", "other")

# CLI-side variables that share the prefix but are not settings.
_NOT_SETTINGS = {"PULLGATE_API_ORIGIN", "PULLGATE_API_TOKEN", "PULLGATE_CONFIG"}


class DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word; a config file where a
    section appears twice would run on half of what its operator wrote."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise DuplicateKey(f"line {line}: key {key!r} appears twice in the same mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path: str | os.PathLike[str] | None, environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {p}: {exc.strerror}") from None
        try:
            raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a SafeLoader
        except DuplicateKey as exc:
            raise ConfigError(f"config file {p}: {exc}") from None
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: an impossible date such as 2001-13-01
            raise ConfigError(f"config file {p}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p}: the top level must be a mapping")
    _apply_env(raw, environ)
    cfg = _build(Config, raw, "")
    cfg.base_dir = base_dir
    _validate(cfg)
    return cfg


def _apply_env(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config) if not f.metadata.get("internal")}
    for name, value in environ.items():
        if not name.startswith("PULLGATE_") or name in _NOT_SETTINGS:
            continue
        rest = name[len("PULLGATE_") :].lower()
        if rest in sections and not dataclasses.is_dataclass(_type_of(sections[rest])):
            raw[rest] = _env_value(_type_of(sections[rest]), value)
            continue
        section, _, key = rest.partition("_")
        if section not in sections or section == "bootstrap":
            continue  # not ours (e.g. PULLGATE_TEST_*): leave it alone
        cls = _type_of(sections[section])
        keys = {f.name for f in dataclasses.fields(cls)}
        if key not in keys:
            raise ConfigError(f"environment {name}: {section} has no key {key!r}")
        if raw.get(section) is None:  # absent, or every key commented out
            raw[section] = {}
        target = raw[section]
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: must be a mapping")
        target[key] = _env_value(typing.get_type_hints(cls)[key], value)


def _env_value(tp: Any, value: str) -> Any:
    """Strings are taken verbatim (PULLGATE_KEYS_FILE=0700 stays "0700");
    numbers, booleans and lists are read as YAML scalars."""
    optional_str = typing.get_origin(tp) in (types.UnionType, typing.Union) and str in typing.get_args(tp)
    if tp is str or optional_str:
        return value
    try:
        return yaml.safe_load(value)
    except (yaml.YAMLError, ValueError):  # ValueError: an impossible date; the type check names the key
        return value


def _type_of(f: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(Config)
    return hints.get(f.name, f.type)


def _build(cls: Any, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{_join(where, str(key))}: unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or isinstance(value, dict | list) or value is None:
            raise ConfigError(f"{key}: must be a string")
        # YAML turns unquoted timestamps into datetimes; keep their ISO form.
        if hasattr(value, "isoformat"):
            return value.isoformat()
        return str(value)
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover - schema bug


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def parse_listen(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: must be host:port, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _validate(cfg: Config) -> None:
    parse_listen(cfg.proxy.listen, "proxy.listen")
    parse_listen(cfg.admin.listen, "admin.listen")
    if not (cfg.store.startswith("sqlite:") or cfg.store.startswith(("postgresql://", "postgres://"))):
        raise ConfigError("store: must be sqlite:///<path> or postgresql://...")
    for i, cidr in enumerate(cfg.proxy.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"proxy.trusted_proxies[{i}]: not an address or network: {cidr!r}") from None
    if bool(cfg.proxy.tls_cert_file) != bool(cfg.proxy.tls_key_file):
        raise ConfigError("proxy.tls_cert_file: tls_cert_file and tls_key_file go together")
    if not 0 <= cfg.auth.license_cache_seconds <= 5:
        raise ConfigError("auth.license_cache_seconds: must be between 0 and 5")
    if not 10 <= cfg.auth.token_ttl_seconds <= 3600:
        raise ConfigError("auth.token_ttl_seconds: must be between 10 and 3600")
    _validate_upstream(cfg)
    if cfg.pulllog.retention_days < 0:
        raise ConfigError("pulllog.retention_days: must be 0 (keep forever) or more")
    if cfg.pulllog.queue_size < 1 or cfg.pulllog.batch_size < 1:
        raise ConfigError("pulllog.queue_size: queue_size and batch_size must be at least 1")
    if not 0.01 <= cfg.pulllog.flush_seconds <= 60:
        raise ConfigError("pulllog.flush_seconds: must be between 0.01 and 60")
    _validate_domains(cfg.domains)
    _validate_limits(cfg.limits)
    if cfg.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log.level: must be DEBUG, INFO, WARNING or ERROR")
    for t, team in enumerate(cfg.bootstrap.teams):
        where = f"bootstrap.teams[{t}]"
        slugs = {a.slug for a in team.apps}
        for r, reg in enumerate(team.registries):
            rk = f"{where}.registries[{r}]"
            if reg.provider not in PROVIDERS:
                raise ConfigError(f"{rk}.provider: must be one of {', '.join(PROVIDERS)}")
            if reg.url and reg.url.startswith("http://") and not reg.insecure:
                raise ConfigError(f"{rk}.url: an http:// url needs insecure: true")
            if reg.url and not reg.url.startswith(("http://", "https://")):
                raise ConfigError(f"{rk}.url: must start with https:// (or http:// with insecure)")
            for problem in check_patterns(reg.anonymous_repositories, "anonymous_repositories"):
                raise ConfigError(f"{rk}.{problem}")
            if reg.password_file and reg.password_env:
                raise ConfigError(f"{rk}.password_file: give password_file or password_env, not both")
            for a in reg.apps:
                if a not in slugs:
                    raise ConfigError(f"{rk}.apps: unknown app {a!r}")
        for c, cust in enumerate(team.customers):
            ck = f"{where}.customers[{c}]"
            if cust.app not in slugs:
                raise ConfigError(f"{ck}.app: unknown app {cust.app!r}")
            if not (cust.license_id_env or cust.license_id_file):
                raise ConfigError(f"{ck}.license_id_env: a license_id_env or license_id_file is required")
        for k, tok in enumerate(team.api_tokens):
            if not (tok.token_env or tok.token_file):
                raise ConfigError(f"{where}.api_tokens[{k}].token_env: token_env or token_file is required")


def _validate_domains(domains: DomainsSection) -> None:
    for i, name in enumerate(domains.reserved):
        bare = name.lower().rstrip(".").removeprefix("*.")
        if not HOSTNAME_RE.match(bare):
            raise ConfigError(f"domains.reserved[{i}]: not a DNS name (e.g. corp.example or *.corp.example): {name!r}")


def _validate_limits(limits: LimitsSection) -> None:
    if not 0.5 <= limits.header_timeout <= 300:
        raise ConfigError("limits.header_timeout: must be between 0.5 and 300 seconds")
    for key in ("max_connections", "streams_per_license", "streams_per_address", "license_imports_per_minute"):
        if getattr(limits, key) < 1:
            raise ConfigError(f"limits.{key}: must be at least 1")
    if limits.min_stream_rate < 0:
        raise ConfigError("limits.min_stream_rate: must be 0 (off) or more bytes per second")
    if not 0.5 <= limits.min_stream_window <= 3600:
        raise ConfigError("limits.min_stream_window: must be between 0.5 and 3600 seconds")


def _validate_upstream(cfg: Config) -> None:
    up = cfg.upstream
    if up.chunk_size < 64 * 1024:
        raise ConfigError("upstream.chunk_size: must be at least 65536")
    if up.pool_size < 1:
        raise ConfigError("upstream.pool_size: must be at least 1")
    if not 1 <= up.pool_per_registry <= up.pool_size:
        raise ConfigError(f"upstream.pool_per_registry: must be between 1 and upstream.pool_size ({up.pool_size})")
    if not 0.5 <= up.keepalive_seconds <= 3600:
        raise ConfigError("upstream.keepalive_seconds: must be between 0.5 and 3600")
    try:
        allow = parse_allow(up.egress_allow)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _check_bootstrap_destinations(cfg, allow)


def _check_bootstrap_destinations(cfg: Config, allow: list[Any]) -> None:
    """Bootstrap registries are the operator's own, but a literal address the egress
    policy refuses would only fail at the first pull: say so at start. Names
    (localhost too) are judged when the proxy connects, as for every registry."""
    listeners = [
        listener_of(*parse_listen(v, k))
        for v, k in ((cfg.proxy.listen, "proxy.listen"), (cfg.admin.listen, "admin.listen"))
    ]
    policy = EgressPolicy(allow, listeners)
    for t, team in enumerate(cfg.bootstrap.teams):
        for r, reg in enumerate(team.registries):
            for name in ("url", "api_url", "sts_url"):
                value = getattr(reg, name)
                target = url_target(value) if value else None
                if target is None:
                    continue
                host, port = target
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    continue  # a name: judged at connect time
                refusal = policy.check(host, port)
                if refusal is not None:
                    raise ConfigError(
                        f"bootstrap.teams[{t}].registries[{r}].{name}: {host}:{port} is {refusal.reason}, "
                        f"refused by the egress policy; {refusal.advice()}"
                        + (f" (e.g. {host}:{port})" if refusal.overridable else "")
                    )


def read_secret(
    key: str,
    file_ref: str | None,
    env_ref: str | None,
    environ: typing.Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> str | None:
    """Resolve a secret given by reference; the error names the key, never the value."""
    environ = os.environ if environ is None else environ
    if file_ref:
        p = Path(file_ref)
        if base_dir is not None and not p.is_absolute():
            p = base_dir / p
        try:
            return p.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{key}_file: cannot read {p}: {exc.strerror}") from None
    if env_ref:
        if env_ref not in environ:
            raise ConfigError(f"{key}_env: environment variable {env_ref} is not set")
        return environ[env_ref]
    return None


def keys_path(cfg: Config) -> Path:
    """The master keyring's file (`keys.file`, relative to the config file's directory)."""
    p = Path(cfg.keys.file)
    return p if p.is_absolute() else cfg.base_dir / p


def sqlite_path(store: str, base_dir: Path) -> Path:
    """sqlite:///abs/path (URL form) or sqlite:relative/path (to the working dir)."""
    rest = store[len("sqlite:") :]
    if rest.startswith("///"):
        return Path("/" + rest.lstrip("/"))
    if rest.startswith("//"):
        raise ConfigError("store: sqlite URLs are sqlite:///absolute/path or sqlite:relative/path")
    p = Path(rest)
    return p if p.is_absolute() else base_dir / p
