-- A task instance changes state several times per try. With an index on its state, every
-- such change wrote index entries too (and, on PostgreSQL, could never be a HOT update);
-- no query needs it: state counts read the whole table anyway.
DROP INDEX task_instances_state;
-- A scheduler's runs are looked up among the active ones: an index of every run it ever
-- held would grow for as long as it runs.
DROP INDEX runs_owner;
CREATE INDEX runs_active_owner ON runs (owner) WHERE state IN ('queued', 'running');
