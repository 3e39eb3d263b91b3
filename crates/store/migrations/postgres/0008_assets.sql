-- Assets (docs/assets.md): every update of an asset (a task that `produces` it succeeded,
-- or `job:ID` for a successful run of ID), and how far each asset-triggered job has read.
CREATE TABLE asset_events (
    seq        BIGSERIAL PRIMARY KEY,
    asset      TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    task_id    TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX asset_events_asset ON asset_events (asset, seq);

CREATE TABLE asset_consumers (
    job_id       TEXT NOT NULL,
    asset        TEXT NOT NULL,
    consumed_seq BIGINT NOT NULL,
    PRIMARY KEY (job_id, asset)
);
