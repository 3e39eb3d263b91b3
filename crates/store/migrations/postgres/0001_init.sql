-- The PostgreSQL store's schema: the same tables as the SQLite store's migrations 0001-0007,
-- with the same value formats (timestamps as fixed-width RFC 3339 text in UTC, so text order
-- is time order; JSON as text; states by name), so both stores share their row code.

CREATE TABLE jobs (
    job_id          TEXT PRIMARY KEY,
    current_version TEXT NOT NULL,
    file_path       TEXT NOT NULL,
    paused          BOOLEAN NOT NULL DEFAULT FALSE,
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
    ended_at            TEXT,
    cancel_requested    BOOLEAN NOT NULL DEFAULT FALSE
);
-- One scheduled (or backfill) run per job and logical date, whoever creates it.
CREATE UNIQUE INDEX runs_job_logical_date ON runs (job_id, logical_date) WHERE run_trigger <> 'manual';
CREATE INDEX runs_job ON runs (job_id, run_id);
CREATE INDEX runs_state ON runs (state);

CREATE TABLE task_instances (
    -- Insertion order: task instances list in the job file's order.
    position     BIGSERIAL,
    run_id       TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    state        TEXT NOT NULL,
    try_number   BIGINT NOT NULL DEFAULT 0,
    next_try_at  TEXT,
    started_at   TEXT,
    ended_at     TEXT,
    retry_base   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, task_id)
);
CREATE INDEX task_instances_state ON task_instances (state);

CREATE TABLE tries (
    try_id         BIGSERIAL PRIMARY KEY,
    run_id         TEXT NOT NULL,
    task_id        TEXT NOT NULL,
    try_number     BIGINT NOT NULL,
    backend        TEXT NOT NULL,
    container_id   TEXT,
    image_ref      TEXT NOT NULL,
    image_digest   TEXT,
    state          TEXT NOT NULL,
    started_at     TEXT NOT NULL,
    ended_at       TEXT,
    exit_code      BIGINT,
    failure_reason TEXT,
    pending_state  TEXT,
    UNIQUE (run_id, task_id, try_number)
);

-- stream: 1 stdout, 2 stderr, 3 a protocol log message. ts: microseconds since the epoch.
CREATE TABLE log_lines (
    try_id BIGINT NOT NULL,
    seq    BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    ts     BIGINT NOT NULL,
    text   TEXT NOT NULL,
    PRIMARY KEY (try_id, seq)
);

CREATE TABLE outputs (
    run_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id, key)
);

CREATE TABLE task_state (
    job_id     TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    value      TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (job_id, task_id)
);

CREATE TABLE run_pending_state (
    run_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, task_id)
);

CREATE TABLE pools (
    name        TEXT PRIMARY KEY,
    slots       BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    updated_at  TEXT NOT NULL
);
INSERT INTO pools (name, slots, description, updated_at)
VALUES ('default', 128, 'The pool of tasks that name none', '1970-01-01T00:00:00.000000Z');

CREATE TABLE connections (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    keys        TEXT NOT NULL,
    sealed      BYTEA NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE UNIQUE INDEX tokens_active_name ON tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    token_id   BIGINT NOT NULL REFERENCES tokens (id),
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
