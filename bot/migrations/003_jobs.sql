-- Accepted jobs: what was asked, by whom, and where the results went. Buttons on a
-- result carry only the job id; everything they need to act again lives here, and
-- so does everything a restarted bot needs to finish or refund the job (never the
-- interaction token: tokens stay in memory).
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    guild_id TEXT NOT NULL,
    channel_id TEXT,
    user_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    provider TEXT NOT NULL,
    request_json TEXT NOT NULL,
    status TEXT NOT NULL,
    cost INTEGER NOT NULL,
    charged INTEGER,
    seed INTEGER,
    images_json TEXT,
    message_id TEXT,
    error TEXT,
    reservation_json TEXT,
    provider_job_id TEXT,
    provider_fetch_url TEXT,
    outputs_json TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX jobs_by_guild ON jobs (guild_id, created_at);
CREATE INDEX jobs_by_status ON jobs (status);

-- Channels a guild's moderators allow the bot in; no rows means everywhere.
CREATE TABLE guild_channels (
    guild_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    added_by TEXT,
    added_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

-- Per-guild bot settings that are not quota: where threshold alerts go.
CREATE TABLE guild_settings (
    guild_id TEXT PRIMARY KEY,
    log_channel_id TEXT,
    updated_at TEXT NOT NULL
);
