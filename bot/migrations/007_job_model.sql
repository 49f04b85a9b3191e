-- The model that made a delivered job's images, for the result's Info button.
ALTER TABLE jobs ADD COLUMN model TEXT;
