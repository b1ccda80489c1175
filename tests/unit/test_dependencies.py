"""The runtime dependency floors in pyproject.toml are releases this suite ran on.

A floor below a tested release would let an installer pick an untested (or, for
aiohttp, a vulnerable) version; a floor above the installed one means the suite
did not run on it.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _runtime_requirements() -> list[Requirement]:
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return [Requirement(r) for r in data["project"]["dependencies"]]


def _floor(req: Requirement) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return max(floors) if floors else None


def test_every_runtime_dependency_has_a_floor_that_is_installed_here() -> None:
    for req in _runtime_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        floor = _floor(req)
        assert floor is not None, f"{req.name}: no >= floor"
        installed = Version(metadata.version(req.name))
        assert installed >= floor, f"{req.name}: installed {installed} is below the floor {floor}"
        assert req.specifier.contains(installed), f"{req.name}: installed {installed} not allowed by {req.specifier}"


def test_aiohttp_floor_has_the_parser_and_header_count_fixes() -> None:
    # max_headers (the header-count limit) and the request-smuggling fixes are in
    # 3.13.3+; the later parser advisories up to 3.14.3. 3.14.5 is what we tested.
    (aiohttp,) = [r for r in _runtime_requirements() if r.name == "aiohttp"]
    floor = _floor(aiohttp)
    assert floor is not None and floor >= Version("3.14.5")
