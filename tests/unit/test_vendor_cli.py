"""`pullgate --help` on every command, in process (the commands against a running
server: tests/integration/test_vendor_cli.py)."""

from __future__ import annotations

import pytest

from proxy.cli import main

COMMANDS = [
    [],
    ["registry"],
    ["registry", "add"],
    ["registry", "update"],
    ["registry", "ls"],
    ["registry", "rm"],
    ["registry", "test"],
    ["registry", "logs"],
    ["app"],
    ["app", "create"],
    ["app", "update"],
    ["app", "ls"],
    ["customer"],
    ["customer", "create"],
    ["customer", "ls"],
    ["customer", "revoke"],
    ["customer", "archive"],
    ["customer", "restore"],
    ["license"],
    ["license", "import"],
    ["logs"],
    ["admin"],
    ["admin", "token"],
    ["admin", "token", "create"],
    ["admin", "hostname"],
    ["admin", "hostname", "ls"],
    ["admin", "hostname", "rm"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a) or "pullgate")
def test_help_on_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    assert "usage: pullgate" in capsys.readouterr().out
