-- Operating incremental state (docs/connectors.md, "Operating state"): every committed state
-- is kept in order, whoever committed it (a successful run, or an operator's `state set` or
-- `state clear`), and a run may be triggered without the committed state of some tasks.

CREATE TABLE task_state_history (
    seq          BIGSERIAL PRIMARY KEY,
    job_id       TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    -- NULL: the state was cleared.
    value        TEXT,
    -- The run that committed it; NULL for an operator's set or clear.
    run_id       TEXT,
    -- 'run', 'set' or 'clear'.
    action       TEXT NOT NULL,
    -- Who set or cleared it (NULL for a run).
    actor        TEXT,
    committed_at TEXT NOT NULL
);
CREATE INDEX task_state_history_task ON task_state_history (job_id, task_id, seq);
-- The states committed before this table existed start each task's history.
INSERT INTO task_state_history (job_id, task_id, value, run_id, action, actor, committed_at)
    SELECT job_id, task_id, value, run_id, 'run', NULL, updated_at FROM task_state;

-- The tasks a run runs without their committed state (`jobs trigger --full-refresh`): a
-- JSON list of task ids, NULL for none.
ALTER TABLE runs ADD COLUMN full_refresh TEXT;
