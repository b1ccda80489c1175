"""`pullgate keys rotate`: a new master key becomes current; every stored
secret (registry secrets, license IDs, custom hostnames' TLS keys, webhook
secrets) is re-encrypted under it. The keyring is saved first, so at no moment
is a row sealed under a key the file does not hold."""

from __future__ import annotations

from proxy.domains.service import key_aad
from proxy.secrets import Keyring
from proxy.store import usage
from proxy.store.base import Store


async def rotate(store: Store, keyring: Keyring) -> tuple[str, int]:
    """Returns (new key id, number of secrets re-encrypted)."""
    kid = keyring.add_key()
    keyring.save()
    registry_secrets = [
        (rid, keyring.seal(keyring.open(sealed, rid), rid)) for rid, sealed in await store.sealed_registry_secrets()
    ]
    licenses = [
        (cid, keyring.seal(keyring.open(sealed, f"customer:{cid}"), f"customer:{cid}"))
        for cid, sealed in await store.sealed_licenses()
    ]
    # Custom hostnames' TLS keys: left under the old key, their certificates would stop
    # loading once that key is removed from the file.
    hostname_keys = [
        (name, keyring.seal(keyring.open(sealed, key_aad(name)), key_aad(name)))
        for name, sealed in await store.sealed_hostname_keys()
    ]
    await store.reseal(registry_secrets, licenses, hostname_keys)
    hooks = [
        (tid, keyring.seal(keyring.open(sealed, usage.webhook_aad(tid)), usage.webhook_aad(tid)))
        for tid, sealed in await usage.sealed_webhook_secrets(store)
    ]
    await usage.reseal_webhook_secrets(store, hooks)
    return kid, len(registry_secrets) + len(licenses) + len(hostname_keys) + len(hooks)
