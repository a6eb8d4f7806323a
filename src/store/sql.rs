//! SQL shared by both engines: the statements (`$N` placeholders, which SQLite
//! and Postgres both accept), binding a new message, and reading a row back.

use sqlx::{Database, Decode, Encode, Row, Type, query::Query};

use super::{Appended, NewMessage, StoreError};
use crate::domain::{MessageKind, StoredMessage};

macro_rules! columns {
    () => {
        "id, room_id, user_json, username, full_name, avatar, client_id, body, kind, media, audio, created_at"
    };
}

/// The columns a new message is written to, in the order [`bind_insert`]
/// binds them and [`super::writer::BatchRow`] encodes them.
macro_rules! insert_columns {
    () => {
        "(room_id, user_key, user_json, username, full_name, avatar, client_id, body, kind, media, audio, created_at)"
    };
}
pub(super) use insert_columns;

/// Inserts unless the idempotency key exists; returns the row when inserted.
pub const INSERT: &str = concat!(
    "INSERT INTO messages ",
    insert_columns!(),
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING RETURNING ",
    columns!()
);

/// The stored original of an idempotency key.
pub const BY_KEY: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM messages WHERE room_id = $1 AND user_key = $2 AND client_id = $3"
);

/// `limit` messages after `$2` and before `$3`, ascending.
pub const PAGE_FORWARD: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM messages WHERE room_id = $1 AND id > $2 AND id < $3 ORDER BY id ASC LIMIT $4"
);

/// `limit` messages after `$2` and before `$3`, newest first.
pub const PAGE_BACKWARD: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM messages WHERE room_id = $1 AND id > $2 AND id < $3 ORDER BY id DESC LIMIT $4"
);

pub const IS_MEMBER: &str = "SELECT 1 FROM group_members WHERE group_id = $1 AND user_key = $2";
/// Both return a row only when they changed something.
pub const ADD_MEMBER: &str = "INSERT INTO group_members (group_id, user_key, added_at) VALUES ($1, $2, $3) \
                              ON CONFLICT DO NOTHING RETURNING user_key";
pub const REMOVE_MEMBER: &str = "DELETE FROM group_members WHERE group_id = $1 AND user_key = $2 RETURNING user_key";

/// Binds the twelve values of [`INSERT`].
pub fn bind_insert<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    m: &'q NewMessage,
    user_json: String,
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    query
        .bind(m.room.as_str())
        .bind(m.sender.user.key())
        .bind(user_json)
        .bind(m.sender.profile.username.clone())
        .bind(m.sender.profile.full_name.clone())
        .bind(m.sender.profile.avatar.clone())
        .bind(m.client_id.clone())
        .bind(m.text.as_str())
        .bind(m.kind.as_str())
        .bind(m.media.clone())
        .bind(m.audio.clone())
        .bind(m.timestamp)
}

/// The stored original of a message whose idempotency key was taken.
pub async fn by_key<'e, DB, E>(executor: E, m: &NewMessage) -> Result<Appended, StoreError>
where
    DB: Database,
    E: sqlx::Executor<'e, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> &'r str: sqlx::ColumnIndex<DB::Row>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
{
    let row = sqlx::query::<DB>(BY_KEY)
        .bind(m.room.as_str())
        .bind(m.sender.user.key())
        .bind(m.client_id.clone())
        .fetch_one(executor)
        .await?;
    Ok(Appended {
        message: message(&row)?,
        created: false,
    })
}

/// Reads a message row (the [`columns!`] list) back.
pub fn message<'r, R>(row: &'r R) -> Result<StoredMessage, StoreError>
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    let user_json: String = row.try_get("user_json")?;
    Ok(StoredMessage {
        id: row.try_get("id")?,
        room_id: row.try_get("room_id")?,
        user_id: serde_json::from_str(&user_json)
            .map_err(|e| StoreError::Corrupt(format!("user_json {user_json:?}: {e}")))?,
        username: row.try_get("username")?,
        full_name: row.try_get("full_name")?,
        avatar: row.try_get("avatar")?,
        client_id: row.try_get("client_id")?,
        message: row.try_get("body")?,
        kind: MessageKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind:?}")))?,
        media: row.try_get("media")?,
        audio: row.try_get("audio")?,
        timestamp: row.try_get("created_at")?,
    })
}

/// The queries both engines run the same way, over either engine's pool.
pub struct Shared<DB: Database> {
    pub pool: sqlx::Pool<DB>,
}

impl<DB> Shared<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> &'r str: sqlx::ColumnIndex<DB::Row>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
{
    pub async fn page(&self, room: &crate::domain::RoomId, q: super::PageQuery) -> Result<super::Page, StoreError> {
        let statement = if q.after.is_some() { PAGE_FORWARD } else { PAGE_BACKWARD };
        let rows = sqlx::query::<DB>(statement)
            .bind(room.as_str())
            .bind(q.after.unwrap_or(0))
            .bind(q.before.unwrap_or(i64::MAX))
            .bind(i64::from(q.limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        super::Page::from_rows(&rows, q, |r| message(r))
    }

    pub async fn is_group_member(&self, group: &str, user_key: &str) -> Result<bool, StoreError> {
        let row = sqlx::query::<DB>(IS_MEMBER)
            .bind(group)
            .bind(user_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn set_group_member(&self, group: &str, user_key: &str, member: bool) -> Result<bool, StoreError> {
        let query = if member {
            sqlx::query::<DB>(ADD_MEMBER)
                .bind(group)
                .bind(user_key)
                .bind(crate::clock::now_ms())
        } else {
            sqlx::query::<DB>(REMOVE_MEMBER).bind(group).bind(user_key)
        };
        Ok(query.fetch_optional(&self.pool).await?.is_some())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query::<DB>("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Records `room` in session `pid` (creating the session on its first
    /// room) and pushes its expiry back, in one transaction.
    pub async fn session_join(&self, s: &super::SessionJoin<'_>) -> Result<(), StoreError> {
        let identity = super::identity_json(s.identity);
        // Serializing a member (a map of JSON values) cannot fail.
        let member = serde_json::to_string(s.member).unwrap_or_else(|_| "{}".into());
        let mut tx = self.pool.begin().await?;
        sqlx::query::<DB>(UPSERT_SESSION)
            .bind(s.pid)
            .bind(s.identity.user.key())
            .bind(identity.as_str())
            .bind(s.expires_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query::<DB>(SESSION_JOIN)
            .bind(s.pid)
            .bind(s.room.as_str())
            .bind(member.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn session_leave(
        &self,
        pid: &str,
        room: &crate::domain::RoomId,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query::<DB>(SESSION_LEAVE)
            .bind(pid)
            .bind(room.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query::<DB>(SESSION_TOUCH)
            .bind(pid)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn session_touch(&self, pids: &[String], expires_at: i64) -> Result<(), StoreError> {
        if pids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for pid in pids {
            sqlx::query::<DB>(SESSION_TOUCH)
                .bind(pid.as_str())
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn session(&self, pid: &str, now: i64) -> Result<Option<super::SessionRecord>, StoreError> {
        let Some(row) = sqlx::query::<DB>(SESSION_GET)
            .bind(pid)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let user_key: String = row.try_get("user_key")?;
        let rows = sqlx::query::<DB>(SESSION_ROOMS).bind(pid).fetch_all(&self.pool).await?;
        let rooms = rows
            .iter()
            .map(|r| {
                let room: String = r.try_get("room_id")?;
                let member: String = r.try_get("member")?;
                Ok(super::SessionRoom {
                    room: crate::domain::RoomId::parse(&room)
                        .map_err(|e| StoreError::Corrupt(format!("session room {room:?}: {e}")))?,
                    member: serde_json::from_str(&member)
                        .ok()
                        .and_then(crate::domain::Member::from_value)
                        .ok_or_else(|| StoreError::Corrupt(format!("session member {member:?}")))?,
                    after: r.try_get("after_id")?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(super::SessionRecord { user_key, rooms }))
    }

    /// Deletes the sessions expired at `now`; how many.
    pub async fn expire_sessions(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query::<DB>(EXPIRE_SESSION_ROOMS)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query::<DB>(EXPIRE_SESSIONS).bind(now).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok(gone.len() as u64)
    }
}

/// A session's row, created on its first room or its expiry pushed back.
pub const UPSERT_SESSION: &str = "INSERT INTO sessions (pid, user_key, identity, expires_at) VALUES ($1, $2, $3, $4) \
                                  ON CONFLICT (pid) DO UPDATE SET expires_at = excluded.expires_at";
/// A room of a session, with the room's newest message id at the time: the
/// join's history covered everything up to it.
pub const SESSION_JOIN: &str = "INSERT INTO session_rooms (pid, room_id, member, after_id) \
                                VALUES ($1, $2, $3, (SELECT COALESCE(MAX(id), 0) FROM messages WHERE room_id = $2)) \
                                ON CONFLICT (pid, room_id) DO UPDATE SET member = excluded.member";
pub const SESSION_LEAVE: &str = "DELETE FROM session_rooms WHERE pid = $1 AND room_id = $2";
pub const SESSION_TOUCH: &str = "UPDATE sessions SET expires_at = $2 WHERE pid = $1";
pub const SESSION_GET: &str = "SELECT user_key FROM sessions WHERE pid = $1 AND expires_at > $2";
pub const SESSION_ROOMS: &str = "SELECT room_id, member, after_id FROM session_rooms WHERE pid = $1 ORDER BY room_id";
pub const EXPIRE_SESSION_ROOMS: &str =
    "DELETE FROM session_rooms WHERE pid IN (SELECT pid FROM sessions WHERE expires_at <= $1)";
pub const EXPIRE_SESSIONS: &str = "DELETE FROM sessions WHERE expires_at <= $1 RETURNING pid";
