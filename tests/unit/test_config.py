"""proxy.config: the YAML file, PULLGATE_* overrides, validation that names the key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, ConfigError, _apply_env, load, read_secret, sqlite_path

ROOT = Path(__file__).resolve().parents[2]


def _team(**overrides: Any) -> dict[str, Any]:
    team: dict[str, Any] = {
        "name": "acme",
        "apps": [{"slug": "myapp"}],
        "registries": [
            {
                "slug": "vendor",
                "provider": "other",
                "endpoint": "registry.acme.example",
                "url": "https://registry.acme.example",
                "username": "u",
                "password_env": "PW",
            },
        ],
        "customers": [{"name": "C", "app": "myapp", "license_id_env": "LIC"}],
    }
    team.update(overrides)
    return team


def _load(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> Config:
    p = tmp_path / "config.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return load(p, environ=env or {})


def _fails(tmp_path: Path, data: dict[str, Any] | str, key: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, data, env)
    msg = str(exc.value)
    assert msg.startswith(key) or key in msg, msg
    return msg


def test_example_config_loads() -> None:
    cfg = load(ROOT / "config" / "example.yaml", environ={})
    assert cfg.proxy.listen == "127.0.0.1:8080"
    assert cfg.store == "sqlite:var/pullgate.db"
    (team,) = cfg.bootstrap.teams
    assert team.registries[0].provider == "dockerhub"
    assert team.customers[0].license_id_env == "EXAMPLE_LICENSE_ID"


def test_defaults_without_a_file() -> None:
    cfg = load(None, environ={})
    assert cfg.admin.listen == "127.0.0.1:8081"
    assert cfg.auth.license_cache_seconds <= 5


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"proxy": {"lisen": "x"}}, "proxy.lisen"),
        ({"prox": {}}, "prox"),
        ({"upstream": {"idle_timeot": 1}}, "upstream.idle_timeot"),
        ({"bootstrap": {"teams": [_team(colour="red")]}}, "bootstrap.teams[0].colour"),
        (
            {
                "bootstrap": {
                    "teams": [_team(registries=[{"provider": "other", "endpoint": "r.example", "pasword_file": "/x"}])]
                }
            },
            "bootstrap.teams[0].registries[0].pasword_file",
        ),
    ],
)
def test_unknown_key_names_full_path(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    msg = _fails(tmp_path, data, key)
    assert msg.startswith(f"{key}:") and "unknown key" in msg


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"proxy": {"listen": [1, 2]}}, "proxy.listen"),
        ({"proxy": {"hosts": "a.example"}}, "proxy.hosts"),
        ({"upstream": {"idle_timeout": "soon"}}, "upstream.idle_timeout"),
        ({"upstream": {"max_redirects": 2.5}}, "upstream.max_redirects"),
        ({"upstream": {"retries": True}}, "upstream.retries"),
        ({"log": {"access_log": "yes please"}}, "log.access_log"),
        ({"proxy": "0.0.0.0:80"}, "proxy"),
        ({"bootstrap": {"teams": [_team(apps=[{"name": "no slug"}])]}}, "bootstrap.teams[0].apps[0].slug"),
        ({"proxy": {"listen": "nohostport"}}, "proxy.listen"),
        ({"store": "mysql://x"}, "store"),
        ({"domains": {"reserved": ["corp.example", "not a name"]}}, "domains.reserved[1]"),
        ({"domains": {"http_challenge": "maybe"}}, "domains.http_challenge"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    assert _fails(tmp_path, data, key).startswith(f"{key}:")


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "PULLGATE_PROXY_LISTEN": "127.0.0.1:9000",
        "PULLGATE_STORE": "sqlite:///srv/pg.db",
        "PULLGATE_UPSTREAM_IDLE_TIMEOUT": "5",
        "PULLGATE_PROXY_HOSTS": "[a.example, b.example]",
        "PULLGATE_LOG_ACCESS_LOG": "false",
        # not settings: ignored
        "PULLGATE_TEST_X": "1",
        "PULLGATE_API_TOKEN": "tok",
        "PULLGATE_BOOTSTRAP_TEAMS": "junk",
    }
    cfg = _load(tmp_path, {"proxy": {"listen": "0.0.0.0:8080"}, "upstream": {"idle_timeout": 60}}, env)
    assert cfg.proxy.listen == "127.0.0.1:9000"
    assert cfg.store == "sqlite:///srv/pg.db"
    assert cfg.upstream.idle_timeout == 5.0
    assert cfg.proxy.hosts == ["a.example", "b.example"]
    assert cfg.log.access_log is False


def test_environment_override_of_an_empty_section(tmp_path: Path) -> None:
    # A section whose keys are all commented out is null in YAML; overriding one key must still work.
    cfg = _load(tmp_path, "proxy:\n  # listen: 0.0.0.0:8080\n", {"PULLGATE_PROXY_LISTEN": "127.0.0.1:9001"})
    assert cfg.proxy.listen == "127.0.0.1:9001"


def test_environment_string_values_are_taken_verbatim(tmp_path: Path) -> None:
    # A string setting is not re-typed by YAML (0700 is not the octal number 448).
    cfg = _load(tmp_path, {}, {"PULLGATE_KEYS_FILE": "0700"})
    assert cfg.keys.file == "0700"


def test_unknown_environment_setting_is_named(tmp_path: Path) -> None:
    msg = _fails(tmp_path, {}, "PULLGATE_PROXY_FOO", {"PULLGATE_PROXY_FOO": "1"})
    assert "foo" in msg


def test_environment_bad_type_names_the_key(tmp_path: Path) -> None:
    _fails(tmp_path, {}, "upstream.idle_timeout", {"PULLGATE_UPSTREAM_IDLE_TIMEOUT": "abc"})


# --- overrides of nested sections (cache.s3) ------------------------------------------

_S3_ENV = {
    "PULLGATE_CACHE_BACKEND": "s3",
    "PULLGATE_CACHE_S3_BUCKET": "team-cache",
    "PULLGATE_CACHE_S3_PREFIX": "pullgate/",
    "PULLGATE_CACHE_S3_ENDPOINT_URL": "https://s3.eu-west-1.amazonaws.com",
    "PULLGATE_CACHE_S3_REGION": "eu-west-1",
    "PULLGATE_CACHE_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "PULLGATE_CACHE_S3_SECRET_ACCESS_KEY_ENV": "S3_SECRET",
    "PULLGATE_CACHE_S3_REDIRECT": "true",
}


def test_nested_section_overrides(tmp_path: Path) -> None:
    # A key with underscores in `cache` (tag_ttl) and one in `cache.s3` (access_key_id) side by side.
    env = {**_S3_ENV, "PULLGATE_CACHE_TAG_TTL": "30", "PULLGATE_CACHE_SERVE_STALE": "false"}
    cfg = _load(tmp_path, {"cache": {"s3": {"bucket": "from-the-file", "region": "us-east-1"}}}, env)
    s3 = cfg.cache.s3
    assert cfg.cache.backend == "s3"
    assert (s3.bucket, s3.prefix, s3.region) == ("team-cache", "pullgate/", "eu-west-1")
    assert s3.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert s3.access_key_id == "AKIAEXAMPLE"
    assert (s3.secret_access_key_env, s3.secret_access_key_file) == ("S3_SECRET", None)
    assert s3.redirect is True  # typed like every override: a bool, not the string "true"
    assert cfg.cache.tag_ttl == 30.0
    assert cfg.cache.serve_stale is False


@pytest.mark.parametrize("text", ["", "cache:\n", "cache:\n  s3:\n", "cache:\n  s3:\n    # bucket: x\n"])
def test_nested_override_without_the_section_in_the_file(tmp_path: Path, text: str) -> None:
    # Absent, or null because every key is commented out: the override makes the section.
    cfg = _load(tmp_path, text or {}, _S3_ENV)
    assert cfg.cache.s3.bucket == "team-cache"
    assert cfg.cache.s3.secret_access_key_env == "S3_SECRET"


def test_nested_override_into_a_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    _fails(tmp_path, "cache:\n  s3: none\n", "cache.s3: must be a mapping", {"PULLGATE_CACHE_S3_BUCKET": "b"})


def test_nested_override_string_values_are_verbatim(tmp_path: Path) -> None:
    # A prefix or key id that YAML would read as a date or a number stays the string given.
    env = {"PULLGATE_CACHE_S3_PREFIX": "2024-01-01/", "PULLGATE_CACHE_S3_ACCESS_KEY_ID": "0700"}
    cfg = _load(tmp_path, {}, env)
    assert cfg.cache.s3.prefix == "2024-01-01/"
    assert cfg.cache.s3.access_key_id == "0700"


def test_an_on_premises_bucket_with_its_egress_entry_from_the_environment(tmp_path: Path) -> None:
    env = {**_S3_ENV, "PULLGATE_CACHE_S3_ENDPOINT_URL": "http://10.20.0.5:9000"}
    msg = _fails(tmp_path, {}, "cache.s3.endpoint_url", env)
    assert "egress" in msg
    cfg = _load(tmp_path, {}, {**env, "PULLGATE_UPSTREAM_EGRESS_ALLOW": "[10.20.0.5:9000]"})
    assert cfg.upstream.egress_allow == ["10.20.0.5:9000"]
    assert cfg.cache.s3.endpoint_url == "http://10.20.0.5:9000"


def test_every_key_has_exactly_one_environment_name() -> None:
    # The longest section path wins, so a key such as `cache.s3_x` would be unreachable
    # (PULLGATE_CACHE_S3_X is `cache.s3.x`): every key's name must lead back to that key.
    def leaves(cls: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        hints = typing.get_type_hints(cls)
        out: list[tuple[str, ...]] = []
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or (not path and f.name == "bootstrap"):
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                out += leaves(hints[f.name], (*path, f.name))
            else:
                out.append((*path, f.name))
        return out

    def flatten(node: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
        if not isinstance(node, dict):
            return [(path, node)]
        return [leaf for k, v in node.items() for leaf in flatten(v, (*path, k))]

    paths = leaves(Config, ())
    assert ("cache", "s3", "secret_access_key_file") in paths and ("cache", "tag_ttl") in paths
    assert ("store",) in paths
    for path in paths:
        raw: dict[str, Any] = {}
        _apply_env(raw, {"PULLGATE_" + "_".join(path).upper(): "x"})
        assert flatten(raw) == [(path, "x")]


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("PULLGATE_CACHE_S3_BUKET", "environment PULLGATE_CACHE_S3_BUKET: cache.s3 has no key 'buket'"),
        ("PULLGATE_CACHE_S3_ENDPOINT", "environment PULLGATE_CACHE_S3_ENDPOINT: cache.s3 has no key 'endpoint'"),
        ("PULLGATE_CACHE_TAGTTL", "environment PULLGATE_CACHE_TAGTTL: cache has no key 'tagttl'"),
        ("PULLGATE_CACHE_S3", "environment PULLGATE_CACHE_S3: cache.s3 is a section"),
        ("PULLGATE_CACHE", "environment PULLGATE_CACHE: cache is a section"),
        ("PULLGATE_STORE_URL", "environment PULLGATE_STORE_URL: store is a single value; set PULLGATE_STORE"),
    ],
)
def test_unknown_nested_environment_setting_is_named(tmp_path: Path, name: str, said: str) -> None:
    msg = _fails(tmp_path, {}, name, {name: "{bucket: x}"})
    assert msg.startswith(said), msg


def test_a_secret_given_by_value_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    msg = _fails(tmp_path, {}, "PULLGATE_CACHE_S3_SECRET_ACCESS_KEY", {"PULLGATE_CACHE_S3_SECRET_ACCESS_KEY": secret})
    assert "PULLGATE_CACHE_S3_SECRET_ACCESS_KEY_FILE" in msg and "PULLGATE_CACHE_S3_SECRET_ACCESS_KEY_ENV" in msg
    assert secret not in msg


SENTINEL = "Zq9-sentinel-Vx7"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"PULLGATE_CACHE_S3_ACCESS_KEY_ID": f"AKIA {SENTINEL}"}, "cache.s3.access_key_id"),
        ({"PULLGATE_CACHE_S3_ENDPOINT_URL": f"https://AKIA:{SENTINEL}@s3.example"}, "cache.s3.endpoint_url"),
        ({"PULLGATE_CACHE_S3_ENDPOINT_URL": f"https://s3.example/{SENTINEL}"}, "cache.s3.endpoint_url"),
        ({"PULLGATE_CACHE_S3_BUCKET": f"Bucket_{SENTINEL}"}, "cache.s3.bucket"),
        ({"PULLGATE_CACHE_S3_PREFIX": f"../{SENTINEL}"}, "cache.s3.prefix"),
        ({"PULLGATE_CACHE_S3_REGION": f"us {SENTINEL}"}, "cache.s3.region"),
        ({"PULLGATE_CACHE_S3_REDIRECT": SENTINEL}, "cache.s3.redirect"),
        ({"PULLGATE_CACHE_S3_REDIRECT": f"[{SENTINEL}"}, "cache.s3.redirect"),
        ({"PULLGATE_CACHE_S3_SECRET_ACCESS_KEY_FILE": SENTINEL}, "cache.s3.secret_access_key_file"),
        ({"PULLGATE_STORE": f"mysql://u:{SENTINEL}@db/pullgate"}, "store"),
    ],
)
def test_an_override_value_is_never_in_the_message_or_the_log(
    tmp_path: Path, env: dict[str, str], key: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = {k: v for k, v in _S3_ENV.items() if k not in env}  # a valid s3 section but for `env`
    caplog.set_level("DEBUG")
    msg = _fails(tmp_path, {}, key, {**base, **env})
    assert msg.startswith(key), msg
    assert SENTINEL not in msg
    assert SENTINEL not in caplog.text


def test_http_registry_needs_insecure(tmp_path: Path) -> None:
    reg = {"provider": "other", "endpoint": "r.example", "url": "http://127.0.0.1:5000"}
    _fails(tmp_path, {"bootstrap": {"teams": [_team(registries=[reg])]}}, "bootstrap.teams[0].registries[0].url")
    allow = {"upstream": {"egress_allow": ["127.0.0.1:5000"]}}  # a loopback registry needs an exception
    cfg = _load(tmp_path, {"bootstrap": {"teams": [_team(registries=[{**reg, "insecure": True}])]}, **allow})
    assert cfg.bootstrap.teams[0].registries[0].insecure is True
    bad = {**reg, "url": "ftp://r.example"}
    _fails(tmp_path, {"bootstrap": {"teams": [_team(registries=[bad])]}}, "bootstrap.teams[0].registries[0].url")


def test_registry_url_carrying_credentials_is_refused_unquoted(tmp_path: Path) -> None:
    reg = {"provider": "other", "endpoint": "r.example", "url": "https://vendor:SECRETX@r.example"}
    msg = _fails(tmp_path, {"bootstrap": {"teams": [_team(registries=[reg])]}}, "bootstrap.teams[0].registries[0].url")
    assert "credentials" in msg and "SECRETX" not in msg


def test_customer_with_unknown_app_is_refused(tmp_path: Path) -> None:
    team = _team(customers=[{"name": "C", "app": "nope", "license_id_env": "LIC"}])
    msg = _fails(tmp_path, {"bootstrap": {"teams": [team]}}, "bootstrap.teams[0].customers[0].app")
    assert "'nope'" in msg


def test_registry_linked_to_unknown_app_is_refused(tmp_path: Path) -> None:
    reg = {"provider": "other", "endpoint": "r.example", "apps": ["ghost"]}
    _fails(tmp_path, {"bootstrap": {"teams": [_team(registries=[reg])]}}, "bootstrap.teams[0].registries[0].apps")


def test_unknown_provider_is_refused(tmp_path: Path) -> None:
    reg = {"provider": "dockrhub", "endpoint": "r.example"}
    _fails(tmp_path, {"bootstrap": {"teams": [_team(registries=[reg])]}}, "bootstrap.teams[0].registries[0].provider")


@pytest.mark.parametrize("seconds", [5.5, 6, -1])
def test_license_cache_seconds_bounded(tmp_path: Path, seconds: float) -> None:
    _fails(tmp_path, {"auth": {"license_cache_seconds": seconds}}, "auth.license_cache_seconds")


@pytest.mark.parametrize(
    ("key", "value"), [("write_attempts", 0), ("write_attempts", 21), ("retry_seconds", -1), ("retry_seconds", 61)]
)
def test_pull_log_retries_bounded(tmp_path: Path, key: str, value: float) -> None:
    _fails(tmp_path, {"pulllog": {key: value}}, f"pulllog.{key}")


def test_license_cache_seconds_at_limit(tmp_path: Path) -> None:
    assert _load(tmp_path, {"auth": {"license_cache_seconds": 5}}).auth.license_cache_seconds == 5.0


def test_read_secret_by_file_and_env(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-from-file\n", encoding="utf-8")
    assert read_secret("x.password", "pw", None, environ={}, base_dir=tmp_path) == "s3cret-from-file"
    assert read_secret("x.password", str(tmp_path / "pw"), None, environ={}) == "s3cret-from-file"
    assert read_secret("x.password", None, "PW", environ={"PW": "s3cret-from-env"}) == "s3cret-from-env"
    assert read_secret("x.password", None, None, environ={}) is None


def test_read_secret_errors_name_the_key_never_the_value(tmp_path: Path) -> None:
    env = {"OTHER": "hunter2-secret-value"}
    with pytest.raises(ConfigError) as exc:
        read_secret("bootstrap.teams[0].registries[0].password", None, "PW_MISSING", environ=env)
    msg = str(exc.value)
    assert msg.startswith("bootstrap.teams[0].registries[0].password_env:")
    assert "PW_MISSING" in msg and "hunter2" not in msg
    with pytest.raises(ConfigError) as exc:
        read_secret("t.password", str(tmp_path / "absent"), None, environ=env)
    assert str(exc.value).startswith("t.password_file:")


def test_sqlite_path_forms(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///var/lib/pg.db", tmp_path) == Path("/var/lib/pg.db")
    assert sqlite_path("sqlite:var/pg.db", tmp_path) == tmp_path / "var" / "pg.db"
    assert sqlite_path("sqlite:/abs/pg.db", tmp_path) == Path("/abs/pg.db")
    with pytest.raises(ConfigError, match=re.escape("store:")):
        sqlite_path("sqlite://host/pg.db", tmp_path)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        _load(tmp_path, "proxy: [unclosed\n")
    with pytest.raises(ConfigError, match="mapping"):
        _load(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="config file"):
        load(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize(
    "text, where",
    [
        ("limits:\n  header_timeout: 5\nlimits:\n  max_connections: 10\n", "line 3: key 'limits'"),
        ("upstream:\n  retries: 1\n  retries: 3\n", "line 3: key 'retries'"),
    ],
)
def test_a_key_written_twice_stops_the_start(tmp_path: Path, text: str, where: str) -> None:
    """YAML would keep the last one silently; half of what the operator wrote would be lost."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(where) + ".*appears twice"):
        load(path, environ={})


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("PULLGATE_PROXY_LISTEN", f"{SENTINEL}-no-port", "proxy.listen"),
        ("PULLGATE_CACHE_MAX_SIZE", f"{SENTINEL}GiB", "cache.max_size"),
        ("PULLGATE_PROXY_TRUSTED_PROXIES", f"[10.0.0.0/8, {SENTINEL}]", "proxy.trusted_proxies[1]"),
        ("PULLGATE_DOMAINS_RESERVED", f"['{SENTINEL} x']", "domains.reserved[0]"),
        ("PULLGATE_UPSTREAM_EGRESS_ALLOW", f"[{SENTINEL}]", "upstream.egress_allow[0]"),
    ],
)
def test_a_check_that_quotes_its_value_names_the_variable_instead(
    tmp_path: Path, name: str, value: str, key: str
) -> None:
    msg = _fails(tmp_path, {}, key, {name: value})
    assert SENTINEL not in msg
    assert f"<the value of {name}>" in msg, msg


def test_a_value_written_in_the_file_is_still_quoted(tmp_path: Path) -> None:
    # The file is the operator's own text, where no secret is written: its values are shown.
    assert f"got '{SENTINEL}'" in _fails(tmp_path, {"proxy": {"listen": SENTINEL}}, "proxy.listen")
