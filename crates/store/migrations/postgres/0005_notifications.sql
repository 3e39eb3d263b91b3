-- Alerts (docs/alerts.md). The outbox: one notification per event and connection, written
-- in the transaction of the state change that made the event, delivered in the background
-- by whichever scheduler claims it, at least once, always under the same `id`.
CREATE TABLE notifications (
    seq              BIGSERIAL PRIMARY KEY,
    -- The event's id as receivers see it, the same at every delivery attempt; derived from
    -- what makes the event one, so the same event written twice is kept once.
    id               TEXT NOT NULL UNIQUE,
    event            TEXT NOT NULL,
    job_id           TEXT NOT NULL,
    -- The job version the run ran: whose connections' values its texts are masked against.
    job_version      TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    task_id          TEXT,
    try_number       BIGINT,
    connection       TEXT NOT NULL,
    -- The run's or the task instance's state when the event happened, and why.
    state            TEXT NOT NULL,
    reason           TEXT,
    logical_date     TEXT NOT NULL,
    occurred_at      TEXT NOT NULL,
    -- pending, delivered or failed (given up after its attempts; `notifications retry`).
    status           TEXT NOT NULL DEFAULT 'pending',
    channel          TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    claimed_by       TEXT,
    claimed_until    TEXT,
    last_status_code BIGINT,
    last_error       TEXT,
    delivered_at     TEXT
);
CREATE INDEX notifications_pending ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_run ON notifications (run_id, connection, seq);

-- Every delivery attempt: when, on which channel, the receiver's answer or the error.
CREATE TABLE notification_attempts (
    notification_seq BIGINT NOT NULL,
    attempt          BIGINT NOT NULL,
    at               TEXT NOT NULL,
    channel          TEXT,
    ok               BOOLEAN NOT NULL,
    status_code      BIGINT,
    error            TEXT,
    duration_ms      BIGINT NOT NULL,
    PRIMARY KEY (notification_seq, attempt)
);

-- A job's latest ended runs (`recovery`, `repeated_failure`), found without reading all
-- of its runs.
CREATE INDEX runs_job_ended ON runs (job_id, ended_at) WHERE state IN ('success', 'failed');
-- When a run's `deadline` passed while it had not ended (its `deadline_missed` event made).
ALTER TABLE runs ADD COLUMN deadline_missed_at TEXT;
-- A task instance waiting for a backend that does not answer: since when, and its answer.
ALTER TABLE task_instances ADD COLUMN waiting_since TEXT;
ALTER TABLE task_instances ADD COLUMN waiting_reason TEXT;
