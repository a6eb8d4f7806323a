-- Connection state recovery (socket.io-client's `pid` + `offset`): a
-- connection's private session id, whose user it is and until when it may be
-- resumed, and the rooms it had joined with the member identity it held in
-- each. Written when a socket joins or leaves a room (and on disconnect, which
-- pushes `expires_at`), read on a reconnect to any node, deleted by
-- housekeeping once expired.
CREATE TABLE sessions (
    pid         TEXT    PRIMARY KEY,
    -- string form of the user id: a session resumes only for the same user
    user_key    TEXT    NOT NULL,
    -- the identity as it connected (user id as JSON and profile), for inspection
    identity    TEXT    NOT NULL,
    -- ms since epoch
    expires_at  INTEGER  NOT NULL
);

CREATE INDEX sessions_by_expiry ON sessions (expires_at);

CREATE TABLE session_rooms (
    pid         TEXT    NOT NULL,
    room_id     TEXT    NOT NULL,
    -- the member as the room showed it (JSON, `{ userId, ...profile }`)
    member      TEXT    NOT NULL,
    -- the room's newest message id when it was joined: the join's history
    -- covered everything up to it, so a replay starts after it at the earliest
    after_id    INTEGER  NOT NULL,
    PRIMARY KEY (pid, room_id)
);
