-- Which process holds each reservation (see ../002_quota_reservation_owner.sql).
-- With PostgreSQL the holders may run on other machines: bot.quota.owner only
-- judges an owner dead when it ran on this machine since its last boot.
ALTER TABLE quota_entries ADD COLUMN owner_host TEXT;
ALTER TABLE quota_entries ADD COLUMN owner_pid INTEGER;
ALTER TABLE quota_entries ADD COLUMN owner_started TEXT;
