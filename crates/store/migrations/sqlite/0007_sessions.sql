-- Web UI sessions: a browser logs in with a token and gets a session cookie. Only a
-- SHA-256 of the cookie's value is kept; the session ends with its token (revoked) or at
-- `expires_at`. `csrf` is the token that forms of the session must send back.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    token_id   INTEGER NOT NULL REFERENCES tokens (id),
    csrf       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
