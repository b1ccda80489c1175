"""`keyrotation.rotate` on a real SQLite store: every kind of sealed secret comes out
under the new key, so the old key can leave the keys file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from proxy import keyrotation
from proxy.domains.service import key_aad
from proxy.secrets import Keyring, SecretError
from proxy.store.sqlite import SQLiteStore

KEY_PEM = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n"


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "rotate.db")
    await s.open()
    yield s
    await s.close()


async def _hostname_with_certificate(store: SQLiteStore, ring: Keyring, team_id: str, name: str) -> None:
    await store.add_hostname(team_id, name, f"tok-{name}")
    await store.set_hostname_status(name, "verified", None)
    sealed = ring.seal(KEY_PEM, key_aad(name))
    await store.set_hostname_certificate(name, "CERT PEM", sealed, "2031-01-01T00:00:00+00:00")


async def test_rotation_reseals_hostname_tls_keys(store: SQLiteStore, tmp_path: Path):
    ring = Keyring.load_or_create(tmp_path / "keys.yaml")
    first = ring.current
    team = await store.ensure_team("t1")
    await _hostname_with_certificate(store, ring, team.id, "b.example")
    await _hostname_with_certificate(store, ring, team.id, "a.example")
    await store.add_hostname(team.id, "pending.example", "tok-p")  # no certificate: nothing to reseal
    before = dict(await store.sealed_hostname_keys())
    assert sorted(before) == ["a.example", "b.example"]

    kid, count = await keyrotation.rotate(store, ring)

    assert kid != first and count == 2
    after = dict(await store.sealed_hostname_keys())
    assert sorted(after) == ["a.example", "b.example"]
    assert {ring.key_id_of(s) for s in after.values()} == {kid}
    pending = await store.hostname("pending.example")
    assert pending is not None and pending.key_sealed is None
    # The old key leaves the file: every key still opens, each only under its own hostname.
    only_new = Keyring(current=kid, keys={kid: ring.keys[kid]})
    assert [only_new.open(s, key_aad(n)) for n, s in sorted(after.items())] == [KEY_PEM, KEY_PEM]
    with pytest.raises(SecretError):
        only_new.open(before["a.example"], key_aad("a.example"))
    with pytest.raises(SecretError):
        only_new.open(after["a.example"], key_aad("b.example"))


async def test_each_rotation_reseals_the_hostname_key_again(store: SQLiteStore, tmp_path: Path):
    ring = Keyring.load_or_create(tmp_path / "keys.yaml")
    team = await store.ensure_team("t1")
    await _hostname_with_certificate(store, ring, team.id, "a.example")
    _, count = await keyrotation.rotate(store, ring)
    assert count == 1
    _, count = await keyrotation.rotate(store, ring)  # a second rotation reseals it again
    assert count == 1
    assert len(ring.keys) == 3
