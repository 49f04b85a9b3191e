-- Instance leases (see ../008_instance_leases.sql). An adopter locks the jobs
-- it takes FOR UPDATE SKIP LOCKED, so two live processes never adopt the same
-- job; an expired instance is marked in the same transaction, so its renewal
-- (a conditional update of the same row) then fails and the process knows.
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    state TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    renewed_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

ALTER TABLE jobs ADD COLUMN owner_instance TEXT;
ALTER TABLE quota_entries ADD COLUMN owner_instance TEXT;
ALTER TABLE quota_entries ADD COLUMN delivering INTEGER NOT NULL DEFAULT 0;

CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status NOT IN ('delivered', 'failed');
