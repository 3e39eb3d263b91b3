-- A task instance changes state several times per try. With an index on its state, every
-- such change wrote index entries too (and, on PostgreSQL, could never be a HOT update);
-- no query needs it: state counts read the whole table anyway.
DROP INDEX task_instances_state;
