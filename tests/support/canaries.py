"""The one check every leak test makes: no canary secret in some output."""

from __future__ import annotations

from collections.abc import Iterable


def assert_no_secrets(text: str | bytes, canaries: Iterable[str], where: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    for canary in canaries:
        # The message names where, never the secret itself.
        assert canary not in text, f"a secret leaked into {where}"
