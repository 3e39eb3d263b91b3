-- A scheduling pass looks for running tries no scheduler follows: without an index that read
-- scanned every try ever made.
CREATE INDEX tries_running ON tries (run_id) WHERE state = 'running';
