//! The embedded store: one SQLite file in WAL mode. `synchronous=FULL` so a
//! message acked to a client survives a crash of the process or the machine.
//!
//! Appends go through one writer task that commits whatever is queued as one
//! transaction (group commit): one fsync serves many messages, and each caller
//! still hears back only after its message is on disk. SQLite allows one
//! writer at a time anyway, so ids follow commit order.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use std::collections::HashMap;

use sqlx::{
    QueryBuilder, Row, Sqlite, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, NewMessage, Page, PageQuery, Store, StoreError, sql};
use crate::domain::{RoomId, StoredMessage};

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

pub struct SqliteStore {
    shared: sql::Shared<sqlx::Sqlite>,
    writer: mpsc::Sender<(NewMessage, Reply)>,
}

impl SqliteStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if let Some(path) = crate::config::sqlite_path(url)
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        {
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
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let (writer, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_loop(pool.clone(), queue));
        Ok(Self {
            shared: sql::Shared { pool },
            writer,
        })
    }
}

/// Commits queued appends in batches until the store is dropped.
async fn write_loop(pool: SqlitePool, mut queue: mpsc::Receiver<(NewMessage, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let messages: Vec<&NewMessage> = batch.iter().map(|(m, _)| m).collect();
        match write_batch(&pool, &messages).await {
            Ok(results) => {
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            // The batch rolled back: write each alone so one bad row fails only its own caller.
            Err(_) => {
                for (message, reply) in batch.drain(..) {
                    let _ = reply.send(write_batch(&pool, &[&message]).await.map(|mut r| r.remove(0)));
                }
            }
        }
    }
}

/// One transaction for the whole batch, in three statements whatever its size:
/// look up the idempotency keys already stored, insert every new message in
/// one multi-row `INSERT`, commit. Per-statement costs (a hand-off to sqlx's
/// SQLite thread each) dominated when every message was its own statement.
async fn write_batch(pool: &SqlitePool, messages: &[&NewMessage]) -> Result<Vec<Appended>, StoreError> {
    let mut tx = pool.begin().await?;
    let stored = stored_originals(&mut tx, messages).await?;

    // What each message becomes: a stored original, or a row of the insert.
    // A key seen earlier in the same batch points at that earlier message.
    enum Slot {
        Original(StoredMessage),
        Row(usize),
        SameAs(usize),
    }
    let mut first_of: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut fresh: Vec<&NewMessage> = Vec::with_capacity(messages.len());
    let mut slots = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let slot = match m.key() {
            Some(key) if stored.contains_key(&key) => Slot::Original(stored[&key].clone()),
            Some(key) => match first_of.get(&key) {
                Some(&earlier) => Slot::SameAs(earlier),
                None => {
                    first_of.insert(key, i);
                    fresh.push(m);
                    Slot::Row(fresh.len() - 1)
                }
            },
            None => {
                fresh.push(m);
                Slot::Row(fresh.len() - 1)
            }
        };
        slots.push(slot);
    }

    let ids = insert_all(&mut tx, &fresh).await?;
    tx.commit().await?;

    let mut out: Vec<Appended> = Vec::with_capacity(messages.len());
    for slot in slots {
        let appended = match slot {
            Slot::Original(message) => Appended {
                message,
                created: false,
            },
            Slot::Row(row) => Appended {
                message: fresh[row].stored(ids[row]),
                created: true,
            },
            Slot::SameAs(earlier) => Appended {
                message: out[earlier].message.clone(),
                created: false,
            },
        };
        out.push(appended);
    }
    Ok(out)
}

/// The stored originals of the batch's idempotency keys that are already in the table.
async fn stored_originals<'m>(
    conn: &mut SqliteConnection,
    messages: &[&'m NewMessage],
) -> Result<HashMap<(&'m str, &'m str, &'m str), StoredMessage>, StoreError> {
    let keys: Vec<(&str, &str, &str)> = messages.iter().filter_map(|m| m.key()).collect();
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let mut query = QueryBuilder::<Sqlite>::new(sql::SELECT_BY_KEYS);
    query.push_values(&keys, |mut row, (room, user, client)| {
        row.push_bind(*room).push_bind(*user).push_bind(*client);
    });
    query.push(")");
    for row in query.build().fetch_all(&mut *conn).await? {
        let message = sql::message(&row)?;
        let user_key: String = row.try_get("user_key")?;
        if let Some(key) = keys.iter().find(|(room, user, client)| {
            *room == message.room_id && *user == user_key && Some(*client) == message.client_id.as_deref()
        }) {
            found.insert(*key, message);
        }
    }
    Ok(found)
}

/// Inserts every message in one statement; their ids, in the messages' order.
async fn insert_all(conn: &mut SqliteConnection, messages: &[&NewMessage]) -> Result<Vec<i64>, StoreError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::<Sqlite>::new(sql::INSERT_MANY);
    query.push_values(messages, |mut row, m| {
        row.push_bind(m.room.as_str())
            .push_bind(m.sender.user.key())
            .push_bind(m.sender.user.json().to_string())
            .push_bind(m.sender.profile.username.as_deref())
            .push_bind(m.sender.profile.full_name.as_deref())
            .push_bind(m.sender.profile.avatar.as_deref())
            .push_bind(m.client_id.as_deref())
            .push_bind(m.text.as_str())
            .push_bind(m.kind.as_str())
            .push_bind(m.media.as_deref())
            .push_bind(m.audio.as_deref())
            .push_bind(m.timestamp);
    });
    query.push(" RETURNING id");
    let mut ids: Vec<i64> = query.build_query_scalar().fetch_all(&mut *conn).await?;
    // RETURNING comes in no promised order, but SQLite inserts the rows in
    // VALUES order and AUTOINCREMENT hands this, the only writer, rising ids:
    // sorted, they line up with the messages.
    ids.sort_unstable();
    if ids.len() != messages.len() {
        return Err(StoreError::Corrupt(format!(
            "inserted {} rows for {} messages",
            ids.len(),
            messages.len()
        )));
    }
    Ok(ids)
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Database(sqlx::Error::PoolClosed);
        self.writer.send((m, reply)).await.map_err(|_| closed())?;
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

    async fn close(&self) {
        self.shared.pool.close().await;
    }
}
