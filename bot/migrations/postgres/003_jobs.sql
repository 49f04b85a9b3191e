-- The job store's tables, column for column as ../003_jobs.sql (a test compares
-- the two schemas), times included: the job store writes and parses ISO-8601
-- text itself, so they stay TEXT here and the same SQL reads either database.
-- INTEGER in SQLite is 64 bits: BIGINT.
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
    cost BIGINT NOT NULL,
    charged BIGINT,
    seed BIGINT,
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

CREATE TABLE guild_channels (
    guild_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    added_by TEXT,
    added_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

CREATE TABLE guild_settings (
    guild_id TEXT PRIMARY KEY,
    log_channel_id TEXT,
    updated_at TEXT NOT NULL
);
