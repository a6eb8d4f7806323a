//! The embedded store: one SQLite file in WAL mode. `synchronous=FULL` so a
//! message acked to a client survives a crash of the process or the machine.
//!
//! Appends go through one writer (group commit): a thread of its own, with its
//! own connection, stores whatever is queued in one statement, so one fsync
//! serves many messages and each caller still hears back only after its
//! message is on disk. SQLite allows one writer at a time anyway, so ids
//! follow commit order. Reads go through a pool of other connections.
//!
//! Why a thread and a connection of its own: on the shared runtime every
//! wake-up of the writer waited behind thousands of socket tasks, and a pooled
//! connection lost its page cache whenever another connection had written, so
//! almost every batch re-read its index pages first.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    ConnectOptions, Connection, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::mpsc;

use super::{
    Appended, NewMessage, Page, PageQuery, SessionJoin, SessionRecord, Store, StoreError, sql,
    writer::{self, Batches, Inserted, Job, MAX_BATCH},
};
use crate::domain::RoomId;

/// Stores a whole batch, bound as one JSON array of rows
/// ([`writer::BatchRow`]), in one statement: its text never changes, so
/// SQLite prepares it once, and outside a transaction it commits by itself.
/// Rows come back without the ones whose idempotency key was taken;
/// `ORDER BY key` makes ids follow the array's order.
const INSERT_BATCH: &str = concat!(
    "INSERT INTO messages ",
    sql::insert_columns!(),
    " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
            value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11 \
     FROM json_each($1) WHERE true ORDER BY key \
     ON CONFLICT DO NOTHING RETURNING id, room_id, user_key, client_id"
);

/// Writer pages (32 MiB): the hot ends of the indexes stay in memory.
const WRITER_CACHE_KIB: i64 = 32 * 1024;
/// Pages in the WAL before it is copied back: less often than SQLite's 1,000,
/// since a hot index page is copied once per checkpoint however often it changed.
const WRITER_AUTOCHECKPOINT: u32 = 4_000;

pub struct SqliteStore {
    shared: sql::Shared<sqlx::Sqlite>,
    writer: mpsc::Sender<Job>,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let Some(path) = crate::config::sqlite_path(url) else {
            // Each connection would get a database of its own.
            return Err(StoreError::Database(sqlx::Error::Configuration(
                "an in-memory SQLite database cannot be shared by the writer and the readers: name a file".into(),
            )));
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;

        let conn = options
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
            .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT.to_string())
            .connect()
            .await?;
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || runtime.block_on(writer::write_loop(Writer { conn }, queue)))
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        Ok(Self {
            shared: sql::Shared { pool },
            writer,
        })
    }
}

/// The writer's side of the store: its own connection.
struct Writer {
    conn: SqliteConnection,
}

impl Batches for Writer {
    async fn insert_batch(&mut self, _: &[&NewMessage], rows: &str) -> Result<Vec<Inserted>, StoreError> {
        let rows = sqlx::query(INSERT_BATCH).bind(rows).fetch_all(&mut self.conn).await?;
        Ok(rows.iter().map(Inserted::read).collect::<Result<_, _>>()?)
    }

    async fn append_one(&mut self, m: &NewMessage) -> Result<Appended, StoreError> {
        let user_json = m.sender.user.json().to_string();
        let inserted = sql::bind_insert(sqlx::query(sql::INSERT), m, user_json)
            .fetch_optional(&mut self.conn)
            .await?;
        match inserted {
            Some(row) => Ok(Appended {
                message: sql::message(&row)?,
                created: true,
            }),
            None => self.by_key(m).await,
        }
    }

    async fn by_key(&mut self, m: &NewMessage) -> Result<Appended, StoreError> {
        sql::by_key(&mut self.conn, m).await
    }

    async fn close(self) {
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the SQLite writer's connection");
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        writer::submit(&self.writer, m).await
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

    /// Lets the writer finish what is queued, then closes every connection.
    async fn close(&self) {
        writer::close(&self.writer).await;
        self.shared.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_one_statement_that_skips_taken_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let store = SqliteStore::open(&url).await.expect("opens");
        let conn = SqliteConnectOptions::from_str(&url)
            .expect("url")
            .connect()
            .await
            .expect("connects");
        writer::tests::a_batch_skips_taken_keys(&mut Writer { conn }).await;
        store.close().await;
    }
}
