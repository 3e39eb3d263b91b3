-- Archived logs (`log_archive_after`): a try's lines, once it has ended, go to the artifact
-- store as compressed JSON lines and its rows are deleted. `tries.logs` says where a try's
-- lines are: `rows` (log_lines), `deleting` (archived, rows still being deleted a batch at
-- a time), `archived`.
ALTER TABLE tries ADD COLUMN logs TEXT NOT NULL DEFAULT 'rows';
CREATE INDEX tries_logs ON tries (logs, ended_at);

-- frames: JSON, one {first_seq, last_seq, offset, length, raw_length} per compressed frame.
CREATE TABLE log_archives (
    try_id      BIGINT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    size        BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    lines       BIGINT NOT NULL,
    raw_bytes   BIGINT NOT NULL,
    frames      TEXT NOT NULL,
    archived_at TEXT NOT NULL
);
CREATE INDEX log_archives_run ON log_archives (run_id);
