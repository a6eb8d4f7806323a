//! The embedded store: one SQLite file in WAL mode. `synchronous=FULL` so a
//! message acked to a client survives a crash of the process or the machine.
//!
//! Appends go through one writer (group commit): a thread of its own, with its
//! own connection, stores whatever is queued in one transaction, so one fsync
//! serves many messages and each caller still hears back only after its
//! message is on disk. SQLite allows one writer at a time anyway, so ids
//! follow commit order. Reads (and the rare writes of sessions and groups) go
//! through sqlx's pool of other connections, which WAL lets run alongside.
//!
//! Why a thread and a connection of its own: on the shared runtime every
//! wake-up of the writer waited behind thousands of socket tasks, and a pooled
//! connection lost its page cache whenever another connection had written, so
//! almost every batch re-read its index pages first. Why rusqlite there
//! rather than sqlx: a sqlx connection runs on a worker thread of its own, so
//! every statement was a round trip between two threads (most of the writer's
//! cost was those wake-ups); rusqlite runs the statements on the writer's own
//! thread, each prepared once, and a row is bound straight from the message
//! instead of through a JSON array. Both link the same libsqlite3-sys.

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use rusqlite::{OpenFlags, OptionalExtension, TransactionBehavior, params};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::mpsc;

use super::{
    Appended, NewMessage, Page, PageQuery, SessionJoin, SessionRecord, Store, StoreError, sql,
    writer::{self, Batches, Inserted, Job, MAX_BATCH},
};
use crate::domain::{MessageKind, RoomId, StoredMessage};

/// Stores one message unless its idempotency key is taken; returns its id
/// when it was stored. A batch runs it once per message inside one
/// transaction, so ids follow the batch's order.
const INSERT_ONE: &str = concat!(
    "INSERT INTO messages ",
    sql::insert_columns!(),
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT DO NOTHING RETURNING id"
);

/// Writer pages (32 MiB): the hot ends of the indexes stay in memory.
const WRITER_CACHE_KIB: i64 = 32 * 1024;
/// Pages in the WAL before it is copied back: less often than SQLite's 1,000,
/// since a hot index page is copied once per checkpoint however often it changed.
const WRITER_AUTOCHECKPOINT: u32 = 4_000;
/// How long the writer waits for a pooled connection's write (sessions, groups).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;

        let conn = writer_connection(&path)?;
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        // The thread only waits for the queue and then runs SQLite itself: a
        // current-thread runtime is just what `write_loop` needs to wait on.
        let runtime = tokio::runtime::Builder::new_current_thread()
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

/// Opens the writer's connection to the (migrated) database at `path`.
fn writer_connection(path: &Path) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL is a property of the file (the pool set it); synchronous is not:
    // FULL fsyncs the WAL at every commit, so an acked message is on disk.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(8);
    Ok(conn)
}

/// The writer's side of the store: its own connection, used on its own thread.
struct Writer {
    conn: rusqlite::Connection,
}

impl Writer {
    /// The id `m` was stored under, or `None` when its key was taken.
    fn insert(conn: &rusqlite::Connection, m: &NewMessage) -> rusqlite::Result<Option<i64>> {
        let mut insert = conn.prepare_cached(INSERT_ONE)?;
        insert
            .query_row(
                params![
                    m.room.as_str(),
                    m.sender.user.key(),
                    m.sender.user.json().to_string(),
                    m.sender.profile.username,
                    m.sender.profile.full_name,
                    m.sender.profile.avatar,
                    m.client_id,
                    m.text,
                    m.kind.as_str(),
                    m.media,
                    m.audio,
                    m.timestamp,
                ],
                |row| row.get(0),
            )
            .optional()
    }

    fn insert_all(&mut self, batch: &[&NewMessage]) -> Result<Vec<Inserted>, StoreError> {
        // IMMEDIATE: take the write lock up front (waiting out a pooled
        // connection's write) rather than fail part-way through the batch.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = Vec::with_capacity(batch.len());
        for m in batch {
            if let Some(id) = Self::insert(&tx, m)? {
                inserted.push(Inserted {
                    id,
                    room: m.room.as_str().to_owned(),
                    user_key: m.sender.user.key().to_owned(),
                    client_id: m.client_id.clone(),
                });
            }
        }
        // On any error before this, dropping `tx` rolls the whole batch back.
        tx.commit()?;
        Ok(inserted)
    }

    fn stored_by_key(&self, m: &NewMessage) -> Result<Appended, StoreError> {
        let mut by_key = self.conn.prepare_cached(sql::BY_KEY)?;
        let message = by_key.query_row(params![m.room.as_str(), m.sender.user.key(), m.client_id], |row| {
            Ok(read_message(row))
        })??;
        Ok(Appended {
            message,
            created: false,
        })
    }
}

impl Batches for Writer {
    async fn insert_batch(&mut self, batch: &[&NewMessage]) -> Result<Vec<Inserted>, StoreError> {
        self.insert_all(batch)
    }

    async fn append_one(&mut self, m: &NewMessage) -> Result<Appended, StoreError> {
        match Self::insert(&self.conn, m)? {
            Some(id) => Ok(Appended {
                message: writer::stored(m.clone(), id),
                created: true,
            }),
            None => self.stored_by_key(m),
        }
    }

    async fn by_key(&mut self, m: &NewMessage) -> Result<Appended, StoreError> {
        self.stored_by_key(m)
    }

    async fn close(self) {
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the SQLite writer's connection");
        }
    }
}

/// Reads a message row (the columns of [`sql::BY_KEY`], in order) back.
fn read_message(row: &rusqlite::Row<'_>) -> Result<StoredMessage, StoreError> {
    let user_json: String = row.get(2)?;
    let kind: String = row.get(8)?;
    Ok(StoredMessage {
        id: row.get(0)?,
        room_id: row.get(1)?,
        user_id: serde_json::from_str(&user_json)
            .map_err(|e| StoreError::Corrupt(format!("user_json {user_json:?}: {e}")))?,
        username: row.get(3)?,
        full_name: row.get(4)?,
        avatar: row.get(5)?,
        client_id: row.get(6)?,
        message: row.get(7)?,
        kind: MessageKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind:?}")))?,
        media: row.get(9)?,
        audio: row.get(10)?,
        timestamp: row.get(11)?,
    })
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

    async fn open() -> (tempfile::TempDir, SqliteStore, Writer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let store = SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .expect("opens");
        let conn = writer_connection(&path).expect("connects");
        (dir, store, Writer { conn })
    }

    #[tokio::test]
    async fn a_batch_is_one_transaction_that_skips_taken_keys() {
        let (_dir, store, mut writer) = open().await;
        writer::tests::a_batch_skips_taken_keys(&mut writer).await;
        store.close().await;
    }

    /// A batch whose commit fails stores nothing, so the one-by-one fallback
    /// never stores a message twice.
    #[tokio::test]
    async fn a_failed_batch_stores_nothing() {
        let (dir, store, mut writer) = open().await;
        let batch = [
            writer::tests::message("lobby", "1", Some("a")),
            writer::tests::message("lobby", "1", Some("b")),
        ];
        let refs: Vec<&NewMessage> = batch.iter().collect();
        // Another connection holds the write lock past the writer's patience.
        writer.conn.busy_timeout(Duration::from_millis(10)).expect("sets");
        let blocker = writer_connection(&store_path(&dir)).expect("connects");
        blocker.execute_batch("BEGIN IMMEDIATE").expect("locks");
        assert!(writer.insert_batch(&refs).await.is_err());
        blocker.execute_batch("ROLLBACK").expect("unlocks");
        let stored = writer.insert_batch(&refs).await.expect("stores");
        assert_eq!(stored.len(), 2, "nothing of the failed batch was stored");
        let again = writer.append_one(&batch[0]).await.expect("answers");
        assert!(!again.created);
        assert_eq!(again.message.id, stored[0].id);
        assert_eq!(again.message.client_id.as_deref(), Some("a"));
        store.close().await;
    }

    fn store_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("db.sqlite")
    }
}
