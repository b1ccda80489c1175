"""A tool a test needs cannot be had: CI must run every test, so there it is a failure;
elsewhere (a developer's machine without, say, Go) a skip that says why."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)
