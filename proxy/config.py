"""Settings: one YAML file plus PULLGATE_<SECTION>_<KEY> environment overrides.

Validated at start: an unknown key or a value of the wrong type stops the start
with a message naming the key. Secrets are never written in the file; they are
referenced with `*_file` (a path, as Kubernetes mounts secrets) or `*_env`.
The sections' shapes live in the leaf `proxy.settings` (re-exported here); a
bootstrap registry's own keys are those its provider declares
(proxy.upstream.providers), which is why this module sits above `upstream`.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from proxy.dnsname import HOSTNAME_RE
from proxy.egress import EgressPolicy, carries_credentials, listener_of, parse_allow, url_target
from proxy.oci.allowlist import check_patterns
from proxy.settings import (
    AdminSection,
    AnonymousSection,
    ApiTokenSpec,
    AppSpec,
    AuthSection,
    BootstrapSection,
    CacheS3Section,
    CacheSection,
    Config,
    ConfigError,
    CustomerSpec,
    DomainsSection,
    KeysSection,
    LimitsSection,
    LogSection,
    ProxySection,
    PullLogSection,
    RegistrySpec,
    TeamSpec,
    UpstreamSection,
    WebhooksSection,
    keys_path,
    parse_listen,
    parse_size,
    read_secret,
    sqlite_path,
)
from proxy.upstream.providers import PROVIDERS, Provider
from proxy.upstream.providers.base import SECRET, Field

# The sections' shapes, re-exported: `from proxy.config import Config` keeps working above `upstream`.
__all__ = [
    "AdminSection",
    "AnonymousSection",
    "ApiTokenSpec",
    "AppSpec",
    "AuthSection",
    "BootstrapSection",
    "CacheS3Section",
    "CacheSection",
    "Config",
    "ConfigError",
    "CustomerSpec",
    "DomainsSection",
    "KeysSection",
    "LimitsSection",
    "LogSection",
    "ProxySection",
    "PullLogSection",
    "RegistrySpec",
    "TeamSpec",
    "UpstreamSection",
    "WebhooksSection",
    "keys_path",
    "load",
    "parse_listen",
    "read_secret",
    "registry_fields",
    "sqlite_path",
    "validate_cache_s3",
]

# S3 bucket names (the rules every S3-compatible server keeps: 3-63 characters, lower case,
# digits, dots and hyphens, a letter or digit at both ends); prefixes and regions are kept to
# the characters that need no escaping in a signed request.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
S3_PREFIX_RE = re.compile(r"^[A-Za-z0-9._/-]*$")
S3_REGION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ACCESS_KEY_RE = re.compile(r"^[A-Za-z0-9/+=._-]{1,128}$")

# CLI-side variables that share the prefix but are not settings.
_NOT_SETTINGS = {"PULLGATE_API_ORIGIN", "PULLGATE_API_TOKEN", "PULLGATE_CONFIG", "PULLGATE_WORKERS"}


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
    applied = _apply_env(raw, environ)
    try:
        cfg = _build(Config, raw, "")
        cfg.base_dir = base_dir
        _validate(cfg)
    except ConfigError as exc:
        raise ConfigError(_unquoted(str(exc), applied)) from None
    return cfg


def _unquoted(message: str, applied: dict[str, str]) -> str:
    """A check that quotes the value at fault (proxy.listen, cache.max_size, a list's entry)
    names the variable instead when the value came from the environment, which may hold anything."""
    for name, value in applied.items():
        try:
            parsed = yaml.safe_load(value)
        except (yaml.YAMLError, ValueError):
            parsed = None
        entries = [v for v in parsed if isinstance(v, str)] if isinstance(parsed, list) else []
        for shown in (value, *entries):
            if shown:
                message = message.replace(repr(shown), f"<the value of {name}>")
    return message


def _apply_env(raw: dict[str, Any], environ: typing.Mapping[str, str]) -> dict[str, str]:
    """PULLGATE_<SECTION>_<KEY>, where SECTION is a section's path joined with `_`
    (PULLGATE_CACHE_S3_BUCKET is `cache.s3.bucket`). Keys hold underscores too, so the
    longest section path the name starts with wins: PULLGATE_CACHE_TAG_TTL is
    `cache.tag_ttl`, PULLGATE_CACHE_S3_ACCESS_KEY_ID is `cache.s3.access_key_id`.
    No message here quotes a value: an environment variable may hold anything.
    Returns the overrides applied, by variable name."""
    sections, scalars = _override_table()
    applied: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith("PULLGATE_") or name in _NOT_SETTINGS:
            continue
        rest = name[len("PULLGATE_") :].lower()
        if rest in scalars:  # a top-level value such as `store`
            raw[rest] = _env_value(scalars[rest], value)
            applied[name] = value
            continue
        if rest in sections:
            raise ConfigError(
                f"environment {name}: {'.'.join(sections[rest][0])} is a section; set its keys ({name}_<KEY>)"
            )
        prefix = max((s for s in (*sections, *scalars) if rest.startswith(s + "_")), key=len, default=None)
        if prefix is None:
            continue  # not ours (e.g. PULLGATE_TEST_*, PULLGATE_BOOTSTRAP_*): leave it alone
        if prefix in scalars:
            raise ConfigError(f"environment {name}: {prefix} is a single value; set PULLGATE_{prefix.upper()}")
        path, cls = sections[prefix]
        key = rest[len(prefix) + 1 :]
        where = ".".join(path)
        hints = typing.get_type_hints(cls)
        keys = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        if key not in keys:
            hint = ""
            if f"{key}_file" in keys:  # a secret's value was given: it goes by reference
                hint = f"; a secret is given by reference: {name}_FILE (a path) or {name}_ENV (a variable's name)"
            raise ConfigError(f"environment {name}: {where} has no key {key!r}{hint}")
        target = _section_dict(raw, path)
        target[key] = _env_value(hints[key], value)
        applied[name] = value
    return applied


@functools.cache
def _override_table() -> tuple[dict[str, tuple[tuple[str, ...], Any]], dict[str, Any]]:
    """Every section reachable by an override, by its environment prefix (`cache_s3` ->
    (("cache", "s3"), CacheS3Section)), and the top-level single values (`store` -> str)."""
    sections: dict[str, tuple[tuple[str, ...], Any]] = {}
    scalars: dict[str, Any] = {}

    def walk(cls: Any, path: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or (not path and f.name == "bootstrap"):
                continue  # bootstrap holds lists of entries: no key path names one of them
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                sections["_".join((*path, f.name))] = ((*path, f.name), tp)
                walk(tp, (*path, f.name))
            elif not path:
                scalars[f.name] = tp

    walk(Config, ())
    return sections, scalars


def _section_dict(raw: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The mapping of a section in the file's data, made where it is absent (or null:
    every key commented out), so an override works without the section in the file."""
    target = raw
    for i, part in enumerate(path):
        if target.get(part) is None:
            target[part] = {}
        target = target[part]
        if not isinstance(target, dict):
            raise ConfigError(f"{'.'.join(path[: i + 1])}: must be a mapping")
    return target


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


def _build(cls: Any, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    if cls is RegistrySpec:
        data, kwargs["fields"] = _provider_keys(data, where)
        del fields["fields"]
    for key in data:
        if key not in fields:
            raise ConfigError(f"{_join(where, str(key))}: unknown key")
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


def config_keys(f: Field) -> tuple[str, ...]:
    """The config keys of a declared field: a secret is given by reference only."""
    if f.config is None:
        return ()
    return (f"{f.config}_file", f"{f.config}_env") if f.secret else (f.config,)


def _provider_keys(data: dict[Any, Any], where: str) -> tuple[dict[Any, Any], dict[str, str]]:
    """Split a bootstrap registry into the generic keys and its provider's declared
    ones; a key neither knows is refused, named."""
    provider = data.get("provider")
    if provider not in PROVIDERS:
        raise ConfigError(f"{_join(where, 'provider')}: must be one of {', '.join(PROVIDERS)}")
    declared = {key for f in PROVIDERS[provider].fields for key in config_keys(f)}
    generic = {f.name for f in dataclasses.fields(RegistrySpec)} - {"fields"}
    own = {k: _coerce(str, v, _join(where, k)) for k, v in data.items() if k in declared and k not in generic}
    return {k: v for k, v in data.items() if k not in own}, own


def registry_fields(
    spec: RegistrySpec, where: str, base_dir: Path | None = None, environ: typing.Mapping[str, str] | None = None
) -> tuple[Provider, str | None, str | None, dict[str, str]]:
    """A bootstrap registry's provider, username, secret (read from its reference)
    and options, by the provider's declarations; problems are named by key."""
    provider = PROVIDERS[spec.provider]
    username, secret, options = None, None, {}
    for f in provider.fields:
        if f.config is None:
            continue
        if f.secret:
            file_ref, env_ref = spec.fields.get(f"{f.config}_file"), spec.fields.get(f"{f.config}_env")
            value = read_secret(f"{where}.{f.config}", file_ref, env_ref, environ, base_dir)
        else:
            value = spec.fields.get(f.config)
        if not value:
            continue
        if f.stored == SECRET:
            secret = value
        elif f.stored == "username":
            username = value
        else:
            options[f.stored] = value
    return provider, username, secret, options


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


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
    if not 1 <= cfg.pulllog.write_attempts <= 20:
        raise ConfigError("pulllog.write_attempts: must be between 1 and 20")
    if not 0 <= cfg.pulllog.retry_seconds <= 60:
        raise ConfigError("pulllog.retry_seconds: must be between 0 and 60")
    _validate_webhooks(cfg.webhooks)
    _validate_domains(cfg.domains)
    _validate_limits(cfg.limits)
    _validate_cache(cfg.cache, cfg)
    if cfg.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("log.level: must be DEBUG, INFO, WARNING or ERROR")
    for t, team in enumerate(cfg.bootstrap.teams):
        where = f"bootstrap.teams[{t}]"
        slugs = {a.slug for a in team.apps}
        for r, reg in enumerate(team.registries):
            rk = f"{where}.registries[{r}]"
            if reg.provider not in PROVIDERS:
                raise ConfigError(f"{rk}.provider: must be one of {', '.join(PROVIDERS)}")
            for f in PROVIDERS[reg.provider].fields:
                keys = [k for k in config_keys(f) if reg.fields.get(k)]
                if len(keys) > 1:
                    raise ConfigError(f"{rk}.{keys[0]}: give {' or '.join(config_keys(f))}, not both")
                if f.required and config_keys(f) and not keys:
                    given_as = " or ".join(config_keys(f))
                    raise ConfigError(f"{rk}.{config_keys(f)[0]}: required for {reg.provider} ({given_as})")
            if reg.url and reg.url.startswith("http://") and not reg.insecure:
                raise ConfigError(f"{rk}.url: an http:// url needs insecure: true")
            if reg.url and not reg.url.startswith(("http://", "https://")):
                raise ConfigError(f"{rk}.url: must start with https:// (or http:// with insecure)")
            for problem in check_patterns(reg.anonymous_repositories, "anonymous_repositories"):
                raise ConfigError(f"{rk}.{problem}")
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


def _validate_cache(cache: CacheSection, cfg: Config) -> None:
    if cache.backend not in ("none", "filesystem", "s3"):
        raise ConfigError("cache.backend: must be none, filesystem or s3")
    if parse_size(cache.max_size, "cache.max_size") < 1 << 20:
        raise ConfigError("cache.max_size: must be at least 1MiB")
    if not 1 <= cache.shared_eviction_seconds <= 3600:
        raise ConfigError("cache.shared_eviction_seconds: must be between 1 and 3600")
    if not 0 <= cache.tag_ttl <= 86400:
        raise ConfigError("cache.tag_ttl: must be between 0 and 86400 seconds")
    if cache.hit_io not in ("sendfile", "read"):
        raise ConfigError("cache.hit_io: must be sendfile or read")
    if cache.backend == "filesystem" and not cache.path:
        raise ConfigError("cache.path: required for the filesystem backend")
    if cache.backend == "s3":
        validate_cache_s3(cache.s3, cfg)


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
            urls = [f.config for f in PROVIDERS[reg.provider].fields if f.url and f.config]
            for name in ("url", *urls):
                value = reg.url if name == "url" else reg.fields.get(name)
                if value and carries_credentials(value):
                    # No secret is written in the file, and a url is shown as written (vendor API, portal).
                    raise ConfigError(
                        f"bootstrap.teams[{t}].registries[{r}].{name}: must not carry credentials (user:password@); "
                        "use username and password_file or password_env"
                    )
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


def _validate_webhooks(w: WebhooksSection) -> None:
    if not 1 <= w.max_attempts <= 20:
        raise ConfigError("webhooks.max_attempts: must be between 1 and 20")
    if not 0.01 <= w.backoff_seconds <= w.max_backoff_seconds <= 86400:
        raise ConfigError("webhooks.backoff_seconds: must be at least 0.01 and at most max_backoff_seconds (<= 86400)")
    if not 0.1 <= w.timeout_seconds <= 120:
        raise ConfigError("webhooks.timeout_seconds: must be between 0.1 and 120")


def validate_cache_s3(s3: CacheS3Section, cfg: Config, key: str = "cache.s3") -> None:
    """The `cache.s3` section, when `cache.backend` is s3: every key checked, and a literal
    endpoint address the egress policy refuses named now (a name is judged at connect time,
    as for every outbound connection). The secret must be given by reference."""
    if not BUCKET_RE.match(s3.bucket) or ".." in s3.bucket:
        raise ConfigError(f"{key}.bucket: required, an S3 bucket name (3-63 of a-z 0-9 . -)")
    if not S3_PREFIX_RE.match(s3.prefix) or ".." in s3.prefix.split("/") or "//" in s3.prefix:
        raise ConfigError(f"{key}.prefix: only letters, digits and . _ - / (no empty or .. segment)")
    if not S3_REGION_RE.match(s3.region):
        raise ConfigError(f"{key}.region: a region name such as us-east-1")
    if not ACCESS_KEY_RE.match(s3.access_key_id):
        raise ConfigError(f"{key}.access_key_id: required (the bucket's access key id)")
    if bool(s3.secret_access_key_file) == bool(s3.secret_access_key_env):
        raise ConfigError(
            f"{key}.secret_access_key_file: give secret_access_key_file or secret_access_key_env (one of them)"
        )
    url = s3.endpoint_url
    if carries_credentials(url):
        raise ConfigError(f"{key}.endpoint_url: must not carry credentials (user:password@)")
    target = url_target(url) if url.startswith(("http://", "https://")) else None
    path = url.split("://", 1)[-1].partition("/")[2]
    if target is None or path or "?" in url or "#" in url:
        raise ConfigError(f"{key}.endpoint_url: must be https://host[:port] (or http://), without a path")
    host, port = target
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: judged at connect time
    refusal = _process_policy(cfg).check(host, port)
    if refusal is not None:
        raise ConfigError(
            f"{key}.endpoint_url: {host}:{port} is {refusal.reason}, refused by the egress policy; "
            f"{refusal.advice()}" + (f" (e.g. {host}:{port})" if refusal.overridable else "")
        )


def _process_policy(cfg: Config) -> EgressPolicy:
    listeners = [
        listener_of(*parse_listen(v, k))
        for v, k in ((cfg.proxy.listen, "proxy.listen"), (cfg.admin.listen, "admin.listen"))
    ]
    try:
        allow = parse_allow(cfg.upstream.egress_allow)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return EgressPolicy(allow, listeners)
