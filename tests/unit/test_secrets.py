"""proxy.secrets: the master keyring and AES-256-GCM sealing."""

from __future__ import annotations

import base64
import logging
import stat
from pathlib import Path

import pytest

from proxy.auth.tokens import Access, InvalidToken, TokenIssuer
from proxy.secrets import Keyring, SecretError

PLAIN = "vendor-password-0123456789"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_generate_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.yaml"
    ring = Keyring.generate(path)
    ring.save()
    assert _mode(path) == 0o600
    back = Keyring.load(path)
    assert back.current == ring.current
    assert back.keys == ring.keys
    assert len(back.keys[back.current]) == 32
    assert back.open(ring.seal(PLAIN, "reg-1"), "reg-1") == PLAIN
    assert not path.with_name("keys.yaml.tmp").exists()


def test_load_or_create_creates_0600_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.yaml"
    with caplog.at_level(logging.WARNING, logger="pullgate.secrets"):
        ring = Keyring.load_or_create(path)
    assert _mode(path) == 0o600
    created = [r for r in caplog.records if r.name == "pullgate.secrets" and "created" in r.getMessage()]
    assert len(created) == 1 and str(path) in created[0].getMessage()
    key_b64 = base64.b64encode(ring.keys[ring.current]).decode()
    assert key_b64 not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pullgate.secrets"):
        again = Keyring.load_or_create(path)
    assert again.keys == ring.keys
    assert not caplog.records  # loading an existing ring is silent
    assert _mode(path) == 0o600


def test_seal_open_round_trip_and_no_plaintext() -> None:
    ring = Keyring.generate()
    sealed = ring.seal(PLAIN, "reg-1")
    assert sealed.startswith(f"v1:{ring.current}:")
    assert PLAIN not in sealed
    assert base64.b64encode(PLAIN.encode()).decode()[:16] not in sealed
    assert ring.key_id_of(sealed) == ring.current
    assert ring.open(sealed, "reg-1") == PLAIN
    assert ring.seal(PLAIN, "reg-1") != sealed  # fresh nonce every time


def test_other_associated_data_fails() -> None:
    ring = Keyring.generate()
    sealed = ring.seal(PLAIN, "reg-1")
    with pytest.raises(SecretError) as exc:
        ring.open(sealed, "reg-2")
    assert PLAIN not in str(exc.value)


def test_unknown_key_id_is_named() -> None:
    ring, other = Keyring.generate(), Keyring.generate()
    other.current = "k20990101-abcdef"
    other.keys = {"k20990101-abcdef": other.keys[next(iter(other.keys))]}
    sealed = other.seal(PLAIN, "reg-1")
    with pytest.raises(SecretError, match="k20990101-abcdef"):
        ring.open(sealed, "reg-1")


@pytest.mark.parametrize("where", ["flip", "truncate", "not-base64", "short", "prefix", "garbage"])
def test_tampered_values_fail(where: str) -> None:
    ring = Keyring.generate()
    sealed = ring.seal(PLAIN, "reg-1")
    prefix, kid, b64 = sealed.split(":", 2)
    blob = bytearray(base64.b64decode(b64))
    if where == "flip":
        blob[20] ^= 0x01
        bad = f"{prefix}:{kid}:{base64.b64encode(bytes(blob)).decode()}"
    elif where == "truncate":
        bad = f"{prefix}:{kid}:{base64.b64encode(bytes(blob[:-1])).decode()}"
    elif where == "not-base64":
        bad = f"{prefix}:{kid}:{b64[:-4]}!!!!"
    elif where == "short":
        bad = f"{prefix}:{kid}:{base64.b64encode(b'abc').decode()}"
    elif where == "prefix":
        bad = f"v9:{kid}:{b64}"
    else:
        bad = "no colons here"
    with pytest.raises(SecretError):
        ring.open(bad, "reg-1")


def test_add_key_rotates_and_old_values_still_open(tmp_path: Path) -> None:
    ring = Keyring.generate(tmp_path / "keys.yaml")
    first = ring.current
    old = ring.seal(PLAIN, "reg-1")
    new_kid = ring.add_key()
    assert new_kid != first and ring.current == new_kid and set(ring.keys) == {first, new_kid}
    assert ring.key_id_of(ring.seal(PLAIN, "reg-1")) == new_kid
    assert ring.open(old, "reg-1") == PLAIN
    ring.save()
    assert Keyring.load(ring.path or tmp_path).open(old, "reg-1") == PLAIN


def test_signing_key_stable_per_kid_and_distinct() -> None:
    ring = Keyring.generate()
    first = ring.current
    kid1, k1 = ring.signing_key()
    assert kid1 == first and ring.signing_key(first) == (first, k1)
    assert k1 != ring.keys[first]  # derived, not the master key itself
    kid2, k2 = (ring.add_key(), ring.signing_key()[1])
    assert kid2 != kid1 and k2 != k1
    assert ring.signing_key(first) == (first, k1)
    # The derivation depends only on the master key: a reloaded ring derives the same key.
    clone = Keyring(current=first, keys={first: ring.keys[first]})
    assert clone.signing_key(first)[1] == k1
    with pytest.raises(SecretError, match="nope"):
        ring.signing_key("nope")


def test_issued_tokens_follow_the_keyring() -> None:
    ring = Keyring.generate()
    issuer = TokenIssuer(ring, ttl_seconds=60)
    token, _, _ = issuer.issue("cust-1", "myapp", "proxy.example", [Access("proxy/myapp/r/x", ("pull",))])
    assert issuer.verify(token, "proxy.example").allows("proxy/myapp/r/x")
    old = ring.current
    ring.add_key()
    assert issuer.verify(token, "proxy.example").subject == "cust-1"  # old key still in the ring
    pruned = Keyring(current=ring.current, keys={k: v for k, v in ring.keys.items() if k != old})
    with pytest.raises(InvalidToken):
        TokenIssuer(pruned, 60).verify(token, "proxy.example")
    with pytest.raises(InvalidToken):
        TokenIssuer(Keyring.generate(), 60).verify(issuer.issue("c", "a", "h", [])[0], "h")


@pytest.mark.parametrize(
    "body",
    ["garbage\n", "- a\n- b\n", "current: k1\nkeys: {k1: 'AAAA'}\n", "keys: {}\n"],
    ids=["scalar", "list", "short-key", "no-current"],
)
def test_bad_keyring_file_is_a_secret_error(tmp_path: Path, body: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(SecretError, match="keyring"):
        Keyring.load(path)
