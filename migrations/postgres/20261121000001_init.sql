-- Messages, oldest first by id. Inserts into one room are serialized (an
-- advisory lock per room in `append`), so within a room id order is commit
-- order and `since` recovery never skips a message committed late.
CREATE TABLE messages (
    id          BIGSERIAL PRIMARY KEY,
    room_id     TEXT    NOT NULL,
    -- string form of the sender id (what users are compared by)
    user_key    TEXT    NOT NULL,
    -- the sender id as JSON (5 or "5"), so payloads keep the token's type
    user_json   TEXT    NOT NULL,
    username    TEXT,
    full_name   TEXT,
    avatar      TEXT,
    client_id   TEXT,
    body        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    media       TEXT,
    audio       TEXT,
    created_at  BIGINT  NOT NULL
);

CREATE INDEX messages_by_room ON messages (room_id, id);

-- Idempotency: one stored message per (room, sender, clientId).
CREATE UNIQUE INDEX messages_idempotency ON messages (room_id, user_key, client_id)
    WHERE client_id IS NOT NULL;

-- Members of group-N rooms, written by the app's backend.
CREATE TABLE group_members (
    group_id    TEXT    NOT NULL,
    user_key    TEXT    NOT NULL,
    added_at    BIGINT  NOT NULL,
    PRIMARY KEY (group_id, user_key)
);
