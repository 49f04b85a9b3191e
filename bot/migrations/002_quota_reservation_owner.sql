-- Which process holds each reservation, so start-up can tell a reservation left
-- by a crashed process (refund now) from one held by a live process sharing the
-- file (leave it until its deadline). Rows from before this migration have NULL
-- owners and are only refunded by the deadline.
ALTER TABLE quota_entries ADD COLUMN owner_host TEXT;
ALTER TABLE quota_entries ADD COLUMN owner_pid INTEGER;
ALTER TABLE quota_entries ADD COLUMN owner_started TEXT;
