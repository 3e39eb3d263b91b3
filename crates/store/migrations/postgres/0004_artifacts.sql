-- The files a try wrote under its workspace, kept in the artifact store (content-addressed:
-- the blob is the run's `sha256`). One row per file and try.
CREATE TABLE artifacts (
    try_id  BIGINT NOT NULL,
    run_id  TEXT NOT NULL,
    task_id TEXT NOT NULL,
    path    TEXT NOT NULL,
    size    BIGINT NOT NULL,
    sha256  TEXT NOT NULL,
    -- The file's modification time where it was written (Unix seconds), given back when it
    -- is staged: a staged file whose size and time are unchanged is not captured again.
    mtime   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (try_id, path)
);
CREATE INDEX artifacts_run ON artifacts (run_id);
