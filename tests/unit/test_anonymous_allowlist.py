"""Which registries and repositories an anonymous pull may reach, as logic: the apps'
allowlists and the registry's own patterns (through a server: tests/integration/)."""

from __future__ import annotations

from typing import Any

from proxy.pull.anonymous import anonymous_allows
from proxy.store.models import App, Registry


def _registry(**kw: Any) -> Registry:
    base: dict[str, Any] = dict(
        id="r1",
        team_id="t1",
        slug="r",
        provider="other",
        endpoint="r.test",
        url="https://r.test",
        insecure=False,
        username=None,
        secret_sealed=None,
        allow_anonymous=True,
    )
    return Registry(**{**base, **kw})


def _app(app_id: str, allowlist: tuple[str, ...] = (), team: str = "t1") -> App:
    return App(id=app_id, team_id=team, slug=app_id, name=app_id, image_allowlist=allowlist)


def test_the_rule():
    open_app, narrow_app = _app("a1"), _app("a2", ("vendor/api",))
    # Linked to every app of its team: one app without an allowlist opens every repository.
    assert anonymous_allows(_registry(), [open_app, narrow_app], "vendor/db")
    # Linked to the narrow app only: its allowlist decides.
    linked = _registry(app_ids=("a2",))
    assert anonymous_allows(linked, [open_app, narrow_app], "vendor/api")
    assert not anonymous_allows(linked, [open_app, narrow_app], "vendor/db")
    # The registry's own patterns narrow further, never widen.
    listed = _registry(anonymous_repositories=("vendor/*",), app_ids=("a2",))
    assert not anonymous_allows(listed, [narrow_app], "vendor/db")
    assert anonymous_allows(listed, [narrow_app], "vendor/api")
    assert not anonymous_allows(_registry(anonymous_repositories=("x/*",)), [open_app], "vendor/api")
    # No app served (none in the team, or only other teams' apps): nothing anonymously.
    assert not anonymous_allows(_registry(), [], "vendor/api")
    assert not anonymous_allows(_registry(), [_app("z", team="t2")], "vendor/api")
