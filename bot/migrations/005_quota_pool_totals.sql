-- Running totals of each guild pool per period, kept by triggers in the same
-- transaction as the entry they count. A reservation then reads its pool's
-- usage from one row instead of summing every entry of the period, so its cost
-- no longer grows with how busy the guild has been. The triggers keep the
-- rule the sums had: settled credits count when settled, held credits while
-- reserved, refunded ones not at all. A reset's mark still subtracts the
-- entries it excludes (see ``SqliteTx.totals``).
CREATE TABLE quota_pool_totals (
    guild_id     TEXT NOT NULL,
    period_start TEXT NOT NULL,
    settled      INTEGER NOT NULL DEFAULT 0,
    reserved     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (guild_id, period_start)
) WITHOUT ROWID;

INSERT INTO quota_pool_totals (guild_id, period_start, settled, reserved)
SELECT guild_id, period_start,
       COALESCE(SUM(CASE WHEN state = 'settled' THEN cost_settled END), 0),
       COALESCE(SUM(CASE WHEN state = 'reserved' THEN cost_reserved END), 0)
FROM quota_entries
GROUP BY guild_id, period_start;

CREATE TRIGGER quota_pool_totals_insert AFTER INSERT ON quota_entries
BEGIN
    INSERT INTO quota_pool_totals (guild_id, period_start, settled, reserved)
    VALUES (
        NEW.guild_id,
        NEW.period_start,
        CASE WHEN NEW.state = 'settled' THEN COALESCE(NEW.cost_settled, 0) ELSE 0 END,
        CASE WHEN NEW.state = 'reserved' THEN NEW.cost_reserved ELSE 0 END
    )
    ON CONFLICT (guild_id, period_start) DO UPDATE SET
        settled = settled + excluded.settled,
        reserved = reserved + excluded.reserved;
END;

CREATE TRIGGER quota_pool_totals_update
AFTER UPDATE OF guild_id, period_start, state, cost_reserved, cost_settled ON quota_entries
BEGIN
    UPDATE quota_pool_totals SET
        settled = settled
            - CASE WHEN OLD.state = 'settled' THEN COALESCE(OLD.cost_settled, 0) ELSE 0 END,
        reserved = reserved
            - CASE WHEN OLD.state = 'reserved' THEN OLD.cost_reserved ELSE 0 END
    WHERE guild_id = OLD.guild_id AND period_start = OLD.period_start;
    INSERT INTO quota_pool_totals (guild_id, period_start, settled, reserved)
    VALUES (
        NEW.guild_id,
        NEW.period_start,
        CASE WHEN NEW.state = 'settled' THEN COALESCE(NEW.cost_settled, 0) ELSE 0 END,
        CASE WHEN NEW.state = 'reserved' THEN NEW.cost_reserved ELSE 0 END
    )
    ON CONFLICT (guild_id, period_start) DO UPDATE SET
        settled = settled + excluded.settled,
        reserved = reserved + excluded.reserved;
END;

CREATE TRIGGER quota_pool_totals_delete AFTER DELETE ON quota_entries
BEGIN
    UPDATE quota_pool_totals SET
        settled = settled
            - CASE WHEN OLD.state = 'settled' THEN COALESCE(OLD.cost_settled, 0) ELSE 0 END,
        reserved = reserved
            - CASE WHEN OLD.state = 'reserved' THEN OLD.cost_reserved ELSE 0 END
    WHERE guild_id = OLD.guild_id AND period_start = OLD.period_start;
END;
