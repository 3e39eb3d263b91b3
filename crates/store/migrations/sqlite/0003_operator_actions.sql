-- An operator asked to cancel the run; the scheduler kills its tries and fails it.
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
-- Tries up to this number happened before the task instance was last cleared: a cleared
-- task instance gets its retries afresh.
ALTER TABLE task_instances ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;
