-- As ../007_job_model.sql.
ALTER TABLE jobs ADD COLUMN model TEXT;
