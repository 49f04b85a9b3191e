-- Jobs and reservations belong to a running process by lease, not by host name
-- and pid: each process registers an instance with a random id and renews its
-- lease every LEASE_INTERVAL seconds. Once the lease has run out (LEASE_TIMEOUT
-- without a renewal) or the process stopped, any live process adopts the
-- instance's unfinished jobs and their reservations and finishes or refunds
-- them, whatever machine it runs on. Times are epoch seconds, compared as
-- numbers on both backends. host and pid are shown to operators, never decide;
-- quota_entries.owner_host/owner_pid/owner_started (002) are no longer used.
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    state TEXT NOT NULL,  -- live, stopped or expired
    started_at REAL NOT NULL,
    renewed_at REAL NOT NULL,
    expires_at REAL NOT NULL
);

-- NULL: rows from before leases (anyone may adopt them), or a reservation
-- taken by a process without a lease (the CLI; only RESERVATION_TIMEOUT ends it).
ALTER TABLE jobs ADD COLUMN owner_instance TEXT;
ALTER TABLE quota_entries ADD COLUMN owner_instance TEXT;
-- Set when the result starts to upload: the job no longer counts against the
-- member's MAX_JOBS_IN_FLIGHT_PER_USER (its image is appearing), while its
-- credits stay held until it is settled, after the upload.
ALTER TABLE quota_entries ADD COLUMN delivering INTEGER NOT NULL DEFAULT 0;

-- Every process looks for adoptable jobs every LEASE_INTERVAL seconds: only the
-- few unfinished jobs are indexed, so the look stays cheap however many jobs
-- the table holds.
CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE status NOT IN ('delivered', 'failed');
