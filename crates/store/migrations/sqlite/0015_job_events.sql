-- Webhooks (docs/webhooks.md): events posted to a job, stored when accepted and given to
-- exactly one run (run_id, set in the transaction that creates it); and each job's webhook
-- token, stored hashed.
CREATE TABLE job_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at TEXT NOT NULL,
    run_id      TEXT
);
CREATE INDEX job_events_waiting ON job_events (job_id, run_id, seq);
CREATE INDEX job_events_run ON job_events (run_id, seq);

CREATE TABLE webhook_tokens (
    job_id     TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
