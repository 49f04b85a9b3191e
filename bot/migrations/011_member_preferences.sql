-- A member's /settings in a guild (bot/preferences.py); NULL: no default.
CREATE TABLE member_preferences (
    guild_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    style TEXT,
    aspect_ratio TEXT,
    size TEXT,
    provider TEXT,
    samples INTEGER,
    private_results INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- 1 when the guild's moderators let members receive results privately.
ALTER TABLE guild_settings ADD COLUMN private_results INTEGER NOT NULL DEFAULT 0;
