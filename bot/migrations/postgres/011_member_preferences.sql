-- As ../011_member_preferences.sql.
CREATE TABLE member_preferences (
    guild_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    style TEXT,
    aspect_ratio TEXT,
    size TEXT,
    provider TEXT,
    samples BIGINT,
    private_results INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

ALTER TABLE guild_settings ADD COLUMN private_results INTEGER NOT NULL DEFAULT 0;
