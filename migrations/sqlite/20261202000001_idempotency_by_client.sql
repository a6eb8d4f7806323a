-- The idempotency index led by clientId instead of by room and sender.
-- Clients' temporary ids are time-ordered (the legacy Pusher hook's
-- `temp-<ms>-<random>`), so new entries land at the index's end: a commit of
-- many messages touches a few index pages instead of one per (room, sender),
-- which is most of what each commit writes. Same key, same uniqueness.
-- Built before the old one is dropped, so there is never a moment without it;
-- on a large table the build holds writes back for its duration.
CREATE UNIQUE INDEX messages_idempotency_by_client ON messages (client_id, room_id, user_key)
    WHERE client_id IS NOT NULL;
DROP INDEX messages_idempotency;
