-- Ended runs in the order `db clean` and the retention take them (their end, then their
-- id): each batch of a clean reads a range of this index from where the previous one
-- stopped, instead of every ended run of the store sorted again.
CREATE INDEX runs_ended ON runs (ended_at, run_id) WHERE state IN ('success', 'failed');
