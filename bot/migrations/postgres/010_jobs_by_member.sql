-- /history lists one member's jobs in a guild, newest first.
CREATE INDEX jobs_by_member ON jobs (guild_id, user_id, created_at);
