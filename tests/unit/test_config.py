"""proxy.config: the YAML file, PULLGATE_* overrides, validation that names the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Config, ConfigError, load, read_secret, sqlite_path

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
