-- Styles a guild's moderators add (/style add): a prompt template with
-- {prompt}, an optional negative prompt and optional defaults. Built-in styles
-- live in bot/styles.py, not here. Names are lower-case slugs (checked by the bot).
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
