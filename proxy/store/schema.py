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
    # 5 (release channels, for the `replicated` CLI): every app has channels (Stable,
    # Beta, Unstable to begin with); a customer is on one or more, one of them its default;
    # a customer may carry the vendor's own id (custom_id). Existing customers go on Stable.
    """
    CREATE TABLE app_channels (
        id TEXT PRIMARY KEY,
        app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        slug TEXT NOT NULL,
        position INTEGER NOT NULL DEFAULT 0,
        is_default INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        UNIQUE (app_id, slug)
    );
    INSERT INTO app_channels (id, app_id, name, slug, position, is_default, created_at)
        SELECT id || '-stable', id, 'Stable', 'stable', 0, 1, created_at FROM apps;
    INSERT INTO app_channels (id, app_id, name, slug, position, is_default, created_at)
        SELECT id || '-beta', id, 'Beta', 'beta', 1, 0, created_at FROM apps;
    INSERT INTO app_channels (id, app_id, name, slug, position, is_default, created_at)
        SELECT id || '-unstable', id, 'Unstable', 'unstable', 2, 0, created_at FROM apps;
    CREATE TABLE customer_channels (
        customer_id TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        channel_id TEXT NOT NULL REFERENCES app_channels(id) ON DELETE CASCADE,
        is_default INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (customer_id, channel_id)
    );
    CREATE INDEX customer_channels_channel ON customer_channels (channel_id);
    INSERT INTO customer_channels (customer_id, channel_id, is_default)
        SELECT id, app_id || '-stable', 1 FROM customers;
    ALTER TABLE customers ADD COLUMN custom_id TEXT
    """,
    # 6: egress per customer (issue 13): daily rollups of the pull log, kept with each batch
    # (proxy.store.rollup) and backfilled here from the rows already logged; a monthly egress
    # threshold per customer; the team's webhook, the threshold notifications (one per customer
    # and month: the primary key) and every delivery attempt.
    """
    CREATE TABLE egress_daily (
        day TEXT NOT NULL,
        team_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        app_slug TEXT NOT NULL,
        registry_slug TEXT NOT NULL,
        image TEXT NOT NULL,
        bytes BIGINT NOT NULL DEFAULT 0,
        pulls BIGINT NOT NULL DEFAULT 0,
        requests BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (customer_id, day, app_slug, registry_slug, image, team_id)
    );
    CREATE TABLE egress_customer_daily (
        day TEXT NOT NULL,
        team_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        app_slug TEXT NOT NULL,
        bytes BIGINT NOT NULL DEFAULT 0,
        pulls BIGINT NOT NULL DEFAULT 0,
        requests BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (team_id, day, customer_id, app_slug)
    );
    CREATE INDEX egress_customer_daily_customer ON egress_customer_daily (customer_id, day);
    CREATE TABLE egress_customer_monthly (
        month TEXT NOT NULL,
        team_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        app_slug TEXT NOT NULL,
        bytes BIGINT NOT NULL DEFAULT 0,
        pulls BIGINT NOT NULL DEFAULT 0,
        requests BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (team_id, month, customer_id, app_slug)
    );
    CREATE INDEX egress_customer_monthly_customer ON egress_customer_monthly (customer_id, month);
    CREATE TABLE egress_image_daily (
        day TEXT NOT NULL,
        team_id TEXT NOT NULL,
        app_slug TEXT NOT NULL,
        registry_slug TEXT NOT NULL,
        image TEXT NOT NULL,
        bytes BIGINT NOT NULL DEFAULT 0,
        pulls BIGINT NOT NULL DEFAULT 0,
        requests BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (team_id, day, app_slug, registry_slug, image)
    );
    INSERT INTO egress_daily (day, team_id, customer_id, app_slug, registry_slug, image, bytes, pulls, requests)
        SELECT substr(time, 1, 10), team_id, customer_id, COALESCE(app_slug, ''), COALESCE(registry_slug, ''),
               COALESCE(image, ''), SUM(bytes), SUM(CASE WHEN action = 'manifest' AND success = 1 THEN 1 ELSE 0 END),
               COUNT(*)
        FROM pull_logs WHERE customer_id IS NOT NULL
        GROUP BY substr(time, 1, 10), team_id, customer_id, COALESCE(app_slug, ''), COALESCE(registry_slug, ''),
                 COALESCE(image, '');
    INSERT INTO egress_customer_daily (day, team_id, customer_id, app_slug, bytes, pulls, requests)
        SELECT day, team_id, customer_id, app_slug, SUM(bytes), SUM(pulls), SUM(requests) FROM egress_daily
        GROUP BY day, team_id, customer_id, app_slug;
    INSERT INTO egress_customer_monthly (month, team_id, customer_id, app_slug, bytes, pulls, requests)
        SELECT substr(day, 1, 7), team_id, customer_id, app_slug, SUM(bytes), SUM(pulls), SUM(requests)
        FROM egress_daily GROUP BY substr(day, 1, 7), team_id, customer_id, app_slug;
    INSERT INTO egress_image_daily (day, team_id, app_slug, registry_slug, image, bytes, pulls, requests)
        SELECT day, team_id, app_slug, registry_slug, image, SUM(bytes), SUM(pulls), SUM(requests) FROM egress_daily
        GROUP BY day, team_id, app_slug, registry_slug, image;
    ALTER TABLE customers ADD COLUMN egress_threshold_bytes BIGINT;
    CREATE TABLE team_webhooks (
        team_id TEXT PRIMARY KEY REFERENCES teams(id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        secret_sealed TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE egress_notifications (
        customer_id TEXT NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
        month TEXT NOT NULL,
        team_id TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        lease_owner TEXT,
        lease_until TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (customer_id, month)
    );
    CREATE INDEX egress_notifications_due ON egress_notifications (state, next_attempt_at);
    CREATE TABLE webhook_deliveries (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
        event TEXT NOT NULL,
        customer_id TEXT,
        month TEXT,
        attempt INTEGER NOT NULL,
        time TEXT NOT NULL,
        url TEXT NOT NULL,
        status INTEGER,
        error TEXT,
        ok INTEGER NOT NULL
    );
    CREATE INDEX webhook_deliveries_team_time ON webhook_deliveries (team_id, time)
    """,
    # 7: the pull-through cache's index (proxy.cache): what is held, through which
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
    # 8 (scale-out, issue 11): fill leases. One replica fills a digest for the whole cluster:
    # the holder's row, renewed while its fetch runs; another replica may take a row whose
    # holder stopped renewing it (expires_at, epoch milliseconds, passed).
    """
    CREATE TABLE cache_fills (
        digest TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    )
    """,
]
