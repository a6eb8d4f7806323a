//! The embedded store: one SQLite file in WAL mode. `synchronous=FULL` so a
//! message acked to a client survives a crash of the process or the machine.
//!
//! Appends go through one writer task that commits whatever is queued as one
//! transaction (group commit): one fsync serves many messages, and each caller
//! still hears back only after its message is on disk. SQLite allows one
//! writer at a time anyway, so ids follow commit order.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    QueryBuilder, Sqlite, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, NewMessage, Page, PageQuery, Store, StoreError, sql};
use crate::domain::RoomId;

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

/// One transaction for the whole batch, in two statements whatever its size
/// (one multi-row `INSERT … ON CONFLICT DO NOTHING`, then the commit), plus
/// one indexed lookup per idempotent retry. Per-statement costs (a hand-off to
/// sqlx's SQLite thread each) dominated when every message was its own statement.
async fn write_batch(pool: &SqlitePool, messages: &[&NewMessage]) -> Result<Vec<Appended>, StoreError> {
    let mut tx = pool.begin().await?;
    let ids = insert_all(&mut tx, messages).await?;
    let mut out = Vec::with_capacity(messages.len());
    for (m, id) in messages.iter().zip(ids) {
        let appended = match id {
            Some(id) => Appended {
                message: m.stored(id),
                created: true,
            },
            // Only the idempotency index can conflict: answer with the stored original.
            None => {
                let row = sqlx::query(sql::BY_KEY)
                    .bind(m.room.as_str())
                    .bind(m.sender.user.key())
                    .bind(&m.client_id)
                    .fetch_one(&mut *tx)
                    .await?;
                Appended {
                    message: sql::message(&row)?,
                    created: false,
                }
            }
        };
        out.push(appended);
    }
    tx.commit().await?;
    Ok(out)
}

/// Inserts the messages in one statement, skipping those whose idempotency key
/// is already stored (earlier, or earlier in this batch); each message's new
/// id, or `None` when it was skipped.
async fn insert_all(conn: &mut SqliteConnection, messages: &[&NewMessage]) -> Result<Vec<Option<i64>>, StoreError> {
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
    query.push(" ON CONFLICT DO NOTHING RETURNING id, room_id, user_key, client_id");
    let mut rows: Vec<(i64, String, String, Option<String>)> = query.build_query_as().fetch_all(&mut *conn).await?;
    // RETURNING comes in no promised order, but SQLite inserts rows in VALUES
    // order and AUTOINCREMENT gives this, the only writer, rising ids: sorted
    // by id, the rows are the inserted messages in order. A skipped message
    // can't match the next row: that row's key would then be stored twice.
    rows.sort_unstable_by_key(|r| r.0);
    let mut rows = rows.into_iter().peekable();
    let ids: Vec<Option<i64>> = messages
        .iter()
        .map(|m| {
            rows.next_if(|(_, room, user, client)| {
                room == m.room.as_str() && user == m.sender.user.key() && *client == m.client_id
            })
            .map(|(id, ..)| id)
        })
        .collect();
    if rows.next().is_some() {
        return Err(StoreError::Corrupt(
            "inserted rows do not line up with the batch".into(),
        ));
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
