//! The production store: Postgres through a connection pool. Appends to one
//! room are serialized with a transaction-scoped advisory lock, so within a
//! room ids follow commit order and `since` recovery never skips a message,
//! however many nodes append to it.
//!
//! Appends go through writers (group commit, [`super::writer`]): each stores
//! whatever is queued for it in one transaction. Rooms are spread over the
//! writers by hash, so one room's messages keep the order they were queued
//! in while other rooms commit alongside. A batch takes its rooms' locks in
//! one order (by lock key), so batches of different nodes never deadlock.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::sync::mpsc;

use super::{
    Appended, NewMessage, Page, PageQuery, SessionJoin, SessionRecord, Store, StoreError, sql,
    writer::{self, Batches, Inserted, Job, MAX_BATCH},
};
use crate::domain::RoomId;

/// Writers per node: enough to overlap round trips to the server, few enough
/// to leave the pool to reads.
const WRITERS: usize = 4;

/// The lock a room's appends take, the same for every node and version.
const LOCK_ROOM: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Locks every room of a batch, in the order of their lock keys.
const LOCK_ROOMS: &str = "SELECT pg_advisory_xact_lock(k) FROM \
     (SELECT DISTINCT hashtextextended(r, 0) AS k FROM unnest($1::text[]) AS r ORDER BY k) AS keys";

/// Stores a whole batch, bound as one array per column (a multi-row insert
/// whose text never changes, so it is prepared once per connection), in
/// array order; rows whose idempotency key was taken are skipped and not
/// returned.
const INSERT_BATCH: &str = concat!(
    "INSERT INTO messages ",
    sql::insert_columns!(),
    " SELECT room_id, user_key, user_json, username, full_name, avatar, \
            client_id, body, kind, media, audio, created_at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[]) \
          WITH ORDINALITY AS t(room_id, user_key, user_json, username, full_name, avatar, \
                               client_id, body, kind, media, audio, created_at, n) \
     ORDER BY n \
     ON CONFLICT DO NOTHING RETURNING id, room_id, user_key, client_id"
);

pub struct PostgresStore {
    shared: sql::Shared<sqlx::Postgres>,
    writers: Vec<mpsc::Sender<Job>>,
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let writers = (0..WRITERS)
            .map(|_| {
                let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
                tokio::spawn(writer::write_loop(Writer { pool: pool.clone() }, queue));
                writer
            })
            .collect();
        Ok(Self {
            shared: sql::Shared { pool },
            writers,
        })
    }

    fn writer_of(&self, room: &RoomId) -> &mpsc::Sender<Job> {
        &self.writers[room.shard(self.writers.len())]
    }
}

/// A writer's side of the store: it takes a pooled connection per batch.
struct Writer {
    pool: PgPool,
}

impl Batches for Writer {
    async fn insert_batch(&mut self, batch: &[&NewMessage]) -> Result<Vec<Inserted>, StoreError> {
        let rooms: Vec<&str> = batch.iter().map(|m| m.room.as_str()).collect();
        let column = |f: fn(&NewMessage) -> Option<&str>| batch.iter().map(|m| f(m)).collect::<Vec<_>>();
        let user_json: Vec<String> = batch.iter().map(|m| m.sender.user.json().to_string()).collect();
        let query = sqlx::query(INSERT_BATCH)
            .bind(&rooms)
            .bind(batch.iter().map(|m| m.sender.user.key()).collect::<Vec<_>>())
            .bind(&user_json)
            .bind(column(|m| m.sender.profile.username.as_deref()))
            .bind(column(|m| m.sender.profile.full_name.as_deref()))
            .bind(column(|m| m.sender.profile.avatar.as_deref()))
            .bind(column(|m| m.client_id.as_deref()))
            .bind(batch.iter().map(|m| m.text.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>())
            .bind(column(|m| m.media.as_deref()))
            .bind(column(|m| m.audio.as_deref()))
            .bind(batch.iter().map(|m| m.timestamp).collect::<Vec<_>>());
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_ROOMS).bind(&rooms).execute(&mut *tx).await?;
        let rows = query.fetch_all(&mut *tx).await?;
        let inserted = rows.iter().map(Inserted::read).collect::<Result<_, _>>()?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn append_one(&mut self, m: &NewMessage) -> Result<Appended, StoreError> {
        let user_json = m.sender.user.json().to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_ROOM).bind(m.room.as_str()).execute(&mut *tx).await?;
        let inserted = sql::bind_insert(sqlx::query(sql::INSERT), m, user_json)
            .fetch_optional(&mut *tx)
            .await?;
        let appended = match inserted {
            Some(row) => Appended {
                message: sql::message(&row)?,
                created: true,
            },
            None => sql::by_key(&mut *tx, m).await?,
        };
        tx.commit().await?;
        Ok(appended)
    }

    async fn by_key(&mut self, m: &NewMessage) -> Result<Appended, StoreError> {
        sql::by_key(&self.pool, m).await
    }

    async fn close(self) {}
}

#[async_trait]
impl Store for PostgresStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        writer::submit(self.writer_of(&m.room), m).await
    }

    async fn page(&self, room: &RoomId, q: PageQuery) -> Result<Page, StoreError> {
        self.shared.page(room, q).await
    }

    async fn is_group_member(&self, group: &str, user_key: &str) -> Result<bool, StoreError> {
        self.shared.is_group_member(group, user_key).await
    }

    async fn set_group_member(&self, group: &str, user_key: &str, member: bool) -> Result<bool, StoreError> {
        self.shared.set_group_member(group, user_key, member).await
    }

    async fn session_join(&self, join: SessionJoin<'_>) -> Result<(), StoreError> {
        self.shared.session_join(&join).await
    }

    async fn session_leave(&self, pid: &str, room: &RoomId, expires_at: i64) -> Result<(), StoreError> {
        self.shared.session_leave(pid, room, expires_at).await
    }

    async fn session_touch(&self, pids: &[String], expires_at: i64) -> Result<(), StoreError> {
        self.shared.session_touch(pids, expires_at).await
    }

    async fn session(&self, pid: &str, now: i64) -> Result<Option<SessionRecord>, StoreError> {
        self.shared.session(pid, now).await
    }

    async fn expire_sessions(&self, now: i64) -> Result<u64, StoreError> {
        self.shared.expire_sessions(now).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.shared.ping().await
    }

    /// Lets every writer finish what is queued, then closes the pool.
    async fn close(&self) {
        for writer in &self.writers {
            writer::close(writer).await;
        }
        self.shared.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against `SWITCHBOARD_TEST_POSTGRES` (skipped without it), in a
    /// database of its own.
    #[tokio::test]
    async fn a_batch_is_one_statement_that_skips_taken_keys() {
        let Some(url) = crate::store::tests::fresh_postgres().await else {
            return;
        };
        let store = PostgresStore::open(&url).await.expect("opens");
        let pool = PgPool::connect(&url).await.expect("connects");
        writer::tests::a_batch_skips_taken_keys(&mut Writer { pool }).await;
        store.close().await;
    }
}
