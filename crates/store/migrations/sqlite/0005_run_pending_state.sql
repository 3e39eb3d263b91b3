-- State published by successful tries, committed for the job only when the whole run
-- succeeds: an extract's cursor must not move past records a failed load never stored.
CREATE TABLE run_pending_state (
    run_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id)
);
