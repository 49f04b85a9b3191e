-- Words and phrases a guild's moderators block in prompts (bot/blocklist.py). The
-- rule is stored in its canonical, folded form, so "Café" and "cafe" are one rule.
CREATE TABLE guild_blocked_words (
    guild_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    added_by TEXT,
    added_at TEXT NOT NULL,
    PRIMARY KEY (guild_id, rule)
);
