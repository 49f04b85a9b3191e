-- The per-guild quota ledger. Times are UTC ISO-8601 text of one fixed width
-- ("YYYY-MM-DDTHH:MM:SS.ffffffZ") so that text order is time order.

-- One row per guild, created on first contact with the operator's defaults, so a
-- later change of those defaults does not silently move an existing guild.
CREATE TABLE quota_guilds (
    guild_id      TEXT PRIMARY KEY,
    pool_credits  INTEGER NOT NULL CHECK (pool_credits >= 0),
    period        TEXT NOT NULL CHECK (period IN ('day', 'week', 'month')),
    timezone      TEXT NOT NULL,
    -- NULL: members have no per-member limit (only the pool).
    user_default  INTEGER CHECK (user_default IS NULL OR user_default >= 0),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

-- credits NULL: the role is unlimited.
CREATE TABLE quota_role_limits (
    guild_id    TEXT NOT NULL,
    role_id     TEXT NOT NULL,
    credits     INTEGER CHECK (credits IS NULL OR credits >= 0),
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (guild_id, role_id)
);

-- credits NULL: the member is unlimited. An override beats every role.
CREATE TABLE quota_user_limits (
    guild_id    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    credits     INTEGER CHECK (credits IS NULL OR credits >= 0),
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- One row per reservation; its state moves reserved -> settled | refunded once.
CREATE TABLE quota_entries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    reservation_id   TEXT NOT NULL UNIQUE,
    guild_id         TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    channel_id       TEXT,
    job_id           TEXT,
    idempotency_key  TEXT NOT NULL UNIQUE,
    mode             TEXT,
    prompt           TEXT,
    cost_reserved    INTEGER NOT NULL CHECK (cost_reserved >= 0),
    cost_settled     INTEGER CHECK (cost_settled IS NULL OR cost_settled >= 0),
    state            TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'refunded')),
    reason           TEXT,
    period_start     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    CHECK (cost_settled IS NULL OR cost_settled <= cost_reserved)
);
CREATE INDEX quota_entries_guild_period ON quota_entries (guild_id, period_start);
CREATE INDEX quota_entries_user_state ON quota_entries (user_id, state);
CREATE INDEX quota_entries_user_created ON quota_entries (user_id, created_at);
CREATE INDEX quota_entries_created ON quota_entries (created_at);
CREATE INDEX quota_entries_state ON quota_entries (state);
CREATE INDEX quota_entries_job ON quota_entries (job_id);

-- One-off extra credits for one period: user_id NULL means the guild pool.
CREATE TABLE quota_grants (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id      TEXT NOT NULL,
    user_id       TEXT,
    credits       INTEGER NOT NULL CHECK (credits > 0),
    period_start  TEXT NOT NULL,
    granted_by    TEXT NOT NULL,
    reason        TEXT,
    created_at    TEXT NOT NULL
);
CREATE INDEX quota_grants_guild_period ON quota_grants (guild_id, period_start);

-- A reset zeroes usage without deleting history: entries with an id at or below
-- after_entry_id no longer count for the period (user_id NULL: the whole guild).
CREATE TABLE quota_resets (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id        TEXT NOT NULL,
    user_id         TEXT,
    after_entry_id  INTEGER NOT NULL,
    period_start    TEXT NOT NULL,
    reset_by        TEXT NOT NULL,
    reason          TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX quota_resets_guild_period ON quota_resets (guild_id, period_start);

CREATE TABLE quota_bans (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id    TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    until       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    banned_by   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    lifted_at   TEXT,
    lifted_by   TEXT
);
CREATE INDEX quota_bans_member ON quota_bans (guild_id, user_id);

-- Threshold events already sent, so each fires once per period across processes.
CREATE TABLE quota_thresholds (
    guild_id      TEXT NOT NULL,
    period_start  TEXT NOT NULL,
    percent       INTEGER NOT NULL,
    fired_at      TEXT NOT NULL,
    PRIMARY KEY (guild_id, period_start, percent)
);
