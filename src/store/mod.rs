//! Durable state behind one small interface: messages (append, idempotent on
//! `(room, sender, clientId)`; pages by id), group membership, and the
//! sessions connection state recovery resumes. The chat logic
//! only sees [`Store`]; each engine is one implementation.

mod postgres;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;
mod writer;

use std::{sync::Arc, time::Instant};

use async_trait::async_trait;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::{
    domain::{Identity, Member, MessageKind, RoomId, StoredMessage},
    metrics::Metrics,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From the SQLite writer's own connection.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

/// A message ready to be stored: validated, with its sender resolved.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room: RoomId,
    pub sender: Identity,
    pub client_id: Option<String>,
    pub text: String,
    pub kind: MessageKind,
    pub media: Option<String>,
    pub audio: Option<String>,
    pub timestamp: i64,
}

/// The result of an append: the stored message, and whether this call stored
/// it (false: an earlier call with the same idempotency key did).
#[derive(Debug, Clone)]
pub struct Appended {
    pub message: StoredMessage,
    pub created: bool,
}

/// Which messages of a room to read. With `after`, the first `limit` after it;
/// otherwise the last `limit` before `before` (or the end). Both bounds are exclusive.
#[derive(Debug, Clone, Copy)]
pub struct PageQuery {
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// Messages oldest first, and whether more lie beyond in the direction read.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub messages: Vec<StoredMessage>,
    pub has_more: bool,
}

impl Page {
    /// Builds a page from `limit + 1` rows read in the query's direction.
    fn from_rows<R>(
        rows: &[R],
        q: PageQuery,
        read: impl Fn(&R) -> Result<StoredMessage, StoreError>,
    ) -> Result<Self, StoreError> {
        let mut messages = rows
            .iter()
            .take(q.limit as usize)
            .map(read)
            .collect::<Result<Vec<_>, _>>()?;
        if q.after.is_none() {
            messages.reverse();
        }
        Ok(Page {
            has_more: rows.len() > q.limit as usize,
            messages,
        })
    }
}

/// A room joined by a connection, to record in its session.
#[derive(Debug, Clone, Copy)]
pub struct SessionJoin<'a> {
    /// The session's private id (the CONNECT answer's `pid`).
    pub pid: &'a str,
    pub identity: &'a Identity,
    pub room: &'a RoomId,
    /// The member identity the connection holds in the room.
    pub member: &'a Member,
    /// Ms since epoch after which the session can no longer be resumed.
    pub expires_at: i64,
}

/// A stored session that has not expired: whose it is and its rooms.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub user_key: String,
    pub rooms: Vec<SessionRoom>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionRoom {
    pub room: RoomId,
    pub member: Member,
    /// The room's newest message id when it was joined (its join history covered up to it).
    pub after: i64,
}

/// The identity as a session stores it: the user id as JSON, and the profile.
fn identity_json(identity: &Identity) -> String {
    serde_json::json!({ "userId": identity.user, "profile": identity.profile }).to_string()
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError>;
    async fn page(&self, room: &RoomId, query: PageQuery) -> Result<Page, StoreError>;
    async fn is_group_member(&self, group: &str, user_key: &str) -> Result<bool, StoreError>;
    async fn set_group_member(&self, group: &str, user_key: &str, member: bool) -> Result<bool, StoreError>;
    /// Records a joined room in a session (creating it) and pushes its expiry back.
    async fn session_join(&self, join: SessionJoin<'_>) -> Result<(), StoreError>;
    /// Forgets a room of a session (left on purpose) and pushes its expiry back.
    async fn session_leave(&self, pid: &str, room: &RoomId, expires_at: i64) -> Result<(), StoreError>;
    /// Pushes the expiry of these sessions back (a disconnect, or still connected).
    async fn session_touch(&self, pids: &[String], expires_at: i64) -> Result<(), StoreError>;
    /// The session `pid` unless missing or expired at `now`.
    async fn session(&self, pid: &str, now: i64) -> Result<Option<SessionRecord>, StoreError>;
    /// Deletes the sessions expired at `now`; returns how many.
    async fn expire_sessions(&self, now: i64) -> Result<u64, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
    async fn close(&self);
}

/// Opens the store named by `DATABASE_URL` and runs its migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Ok(Arc::new(SqliteStore::open(url).await?))
    }
}

/// Times every store call into the `switchboard_store_seconds` histogram.
pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
        Arc::new(Self { inner, metrics })
    }

    async fn timed<T>(&self, op: &'static str, fut: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = fut.await;
        self.metrics.observe_store(op, start.elapsed());
        out
    }
}

#[async_trait]
impl Store for Metered {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.timed("append", self.inner.append(msg)).await
    }
    async fn page(&self, room: &RoomId, query: PageQuery) -> Result<Page, StoreError> {
        self.timed("page", self.inner.page(room, query)).await
    }
    async fn is_group_member(&self, group: &str, user_key: &str) -> Result<bool, StoreError> {
        self.timed("is_group_member", self.inner.is_group_member(group, user_key))
            .await
    }
    async fn set_group_member(&self, group: &str, user_key: &str, member: bool) -> Result<bool, StoreError> {
        self.timed("set_group_member", self.inner.set_group_member(group, user_key, member))
            .await
    }
    async fn session_join(&self, join: SessionJoin<'_>) -> Result<(), StoreError> {
        self.timed("session_join", self.inner.session_join(join)).await
    }
    async fn session_leave(&self, pid: &str, room: &RoomId, expires_at: i64) -> Result<(), StoreError> {
        self.timed("session_leave", self.inner.session_leave(pid, room, expires_at))
            .await
    }
    async fn session_touch(&self, pids: &[String], expires_at: i64) -> Result<(), StoreError> {
        self.timed("session_touch", self.inner.session_touch(pids, expires_at))
            .await
    }
    async fn session(&self, pid: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
        self.timed("session", self.inner.session(pid, now)).await
    }
    async fn expire_sessions(&self, now: i64) -> Result<u64, StoreError> {
        self.timed("expire_sessions", self.inner.expire_sessions(now)).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}
