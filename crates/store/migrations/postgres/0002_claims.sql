-- Several schedulers: each registers and heartbeats; a run is claimed by one scheduler
-- (`owner`), and every claim bumps the run's fencing token (`fence`), so writes from a
-- scheduler that lost the claim are refused. `container_seq`: the log seq of the try's
-- first container line (lines before it are Stevedore's own, e.g. the image pull), so a
-- scheduler that adopts the try knows how many container lines are stored.
CREATE TABLE schedulers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tries ADD COLUMN container_seq BIGINT;
CREATE INDEX runs_owner ON runs (owner);
