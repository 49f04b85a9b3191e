-- Indexes that answer the period sums of a reservation on their own, without
-- reading the entries: the guild pool (guild, period) and one member's usage
-- (guild, member, period). The first replaces the (guild_id, period_start)
-- index, of which it is an extension.
CREATE INDEX quota_entries_guild_period_sums
    ON quota_entries (guild_id, period_start, state, id, cost_reserved, cost_settled);
CREATE INDEX quota_entries_guild_user_period_sums
    ON quota_entries (guild_id, user_id, period_start, state, id, cost_reserved, cost_settled);
DROP INDEX quota_entries_guild_period;
