-- Connections: named secret sets injected as environment variables. `keys` (the variable
-- names) are not secret; `sealed` is the encrypted JSON object of names to values.
CREATE TABLE connections (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    keys        TEXT NOT NULL,
    sealed      BLOB NOT NULL,
    updated_at  TEXT NOT NULL
);
