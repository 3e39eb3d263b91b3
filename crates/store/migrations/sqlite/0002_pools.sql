-- Pools: named slot counts shared by every job's task instances.
CREATE TABLE pools (
    name        TEXT PRIMARY KEY,
    slots       INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    updated_at  TEXT NOT NULL
);
INSERT INTO pools (name, slots, description, updated_at)
VALUES ('default', 128, 'The pool of tasks that name none', '1970-01-01T00:00:00.000000Z');
