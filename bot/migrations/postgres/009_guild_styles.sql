-- The guild styles table, column for column as ../009_guild_styles.sql; times
-- are ISO-8601 TEXT as in the job store, so the same SQL reads either database.
CREATE TABLE guild_styles (
    guild_id TEXT NOT NULL,
    name TEXT NOT NULL,
    template TEXT NOT NULL,
    negative_prompt TEXT,
    aspect_ratio TEXT,
    size TEXT,
    provider TEXT,
    model TEXT,
    description TEXT,
    updated_by TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, name)
);
