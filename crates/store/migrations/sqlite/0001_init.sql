-- Jobs as the scheduler last read them from their files, and every version it has seen.
CREATE TABLE jobs (
    job_id          TEXT PRIMARY KEY,
    current_version TEXT NOT NULL,
    file_path       TEXT NOT NULL,
    paused          INTEGER NOT NULL DEFAULT 0,
    updated_at      TEXT NOT NULL
);

CREATE TABLE job_versions (
    job_id     TEXT NOT NULL,
    version    TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, version)
);

CREATE TABLE runs (
    run_id              TEXT PRIMARY KEY,
    job_id              TEXT NOT NULL,
    job_version         TEXT NOT NULL,
    run_trigger         TEXT NOT NULL,
    logical_date        TEXT NOT NULL,
    data_interval_start TEXT NOT NULL,
    data_interval_end   TEXT NOT NULL,
    params              TEXT NOT NULL,
    state               TEXT NOT NULL,
    queued_at           TEXT NOT NULL,
    started_at          TEXT,
    ended_at            TEXT
);
-- One scheduled (or backfill) run per job and logical date, whoever creates it.
CREATE UNIQUE INDEX runs_job_logical_date ON runs (job_id, logical_date) WHERE run_trigger <> 'manual';
CREATE INDEX runs_job ON runs (job_id, queued_at);
CREATE INDEX runs_state ON runs (state);

CREATE TABLE task_instances (
    run_id       TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    state        TEXT NOT NULL,
    try_number   INTEGER NOT NULL DEFAULT 0,
    next_try_at  TEXT,
    started_at   TEXT,
    ended_at     TEXT,
    PRIMARY KEY (run_id, task_id)
);
CREATE INDEX task_instances_state ON task_instances (state);

CREATE TABLE tries (
    try_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         TEXT NOT NULL,
    task_id        TEXT NOT NULL,
    try_number     INTEGER NOT NULL,
    backend        TEXT NOT NULL,
    container_id   TEXT,
    image_ref      TEXT NOT NULL,
    image_digest   TEXT,
    state          TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT,
    exit_code      INTEGER,
    failure_reason TEXT,
    pending_state  TEXT,
    UNIQUE (run_id, task_id, try_number)
);

-- stream: 1 stdout, 2 stderr, 3 a protocol log message. ts: microseconds since the epoch.
CREATE TABLE log_lines (
    try_id INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    ts     INTEGER NOT NULL,
    text   TEXT NOT NULL,
    PRIMARY KEY (try_id, seq)
) WITHOUT ROWID;

CREATE TABLE outputs (
    run_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id, key)
);

-- The incremental state an integration committed, per job and task.
CREATE TABLE task_state (
    job_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    value      TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job_id, task_id)
);
