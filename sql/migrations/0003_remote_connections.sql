-- Every WebSocket connection to a remote-control session, with how and when it ended.

CREATE TABLE remote_connections (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT NOT NULL REFERENCES remote_sessions(id) ON DELETE CASCADE,
    user_id      INTEGER NOT NULL,
    role         TEXT NOT NULL,                 -- bridge | viewer
    connected_at REAL NOT NULL,
    ended_at     REAL,
    end_reason   TEXT
);
CREATE INDEX remote_connections_session ON remote_connections(session_id, connected_at);
