"""The settings' shapes: one dataclass per section of the config file, and the small
helpers every layer uses with them (listen addresses, secret references, paths).

A leaf: the store, the upstream client and the faces read their sections from
here; `proxy.config` reads the file, applies PULLGATE_* overrides and validates
(it sits above `upstream`, whose providers declare the registry fields).
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field
from pathlib import Path


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
    # A batch whose write failed (a locked or briefly unreachable database) is tried this
    # many times in all, the waits doubling from retry_seconds; only then dropped and counted.
    write_attempts: int = 4
    retry_seconds: float = 0.5


@dataclass
class WebhooksSection:
    # A threshold notification is tried this many times in all, the waits doubling from
    # backoff_seconds (at most max_backoff_seconds); each attempt is recorded.
    max_attempts: int = 6
    backoff_seconds: float = 5.0
    max_backoff_seconds: float = 300.0
    timeout_seconds: float = 10.0


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
    # previous response on a keep-alive connection (slowloris); the token form's body too.
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
class CacheS3Section:
    """`cache.s3`: the bucket of `cache.backend: s3` (validated by proxy.config.validate_cache_s3)."""

    bucket: str = ""
    prefix: str = ""  # keys are <prefix>blobs/<algorithm>/<2 hex>/<hex>
    endpoint_url: str = "https://s3.us-east-1.amazonaws.com"
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key_file: str | None = None
    secret_access_key_env: str | None = None
    # A blob hit answers 307 to a presigned GET valid for 60 s: the proxy moves no bytes.
    redirect: bool = False


@dataclass
class CacheSection:
    # The pull-through cache (proxy.cache): none | filesystem | s3.
    backend: str = "filesystem"
    # The filesystem backend's directory (relative paths: to the config file's working dir).
    path: str = "/var/lib/pullgate/cache"
    # Least-recently-used content goes beyond this: bytes, or with KB/MB/GB/TB or KiB/MiB/GiB/TiB.
    max_size: str = "20GiB"
    # Processes sharing the store and the cache (replicas on a bucket, workers on a disk) each
    # keep their own index within max_size; this often one of them trims the total to it.
    shared_eviction_seconds: float = 30.0
    # A cached tag is revalidated upstream (HEAD) once older than this many seconds.
    tag_ttl: float = 60.0
    # Serve the last known digest of a tag (with a Warning header) when the upstream fails.
    serve_stale: bool = True
    # How a hit's bytes go out: sendfile (zero copy) or read (4 MiB reads in a thread).
    hit_io: str = "sendfile"
    s3: CacheS3Section = field(default_factory=CacheS3Section)


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
    apps: list[str] = field(default_factory=list)
    allow_anonymous: bool = False
    # Repository patterns served on /v2/anonymous/... (empty: all its apps' allowlists allow).
    anonymous_repositories: list[str] = field(default_factory=list)
    # The provider's own keys (username, password_file, access_key_id, ...), as its
    # field declarations (proxy.upstream.providers) name them; checked by proxy.config.
    fields: dict[str, str] = field(default_factory=dict, metadata={"provider_fields": True})

    def __getattr__(self, name: str) -> str | None:
        """A provider key read as an attribute (`spec.password_file`), None when not given,
        as when this class had one attribute per key."""
        if name.startswith("_") or name == "fields":
            raise AttributeError(name)
        return self.fields.get(name)


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
    webhooks: WebhooksSection = field(default_factory=WebhooksSection)
    domains: DomainsSection = field(default_factory=DomainsSection)
    anonymous: AnonymousSection = field(default_factory=AnonymousSection)
    cache: CacheSection = field(default_factory=CacheSection)
    bootstrap: BootstrapSection = field(default_factory=BootstrapSection)
    # Where relative paths in the file are anchored.
    base_dir: Path = field(default=Path("."), metadata={"internal": True})


def parse_listen(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: must be host:port, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


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


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_size(value: str, key: str) -> int:
    """ "20GiB", "500MB", "1048576" -> bytes; the error names the key."""
    text = value.strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    unit = text[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _SIZE_UNITS or amount < 0:
        raise ConfigError(f"{key}: a size such as 20GiB, 500MB or a number of bytes, got {value!r}")
    return int(amount * _SIZE_UNITS[unit])


def cache_path(cfg: Config) -> Path:
    """The filesystem cache's directory (`cache.path`, relative to the config file's directory)."""
    p = Path(cfg.cache.path)
    return p if p.is_absolute() else cfg.base_dir / p


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
