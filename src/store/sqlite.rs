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
    SqliteConnection,
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

async fn write_batch(pool: &SqlitePool, messages: &[&NewMessage]) -> Result<Vec<Appended>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        out.push(append_in(&mut tx, m).await?);
    }
    tx.commit().await?;
    Ok(out)
}

async fn append_in(conn: &mut SqliteConnection, m: &NewMessage) -> Result<Appended, StoreError> {
    let user_json = m.sender.user.json().to_string();
    let inserted = sql::bind_insert(sqlx::query(sql::INSERT), m, user_json)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = inserted {
        return Ok(Appended {
            message: sql::message(&row)?,
            created: true,
        });
    }
    // Only the idempotency index can conflict: return the stored original.
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
