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
use serde::Serialize;
use sqlx::{
    ConnectOptions, Connection, Row, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, NewMessage, Page, PageQuery, Store, StoreError, sql};
use crate::domain::{RoomId, StoredMessage};

/// Most messages stored by one statement.
const MAX_BATCH: usize = 512;

/// Stores a whole batch, bound as one JSON array of rows (see [`BatchRow`]), in
/// one statement: its text never changes, so SQLite prepares it once, and
/// outside a transaction it commits by itself. Rows come back without the
/// ones whose idempotency key was taken; `ORDER BY key` makes ids follow the
/// array's order, which [`match_ids`] relies on.
const INSERT_BATCH: &str = "INSERT INTO messages \
     (room_id, user_key, user_json, username, full_name, avatar, client_id, body, kind, media, audio, created_at) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
            value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11 \
     FROM json_each($1) WHERE true ORDER BY key \
     ON CONFLICT DO NOTHING RETURNING id, room_id, user_key, client_id";

/// Writer pages (32 MiB): the hot ends of the indexes stay in memory.
const WRITER_CACHE_KIB: i64 = 32 * 1024;
/// Pages in the WAL before it is copied back: less often than SQLite's 1,000,
/// since a hot index page is copied once per checkpoint however often it changed.
const WRITER_AUTOCHECKPOINT: u32 = 4_000;

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

// Nearly every job is an append: boxing it would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Job {
    Append(NewMessage, Reply),
    /// Everything queued before has been written: close the connection.
    Close(oneshot::Sender<()>),
}

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
            .spawn(move || runtime.block_on(write_loop(conn, queue)))
            .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        Ok(Self {
            shared: sql::Shared { pool },
            writer,
        })
    }
}

/// Stores queued appends in batches until the store is closed or dropped.
async fn write_loop(mut conn: SqliteConnection, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut batch: Vec<(NewMessage, Reply)> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let mut closing = None;
        for job in jobs.drain(..) {
            match job {
                Job::Append(m, reply) => batch.push((m, reply)),
                Job::Close(done) => closing = Some(done),
            }
        }
        if !batch.is_empty() {
            write(&mut conn, &mut batch).await;
        }
        if let Some(done) = closing {
            if let Err(e) = conn.close().await {
                tracing::warn!(error = %e, "closing the SQLite writer's connection");
            }
            let _ = done.send(());
            return;
        }
    }
}

/// Answers every caller of `batch` (and empties it).
async fn write(conn: &mut SqliteConnection, batch: &mut Vec<(NewMessage, Reply)>) {
    let rows: Vec<BatchRow<'_>> = batch.iter().map(|(m, _)| BatchRow::of(m)).collect();
    let inserted = match serde_json::to_string(&rows) {
        Ok(json) => insert_batch(conn, &json).await,
        Err(e) => Err(StoreError::Corrupt(format!("encoding a batch: {e}"))),
    };
    drop(rows);
    let inserted = match inserted {
        Ok(rows) => rows,
        // Nothing was stored: store each alone, so one bad row fails only its own caller.
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "batch insert failed: storing one by one");
            for (message, reply) in batch.drain(..) {
                let _ = reply.send(append_one(conn, &message).await);
            }
            return;
        }
    };
    // From here on the rows are committed: no error may lead back to a retry.
    let ids = match_ids(batch.iter().map(|(m, _)| m), &inserted);
    for ((message, reply), id) in batch.drain(..).zip(ids) {
        let result = match id {
            Some(id) => Ok(Appended {
                message: stored(message, id),
                created: true,
            }),
            None => by_key(conn, &message).await,
        };
        let _ = reply.send(result);
    }
}

/// One message as a row of the batch's JSON array, in [`INSERT_BATCH`]'s column order.
#[derive(Serialize)]
struct BatchRow<'a>(
    &'a str,
    &'a str,
    String,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    i64,
);

impl<'a> BatchRow<'a> {
    fn of(m: &'a NewMessage) -> Self {
        Self(
            m.room.as_str(),
            m.sender.user.key(),
            m.sender.user.json().to_string(),
            m.sender.profile.username.as_deref(),
            m.sender.profile.full_name.as_deref(),
            m.sender.profile.avatar.as_deref(),
            m.client_id.as_deref(),
            &m.text,
            m.kind.as_str(),
            m.media.as_deref(),
            m.audio.as_deref(),
            m.timestamp,
        )
    }
}

/// What [`INSERT_BATCH`] returns of each stored row.
#[derive(Debug, PartialEq)]
struct Inserted {
    id: i64,
    room: String,
    user_key: String,
    client_id: Option<String>,
}

async fn insert_batch(conn: &mut SqliteConnection, json: &str) -> Result<Vec<Inserted>, StoreError> {
    let rows = sqlx::query(INSERT_BATCH).bind(json).fetch_all(&mut *conn).await?;
    let mut out = rows
        .iter()
        .map(|r| {
            Ok(Inserted {
                id: r.try_get(0)?,
                room: r.try_get(1)?,
                user_key: r.try_get(2)?,
                client_id: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    // SQLite does not promise RETURNING's order; ids are the insertion order.
    out.sort_unstable_by_key(|r| r.id);
    Ok(out)
}

/// The id each message of the batch was stored under, or `None` where its
/// idempotency key was taken (earlier, or by an earlier message of the same
/// batch). The inserted rows, by id, are the batch in order less those, so
/// a message was stored exactly when it matches the next inserted row.
fn match_ids<'a>(batch: impl Iterator<Item = &'a NewMessage>, inserted: &[Inserted]) -> Vec<Option<i64>> {
    let mut next = inserted.iter().peekable();
    batch
        .map(|m| {
            let row = next.next_if(|r| {
                r.room == m.room.as_str() && r.user_key == m.sender.user.key() && r.client_id == m.client_id
            })?;
            Some(row.id)
        })
        .collect()
}

/// The message as stored: what the caller sent, under its new id.
fn stored(m: NewMessage, id: i64) -> StoredMessage {
    StoredMessage {
        id,
        room_id: m.room.as_str().to_owned(),
        user_id: m.sender.user.json().clone(),
        username: m.sender.profile.username,
        full_name: m.sender.profile.full_name,
        avatar: m.sender.profile.avatar,
        client_id: m.client_id,
        message: m.text,
        kind: m.kind,
        media: m.media,
        audio: m.audio,
        timestamp: m.timestamp,
    }
}

/// Stores one message by itself (the fallback when a batch fails).
async fn append_one(conn: &mut SqliteConnection, m: &NewMessage) -> Result<Appended, StoreError> {
    let user_json = m.sender.user.json().to_string();
    let inserted = sql::bind_insert(sqlx::query(sql::INSERT), m, user_json)
        .fetch_optional(&mut *conn)
        .await?;
    match inserted {
        Some(row) => Ok(Appended {
            message: sql::message(&row)?,
            created: true,
        }),
        None => by_key(conn, m).await,
    }
}

/// The stored original of a message whose idempotency key was taken.
async fn by_key(conn: &mut SqliteConnection, m: &NewMessage) -> Result<Appended, StoreError> {
    let row = sqlx::query(sql::BY_KEY)
        .bind(m.room.as_str())
        .bind(m.sender.user.key())
        .bind(&m.client_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Appended {
        message: sql::message(&row)?,
        created: false,
    })
}

fn closed() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer.send(Job::Append(m, reply)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.shared.ping().await
    }

    /// Lets the writer finish what is queued, then closes every connection.
    async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.writer.send(Job::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
        self.shared.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{Identity, MessageKind, Profile, UserId};

    fn message(room: &str, user: &str, client_id: Option<&str>) -> NewMessage {
        NewMessage {
            room: RoomId::parse(room).expect("room"),
            sender: Identity {
                user: UserId::from_json(&json!(user)).expect("id"),
                profile: Profile::default(),
                token: "t".into(),
            },
            client_id: client_id.map(str::to_owned),
            text: "hi".into(),
            kind: MessageKind::Message,
            media: None,
            audio: None,
            timestamp: 1,
        }
    }

    fn row(id: i64, room: &str, user: &str, client_id: Option<&str>) -> Inserted {
        Inserted {
            id,
            room: room.into(),
            user_key: user.into(),
            client_id: client_id.map(str::to_owned),
        }
    }

    #[test]
    fn ids_go_to_the_messages_that_were_stored() {
        let batch = [
            message("lobby", "1", None),
            message("lobby", "1", Some("a")), // taken before this batch
            message("lobby", "2", Some("a")),
            message("lobby", "2", Some("a")), // taken earlier in this batch
            message("lobby", "1", None),
            message("chat-1-2", "1", Some("a")),
        ];
        let inserted = [
            row(10, "lobby", "1", None),
            row(11, "lobby", "2", Some("a")),
            row(12, "lobby", "1", None),
            row(13, "chat-1-2", "1", Some("a")),
        ];
        assert_eq!(
            match_ids(batch.iter(), &inserted),
            [Some(10), None, Some(11), None, Some(12), Some(13)]
        );
    }

    /// The one-statement path itself, not the one-by-one fallback that would
    /// hide a broken statement behind correct but slow answers.
    #[tokio::test]
    async fn a_batch_is_one_statement_that_skips_taken_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/db.sqlite", dir.path().display());
        let store = SqliteStore::open(&url).await.expect("opens");
        let mut conn = SqliteConnectOptions::from_str(&url)
            .expect("url")
            .connect()
            .await
            .expect("connects");
        let batch = [
            message("lobby", "1", Some("a")),
            message("lobby", "1", Some("a")),
            message("lobby", "2", None),
        ];
        let rows: Vec<_> = batch.iter().map(BatchRow::of).collect();
        let json = serde_json::to_string(&rows).expect("encodes");
        let inserted = insert_batch(&mut conn, &json).await.expect("one statement");
        assert_eq!(inserted.len(), 2);
        assert!(inserted[0].id < inserted[1].id);
        assert_eq!(
            match_ids(batch.iter(), &inserted),
            [Some(inserted[0].id), None, Some(inserted[1].id)]
        );
        let again = insert_batch(&mut conn, &json).await.expect("one statement");
        assert_eq!(again.len(), 1, "only the keyless message is new");
        store.close().await;
    }

    #[test]
    fn nothing_inserted_means_every_key_was_taken() {
        let batch = [message("lobby", "1", Some("a")), message("lobby", "1", Some("b"))];
        assert_eq!(match_ids(batch.iter(), &[]), [None, None]);
    }
}
