"""The store's operations, written once over a small SQL driver interface.

Drivers (SQLite now, PostgreSQL for several replicas) only run SQL; every
query lives here, written with `?` placeholders that a driver may rewrite.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from proxy.oci.errors import OCIError, PullgateCode
from proxy.store import rollup
from proxy.store.models import App, Channel, Customer, CustomHostname, Registry, Team
from proxy.store.schema import MIGRATIONS

Row = dict[str, Any]

# Every app starts with these release channels (name, slug); the first is the default.
DEFAULT_CHANNELS = (("Stable", "stable"), ("Beta", "beta"), ("Unstable", "unstable"))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_id() -> str:
    return uuid.uuid4().hex


def license_hash(license_id: str) -> str:
    """License IDs are high-entropy random strings, so a plain SHA-256 suffices."""
    return hashlib.sha256(license_id.encode()).hexdigest()


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def to_stored_time(value: dt.datetime) -> str:
    """The stored form of a time (parse_time reads it back): millisecond UTC, which sorts as text."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


class Store(abc.ABC):
    # True when every process that opens the store runs on this host (a file: SQLite).
    one_host = False

    # --- driver -----------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    async def execute_many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run statements in one transaction."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.execute_many([(sql, params)])

    async def ping(self) -> bool:
        return (await self.fetchone("SELECT 1 AS ok")) is not None

    # --- changes other replicas cache (PostgreSQL; no-ops for one SQLite process) ---
    async def notify(self, kind: str) -> None:
        """Tell every replica that `kind` (customer, registry, app, hostname) changed."""
        return None

    async def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(kind)` whenever any replica notifies a change."""
        return None

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by one replica at a time (schema migrations, bootstrap)."""
        return contextlib.nullcontext()

    # --- migrations -------------------------------------------------------
    async def migrate(self) -> None:
        await self.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        row = await self.fetchone("SELECT MAX(version) AS v FROM schema_migrations")
        done = (row or {}).get("v") or 0
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= done:
                continue
            stmts: list[tuple[str, Sequence[Any]]] = [(s.strip(), ()) for s in script.split(";") if s.strip()]
            stmts.append(("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, now_iso())))
            await self.execute_many(stmts)

    # --- teams and tokens -------------------------------------------------
    async def ensure_team(self, name: str) -> Team:
        row = await self.fetchone("SELECT id, name FROM teams WHERE name = ?", (name,))
        if row is None:
            tid = new_id()
            await self.execute("INSERT INTO teams (id, name, created_at) VALUES (?, ?, ?)", (tid, name, now_iso()))
            return Team(id=tid, name=name)
        return Team(**row)

    async def ensure_api_token(self, team_id: str, token: str, name: str) -> None:
        h = hashlib.sha256(token.encode()).hexdigest()
        if await self.fetchone("SELECT id FROM api_tokens WHERE token_hash = ?", (h,)):
            return
        await self.execute(
            "INSERT INTO api_tokens (id, team_id, name, token_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (new_id(), team_id, name, h, now_iso()),
        )

    # --- apps ---------------------------------------------------------------
    async def ensure_app(self, team_id: str, slug: str, name: str | None) -> App:
        row = await self.fetchone("SELECT id, team_id, slug, name FROM apps WHERE slug = ?", (slug,))
        if row is None:
            aid, now = new_id(), now_iso()
            await self.execute_many(
                [
                    (
                        "INSERT INTO apps (id, team_id, slug, name, created_at) VALUES (?, ?, ?, ?, ?)",
                        (aid, team_id, slug, name or slug, now),
                    ),
                    *_default_channels(aid, now),
                ]
            )
            return App(id=aid, team_id=team_id, slug=slug, name=name or slug)
        if row["team_id"] != team_id:
            raise ValueError(f"app slug {slug!r} belongs to another team")
        if name and name != row["name"]:
            await self.execute("UPDATE apps SET name = ? WHERE id = ?", (name, row["id"]))
            row["name"] = name
        return App(**row)

    async def app_by_slug(self, slug: str) -> App | None:
        row = await self.fetchone(_APP_SELECT + " WHERE slug = ?", (slug,))
        return _app(row) if row else None

    # --- registries -------------------------------------------------------
    async def registry_id(self, team_id: str, slug: str) -> str | None:
        row = await self.fetchone("SELECT id FROM registries WHERE team_id = ? AND slug = ?", (team_id, slug))
        return row["id"] if row else None

    async def put_registry(self, reg: Registry) -> None:
        """Create or update (by team and slug), with its app links."""
        now = now_iso()
        existing = await self.registry_id(reg.team_id, reg.slug)
        stmts: list[tuple[str, Sequence[Any]]] = []
        fields = (
            reg.provider,
            reg.endpoint,
            reg.url,
            int(reg.insecure),
            reg.username,
            reg.secret_sealed,
            int(reg.allow_anonymous),
            json.dumps(reg.options, sort_keys=True),
            json.dumps(list(reg.anonymous_repositories)),
        )
        if existing is None:
            stmts.append(
                (
                    "INSERT INTO registries (id, team_id, slug, provider, endpoint, url, insecure, username,"
                    " secret_sealed, allow_anonymous, options, anonymous_repositories, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (reg.id, reg.team_id, reg.slug, *fields, now, now),
                )
            )
        else:
            if existing != reg.id:
                raise ValueError("registry id does not match the stored one")
            stmts.append(
                (
                    "UPDATE registries SET provider = ?, endpoint = ?, url = ?, insecure = ?, username = ?,"
                    " secret_sealed = ?, allow_anonymous = ?, options = ?, anonymous_repositories = ?,"
                    " updated_at = ? WHERE id = ?",
                    (*fields, now, reg.id),
                )
            )
        stmts.append(("DELETE FROM registry_apps WHERE registry_id = ?", (reg.id,)))
        stmts.extend(
            ("INSERT INTO registry_apps (registry_id, app_id) VALUES (?, ?)", (reg.id, app_id))
            for app_id in reg.app_ids
        )
        await self.execute_many(stmts)

    async def registries_of_team(self, team_id: str) -> list[Registry]:
        rows = await self.fetchall("SELECT * FROM registries WHERE team_id = ? ORDER BY slug", (team_id,))
        links = await self.fetchall(
            "SELECT ra.registry_id, ra.app_id FROM registry_apps ra"
            " JOIN registries r ON r.id = ra.registry_id WHERE r.team_id = ?",
            (team_id,),
        )
        apps: dict[str, list[str]] = {}
        for link in links:
            apps.setdefault(link["registry_id"], []).append(link["app_id"])
        return [_registry(row, tuple(sorted(apps.get(row["id"], ())))) for row in rows]

    async def anonymous_registries(self) -> list[Registry]:
        """Registries of every team that allow anonymous pulls, with their app links (whose
        allowlists bound what they serve anonymously)."""
        rows = await self.fetchall("SELECT * FROM registries WHERE allow_anonymous = 1 ORDER BY team_id, slug")
        links = await self.fetchall(
            "SELECT ra.registry_id, ra.app_id FROM registry_apps ra"
            " JOIN registries r ON r.id = ra.registry_id WHERE r.allow_anonymous = 1"
        )
        apps: dict[str, list[str]] = {}
        for link in links:
            apps.setdefault(link["registry_id"], []).append(link["app_id"])
        return [_registry(row, tuple(sorted(apps.get(row["id"], ())))) for row in rows]

    async def registries_for_app(self, app: App) -> list[Registry]:
        return [r for r in await self.registries_of_team(app.team_id) if r.serves(app.id)]

    async def sealed_registry_secrets(self) -> list[tuple[str, str]]:
        rows = await self.fetchall("SELECT id, secret_sealed FROM registries WHERE secret_sealed IS NOT NULL")
        return [(r["id"], r["secret_sealed"]) for r in rows]

    # --- customers (licenses) ------------------------------------------------
    async def put_customer(
        self,
        *,
        team_id: str,
        app_id: str,
        name: str,
        email: str | None,
        license_id: str,
        seal: Any,
        license_type: str = "prod",
        expires_at: str | None = None,
        status: str | None = None,
        custom_id: str | None = None,
        channels: Sequence[tuple[str, bool]] | None = None,
    ) -> str:
        """Create or update the customer that holds this license; returns its id.

        `channels` are (channel id, is the customer's default) pairs; None puts a new
        customer on the app's default channel and leaves an existing one's as they are.
        A None `custom_id` keeps the stored one."""
        h = license_hash(license_id)
        now = now_iso()
        row = await self.fetchone("SELECT id, app_id FROM customers WHERE license_hash = ?", (h,))
        stmts: list[tuple[str, Sequence[Any]]] = []
        if row is None:
            cid = new_id()
            stmts.append(
                (
                    "INSERT INTO customers (id, team_id, app_id, name, email, license_hash, license_sealed,"
                    " license_type, expires_at, status, custom_id, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        cid,
                        team_id,
                        app_id,
                        name,
                        email,
                        h,
                        seal(license_id, cid),
                        license_type,
                        expires_at,
                        status or "active",
                        custom_id,
                        now,
                        now,
                    ),
                )
            )
        else:
            cid = row["id"]
            stmts.append(
                (
                    "UPDATE customers SET team_id = ?, app_id = ?, name = ?, email = ?, license_type = ?,"
                    " expires_at = ?, status = COALESCE(?, status), custom_id = COALESCE(?, custom_id),"
                    " updated_at = ? WHERE id = ?",
                    (team_id, app_id, name, email, license_type, expires_at, status, custom_id, now, cid),
                )
            )
        if channels is None and (row is None or row["app_id"] != app_id):
            default = await self.fetchone(
                "SELECT id FROM app_channels WHERE app_id = ? AND is_default = 1 ORDER BY position", (app_id,)
            )
            channels = [(default["id"], True)] if default else []
        if channels is not None:
            stmts += _channel_links(cid, channels)
        await self.execute_many(stmts)
        return cid

    async def customer_by_license(self, license_id: str) -> Customer | None:
        return await self._customer("c.license_hash = ?", license_hash(license_id))

    async def customer_by_id(self, customer_id: str) -> Customer | None:
        return await self._customer("c.id = ?", customer_id)

    async def _customer(self, where: str, value: str) -> Customer | None:
        # `where` is one of two fixed strings above, never user input.
        sql = _CUSTOMER_SELECT + " WHERE " + where
        row = await self.fetchone(sql, (value,))
        if row is None:
            return None
        row["expires_at"] = parse_time(row["expires_at"])
        return Customer(**row)

    async def set_customer_status(self, customer_id: str, status: str) -> None:
        await self.execute(
            "UPDATE customers SET status = ?, updated_at = ? WHERE id = ?", (status, now_iso(), customer_id)
        )

    async def sealed_licenses(self) -> list[tuple[str, str]]:
        rows = await self.fetchall("SELECT id, license_sealed FROM customers")
        return [(r["id"], r["license_sealed"]) for r in rows]

    async def reseal(
        self,
        registry_secrets: list[tuple[str, str]],
        licenses: list[tuple[str, str]],
        hostname_keys: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Store re-encrypted secrets in one transaction (key rotation)."""
        stmts: list[tuple[str, Sequence[Any]]] = [
            ("UPDATE registries SET secret_sealed = ? WHERE id = ?", (sealed, rid)) for rid, sealed in registry_secrets
        ]
        stmts += [("UPDATE customers SET license_sealed = ? WHERE id = ?", (sealed, cid)) for cid, sealed in licenses]
        stmts += [
            ("UPDATE custom_hostnames SET key_sealed = ? WHERE hostname = ?", (sealed, name))
            for name, sealed in hostname_keys
        ]
        await self.execute_many(stmts)

    # --- vendor API (team-scoped: every query names the team) --------------
    async def team_by_token(self, token: str) -> Team | None:
        row = await self.fetchone(
            "SELECT t.id, t.name FROM api_tokens k JOIN teams t ON t.id = k.team_id WHERE k.token_hash = ?",
            (hashlib.sha256(token.encode()).hexdigest(),),
        )
        return Team(**row) if row else None

    async def team_by_name(self, name: str) -> Team | None:
        row = await self.fetchone("SELECT id, name FROM teams WHERE name = ?", (name,))
        return Team(**row) if row else None

    async def apps_of_team(self, team_id: str) -> list[App]:
        rows = await self.fetchall(_APP_SELECT + " WHERE team_id = ? ORDER BY slug", (team_id,))
        return [_app(r) for r in rows]

    async def create_app(
        self, team_id: str, slug: str, name: str, allowlist: Sequence[str], public_key: str | None
    ) -> App:
        """Raises Conflict when the slug is taken (app slugs are global: they are in pull paths)."""
        if await self.fetchone("SELECT id FROM apps WHERE slug = ?", (slug,)):
            raise Conflict(f"an app with slug {slug!r} already exists")
        aid, now = new_id(), now_iso()
        await self.execute_many(
            [
                (
                    "INSERT INTO apps (id, team_id, slug, name, image_allowlist, kots_public_key, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (aid, team_id, slug, name, json.dumps(list(allowlist)), public_key, now),
                ),
                *_default_channels(aid, now),
            ]
        )
        return App(aid, team_id, slug, name, tuple(allowlist), public_key)

    async def update_app(self, app: App) -> None:
        await self.execute(
            "UPDATE apps SET name = ?, image_allowlist = ?, kots_public_key = ? WHERE id = ? AND team_id = ?",
            (app.name, json.dumps(list(app.image_allowlist)), app.kots_public_key, app.id, app.team_id),
        )

    async def delete_registry(self, team_id: str, slug: str) -> bool:
        rid = await self.registry_id(team_id, slug)
        if rid is None:
            return False
        await self.execute("DELETE FROM registries WHERE id = ? AND team_id = ?", (rid, team_id))
        return True

    async def customers_of_team(self, team_id: str, app_id: str | None = None) -> list[Customer]:
        sql, params = _CUSTOMER_SELECT + " WHERE c.team_id = ?", [team_id]
        if app_id is not None:
            sql += " AND c.app_id = ?"
            params.append(app_id)
        rows = await self.fetchall(sql + " ORDER BY c.created_at, c.name", params)
        for row in rows:
            row["expires_at"] = parse_time(row["expires_at"])
        return [Customer(**row) for row in rows]

    async def update_customer(
        self,
        customer_id: str,
        *,
        name: str,
        email: str | None,
        license_type: str,
        expires_at: str | None,
        custom_id: str | None = None,
        channels: Sequence[tuple[str, bool]] | None = None,
    ) -> None:
        """`channels` None leaves the customer's channels as they are."""
        stmts: list[tuple[str, Sequence[Any]]] = [
            (
                "UPDATE customers SET name = ?, email = ?, license_type = ?, expires_at = ?, custom_id = ?,"
                " updated_at = ? WHERE id = ?",
                (name, email, license_type, expires_at, custom_id, now_iso(), customer_id),
            )
        ]
        if channels is not None:
            stmts += _channel_links(customer_id, channels)
        await self.execute_many(stmts)

    # --- release channels -------------------------------------------------------
    async def channels_of_team(self, team_id: str, app_id: str | None = None) -> list[Channel]:
        """Every channel of the team's apps (or of one app), in each app's order."""
        sql = (
            "SELECT ch.id, ch.app_id, ch.name, ch.slug, ch.position, ch.is_default, ch.created_at"
            " FROM app_channels ch JOIN apps a ON a.id = ch.app_id WHERE a.team_id = ?"
        )
        params = [team_id]
        if app_id is not None:
            sql += " AND ch.app_id = ?"
            params.append(app_id)
        rows = await self.fetchall(sql + " ORDER BY ch.app_id, ch.position, ch.name", params)
        return [_channel(r) for r in rows]

    async def customer_channels(
        self, team_id: str, customer_id: str | None = None
    ) -> dict[str, list[tuple[Channel, bool]]]:
        """customer id -> its (channel, is its default) pairs, the default first."""
        sql = (
            "SELECT cc.customer_id, cc.is_default AS customer_default, ch.id, ch.app_id, ch.name, ch.slug,"
            " ch.position, ch.is_default, ch.created_at FROM customer_channels cc"
            " JOIN app_channels ch ON ch.id = cc.channel_id JOIN customers c ON c.id = cc.customer_id"
            " WHERE c.team_id = ?"
        )
        params = [team_id]
        if customer_id is not None:
            sql += " AND cc.customer_id = ?"
            params.append(customer_id)
        out: dict[str, list[tuple[Channel, bool]]] = {}
        rows = await self.fetchall(sql + " ORDER BY cc.customer_id, cc.is_default DESC, ch.position", params)
        for r in rows:
            out.setdefault(r["customer_id"], []).append((_channel(r), bool(r["customer_default"])))
        return out

    async def sealed_license_of(self, customer_id: str) -> str | None:
        row = await self.fetchone("SELECT license_sealed FROM customers WHERE id = ?", (customer_id,))
        return row["license_sealed"] if row else None

    # --- pull log -------------------------------------------------------------
    async def insert_pull_logs(self, rows: Sequence[Sequence[Any]]) -> None:
        """Rows of (time, team_id, customer_id, app_slug, registry_slug, action, image, reference,
        status, success, bytes, cache), written in one transaction with what they add to the
        daily egress rollup (proxy.store.rollup)."""
        stmts: list[tuple[str, Sequence[Any]]] = [
            (
                "INSERT INTO pull_logs (time, team_id, customer_id, app_slug, registry_slug, action, image,"
                " reference, status, success, bytes, cache) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            for row in rows
        ]
        await self.execute_many(stmts + rollup.statements(rows))

    async def pull_logs(
        self,
        team_id: str,
        *,
        customer_id: str | None = None,
        registry_slug: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 500,
    ) -> list[Row]:
        """Newest first. `since`/`until` are ISO times in the stored form (UTC, +00:00)."""
        sql = (
            "SELECT l.time, l.customer_id, c.name AS customer_name, l.app_slug, l.registry_slug, l.action,"
            " l.image, l.reference, l.status, l.success, l.bytes, l.cache FROM pull_logs l"
            " LEFT JOIN customers c ON c.id = l.customer_id WHERE l.team_id = ?"
        )
        params: list[Any] = [team_id]
        for clause, value in (
            (" AND l.customer_id = ?", customer_id),
            (" AND l.registry_slug = ?", registry_slug),
            (" AND l.time >= ?", since),
            (" AND l.time < ?", until),
        ):
            if value is not None:
                sql += clause
                params.append(value)
        params.append(limit)
        return await self.fetchall(sql + " ORDER BY l.time DESC LIMIT ?", params)

    async def registries_last_used(self, team_id: str) -> dict[str, str]:
        rows = await self.fetchall(
            "SELECT registry_slug, MAX(time) AS last FROM pull_logs WHERE team_id = ? AND registry_slug IS NOT NULL"
            " GROUP BY registry_slug",
            (team_id,),
        )
        return {r["registry_slug"]: r["last"] for r in rows}

    async def pulled_repositories(self, team_id: str, app_slug: str) -> list[tuple[str, str]]:
        """(registry slug, upstream repository) pairs this app's customers pulled successfully."""
        rows = await self.fetchall(
            "SELECT DISTINCT registry_slug, image FROM pull_logs WHERE team_id = ? AND app_slug = ? AND success = 1"
            " AND registry_slug IS NOT NULL AND image IS NOT NULL AND action IN ('manifest', 'HEAD', 'blob', 'tags')",
            (team_id, app_slug),
        )
        return [(r["registry_slug"], r["image"]) for r in rows]

    async def purge_pull_logs(self, before: str) -> None:
        await self.execute("DELETE FROM pull_logs WHERE time < ?", (before,))

    # --- custom hostnames ---------------------------------------------------
    async def add_hostname(self, team_id: str, hostname: str, token: str) -> CustomHostname:
        """Raises Conflict when any team already registered the hostname."""
        if await self.fetchone("SELECT hostname FROM custom_hostnames WHERE hostname = ?", (hostname,)):
            raise Conflict(f"hostname {hostname!r} is already registered")
        now = now_iso()
        await self.execute(
            "INSERT INTO custom_hostnames (hostname, team_id, token, status, created_at, updated_at)"
            " VALUES (?, ?, ?, 'pending', ?, ?)",
            (hostname, team_id, token, now, now),
        )
        return CustomHostname(hostname=hostname, team_id=team_id, token=token, status="pending", created_at=now)

    async def hostname(self, hostname: str) -> CustomHostname | None:
        row = await self.fetchone("SELECT * FROM custom_hostnames WHERE hostname = ?", (hostname,))
        return _hostname(row) if row else None

    async def hostname_by_token(self, token: str) -> CustomHostname | None:
        row = await self.fetchone("SELECT * FROM custom_hostnames WHERE token = ?", (token,))
        return _hostname(row) if row else None

    async def hostnames(self, team_id: str | None = None, status: str | None = None) -> list[CustomHostname]:
        sql, params = "SELECT * FROM custom_hostnames WHERE 1 = 1", list[str]()
        if team_id is not None:
            sql, params = sql + " AND team_id = ?", [*params, team_id]
        if status is not None:
            sql, params = sql + " AND status = ?", [*params, status]
        return [_hostname(r) for r in await self.fetchall(sql + " ORDER BY hostname", params)]

    async def set_hostname_status(self, hostname: str, status: str, reason: str | None) -> None:
        await self.execute(
            "UPDATE custom_hostnames SET status = ?, reason = ?, updated_at = ? WHERE hostname = ?",
            (status, reason, now_iso(), hostname),
        )

    async def set_default_hostname(self, team_id: str, hostname: str) -> None:
        await self.execute_many(
            [
                ("UPDATE custom_hostnames SET is_default = 0 WHERE team_id = ?", (team_id,)),
                (
                    "UPDATE custom_hostnames SET is_default = 1, updated_at = ? WHERE hostname = ? AND team_id = ?",
                    (now_iso(), hostname, team_id),
                ),
            ]
        )

    async def set_hostname_certificate(self, hostname: str, cert_pem: str, key_sealed: str, not_after: str) -> None:
        await self.execute(
            "UPDATE custom_hostnames SET cert_pem = ?, key_sealed = ?, cert_not_after = ?, updated_at = ?"
            " WHERE hostname = ?",
            (cert_pem, key_sealed, not_after, now_iso(), hostname),
        )

    async def sealed_hostname_keys(self) -> list[tuple[str, str]]:
        """(hostname, its sealed TLS key) for every hostname with an uploaded certificate (key rotation)."""
        rows = await self.fetchall(
            "SELECT hostname, key_sealed FROM custom_hostnames WHERE key_sealed IS NOT NULL ORDER BY hostname"
        )
        return [(r["hostname"], r["key_sealed"]) for r in rows]

    async def delete_hostname(self, team_id: str, hostname: str) -> bool:
        found = await self.fetchone(
            "SELECT hostname FROM custom_hostnames WHERE hostname = ? AND team_id = ?", (hostname, team_id)
        )
        if found is None:
            return False
        await self.execute("DELETE FROM custom_hostnames WHERE hostname = ?", (hostname,))
        return True


class StoreUnavailable(OCIError):
    """The database cannot be reached right now (down, restarting): a 503 with
    Retry-After for the client, not an internal error."""

    def __init__(self) -> None:
        super().__init__(PullgateCode.UNAVAILABLE, headers={"Retry-After": "5"})


class Conflict(Exception):
    """A unique name (slug, license) is already taken."""


_APP_SELECT = "SELECT id, team_id, slug, name, image_allowlist, kots_public_key FROM apps"


def _app(row: Row) -> App:
    return App(
        id=row["id"],
        team_id=row["team_id"],
        slug=row["slug"],
        name=row["name"],
        image_allowlist=tuple(json.loads(row["image_allowlist"] or "[]")),
        kots_public_key=row["kots_public_key"],
    )


_CUSTOMER_SELECT = (
    "SELECT c.id, c.team_id, c.app_id, a.slug AS app_slug, c.name, c.email, c.license_type,"
    " c.expires_at, c.status, c.created_at, substr(c.license_hash, 1, 12) AS license_ref, c.custom_id,"
    " c.egress_threshold_bytes"
    " FROM customers c JOIN apps a ON a.id = c.app_id"
)


def _default_channels(app_id: str, now: str) -> list[tuple[str, Sequence[Any]]]:
    """A new app's channels; their ids are derived from the app's, as migration 5 derives them."""
    return [
        (
            "INSERT INTO app_channels (id, app_id, name, slug, position, is_default, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (f"{app_id}-{slug}", app_id, name, slug, i, int(i == 0), now),
        )
        for i, (name, slug) in enumerate(DEFAULT_CHANNELS)
    ]


def _channel_links(customer_id: str, channels: Sequence[tuple[str, bool]]) -> list[tuple[str, Sequence[Any]]]:
    stmts: list[tuple[str, Sequence[Any]]] = [("DELETE FROM customer_channels WHERE customer_id = ?", (customer_id,))]
    stmts += [
        (
            "INSERT INTO customer_channels (customer_id, channel_id, is_default) VALUES (?, ?, ?)",
            (customer_id, channel_id, int(default)),
        )
        for channel_id, default in channels
    ]
    return stmts


def _channel(row: Row) -> Channel:
    return Channel(
        id=row["id"],
        app_id=row["app_id"],
        name=row["name"],
        slug=row["slug"],
        position=row["position"],
        is_default=bool(row["is_default"]),
        created_at=row["created_at"],
    )


def _registry(row: Row, app_ids: tuple[str, ...]) -> Registry:
    return Registry(
        id=row["id"],
        team_id=row["team_id"],
        slug=row["slug"],
        provider=row["provider"],
        endpoint=row["endpoint"],
        url=row["url"],
        insecure=bool(row["insecure"]),
        username=row["username"],
        secret_sealed=row["secret_sealed"],
        allow_anonymous=bool(row["allow_anonymous"]),
        options=json.loads(row["options"] or "{}"),
        app_ids=app_ids,
        anonymous_repositories=tuple(json.loads(row["anonymous_repositories"] or "[]")),
    )


def _hostname(row: Row) -> CustomHostname:
    return CustomHostname(
        hostname=row["hostname"],
        team_id=row["team_id"],
        token=row["token"],
        status=row["status"],
        reason=row["reason"],
        is_default=bool(row["is_default"]),
        cert_pem=row["cert_pem"],
        key_sealed=row["key_sealed"],
        cert_not_after=row["cert_not_after"],
        created_at=row["created_at"],
    )
