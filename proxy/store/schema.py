"""Schema migrations, in order. Portable SQL (SQLite and PostgreSQL)."""

MIGRATIONS: list[str] = [
    # 1: teams, apps, registries, customers, API tokens
    """
    CREATE TABLE teams (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE apps (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE registries (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        slug TEXT NOT NULL,
        provider TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        url TEXT NOT NULL,
        insecure INTEGER NOT NULL DEFAULT 0,
        username TEXT,
        secret_sealed TEXT,
        allow_anonymous INTEGER NOT NULL DEFAULT 0,
        options TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (team_id, slug)
    );
    CREATE TABLE registry_apps (
        registry_id TEXT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
        app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        PRIMARY KEY (registry_id, app_id)
    );
    CREATE TABLE customers (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        email TEXT,
        license_hash TEXT NOT NULL UNIQUE,
        license_sealed TEXT NOT NULL,
        license_type TEXT NOT NULL DEFAULT 'prod',
        expires_at TEXT,
        status TEXT NOT NULL DEFAULT 'active',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # 2: app image allowlists and KOTS signing keys; the pull log
    """
    ALTER TABLE apps ADD COLUMN image_allowlist TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE apps ADD COLUMN kots_public_key TEXT;
    CREATE TABLE pull_logs (
        time TEXT NOT NULL,
        team_id TEXT NOT NULL,
        customer_id TEXT,
        app_slug TEXT,
        registry_slug TEXT,
        action TEXT NOT NULL,
        image TEXT,
        reference TEXT,
        status INTEGER NOT NULL,
        success INTEGER NOT NULL,
        bytes BIGINT NOT NULL DEFAULT 0  -- BIGINT: blobs pass 2 GiB (SQLite reads it as INTEGER)
    );
    CREATE INDEX pull_logs_team_time ON pull_logs (team_id, time);
    CREATE INDEX pull_logs_time ON pull_logs (time)
    """,
    # 3: custom hostnames, their ownership checks and certificates
    """
    CREATE TABLE custom_hostnames (
        hostname TEXT PRIMARY KEY,
        team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        token TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL DEFAULT 'pending',
        reason TEXT,
        is_default INTEGER NOT NULL DEFAULT 0,
        cert_pem TEXT,
        key_sealed TEXT,
        cert_not_after TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX custom_hostnames_team ON custom_hostnames (team_id)
    """,
    # 4: a registry's anonymous access limited to listed repository patterns ('[]': every one)
    """
    ALTER TABLE registries ADD COLUMN anonymous_repositories TEXT NOT NULL DEFAULT '[]'
    """,
    # 5: the pull-through cache's index (proxy.cache): what is held, through which
    # repositories, and tags; times in epoch milliseconds. And a hit/miss mark on the pull log.
    """
    CREATE TABLE cache_entries (
        digest TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        media_type TEXT,
        last_access BIGINT NOT NULL
    );
    CREATE TABLE cache_bindings (
        registry_id TEXT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (registry_id, repository, digest)
    );
    CREATE INDEX cache_bindings_digest ON cache_bindings (digest);
    CREATE TABLE cache_tags (
        registry_id TEXT NOT NULL REFERENCES registries(id) ON DELETE CASCADE,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        accept TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        checked_at BIGINT NOT NULL,
        PRIMARY KEY (registry_id, repository, tag, accept)
    );
    ALTER TABLE pull_logs ADD COLUMN cache TEXT
    """,
]
