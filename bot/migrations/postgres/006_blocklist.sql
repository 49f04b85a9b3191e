-- As ../006_blocklist.sql; times are ISO-8601 text like the job store's.
CREATE TABLE guild_blocked_words (
    guild_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    added_by TEXT,
    added_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, rule)
);
