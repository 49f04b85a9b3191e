-- Running totals of each guild pool per period, kept by a trigger in the same
-- transaction as the entry they count (see the SQLite migration of the same
-- number for why). Concurrent settles of one guild queue on its row briefly;
-- a reservation already holds the guild's scope lock.
CREATE TABLE quota_pool_totals (
    guild_id     TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    settled      BIGINT NOT NULL DEFAULT 0,
    reserved     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (guild_id, period_start)
);

INSERT INTO quota_pool_totals (guild_id, period_start, settled, reserved)
SELECT guild_id, period_start,
       COALESCE(SUM(CASE WHEN state = 'settled' THEN cost_settled END), 0),
       COALESCE(SUM(CASE WHEN state = 'reserved' THEN cost_reserved END), 0)
FROM quota_entries
GROUP BY guild_id, period_start;

CREATE FUNCTION quota_pool_totals_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE quota_pool_totals SET
            settled = settled
                - CASE WHEN OLD.state = 'settled' THEN COALESCE(OLD.cost_settled, 0) ELSE 0 END,
            reserved = reserved
                - CASE WHEN OLD.state = 'reserved' THEN OLD.cost_reserved ELSE 0 END
        WHERE guild_id = OLD.guild_id AND period_start = OLD.period_start;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO quota_pool_totals AS t (guild_id, period_start, settled, reserved)
        VALUES (
            NEW.guild_id,
            NEW.period_start,
            CASE WHEN NEW.state = 'settled' THEN COALESCE(NEW.cost_settled, 0) ELSE 0 END,
            CASE WHEN NEW.state = 'reserved' THEN NEW.cost_reserved ELSE 0 END
        )
        ON CONFLICT (guild_id, period_start) DO UPDATE SET
            settled = t.settled + excluded.settled,
            reserved = t.reserved + excluded.reserved;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER quota_pool_totals_insert_delete
AFTER INSERT OR DELETE ON quota_entries
FOR EACH ROW EXECUTE FUNCTION quota_pool_totals_track();

CREATE TRIGGER quota_pool_totals_update
AFTER UPDATE OF guild_id, period_start, state, cost_reserved, cost_settled ON quota_entries
FOR EACH ROW EXECUTE FUNCTION quota_pool_totals_track();
