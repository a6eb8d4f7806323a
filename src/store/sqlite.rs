//! The embedded store: one SQLite file in WAL mode. `synchronous=FULL` so a
//! message acked to a client survives a crash of the process or the machine.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Appended, NewMessage, Page, PageQuery, Store, StoreError, sql};
use crate::domain::RoomId;

pub struct SqliteStore {
    pool: SqlitePool,
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
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        // SQLite has one writer at a time, so ids are assigned in commit order.
        let user_json = m.sender.user.json().to_string();
        let inserted = sql::bind_insert(sqlx::query(sql::INSERT), &m, user_json)
            .fetch_optional(&self.pool)
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
            .fetch_one(&self.pool)
            .await?;
        Ok(Appended {
            message: sql::message(&row)?,
            created: false,
        })
    }

    async fn page(&self, room: &RoomId, q: PageQuery) -> Result<Page, StoreError> {
        let statement = if q.after.is_some() {
            sql::PAGE_FORWARD
        } else {
            sql::PAGE_BACKWARD
        };
        let rows = sqlx::query(statement)
            .bind(room.as_str())
            .bind(q.after.unwrap_or(0))
            .bind(q.before.unwrap_or(i64::MAX))
            .bind(i64::from(q.limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        Page::from_rows(&rows, q, |r| sql::message(r))
    }

    async fn is_group_member(&self, group: &str, user_key: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(sql::IS_MEMBER)
            .bind(group)
            .bind(user_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn set_group_member(&self, group: &str, user_key: &str, member: bool) -> Result<bool, StoreError> {
        let query = if member {
            sqlx::query(sql::ADD_MEMBER)
                .bind(group)
                .bind(user_key)
                .bind(crate::clock::now_ms())
        } else {
            sqlx::query(sql::REMOVE_MEMBER).bind(group).bind(user_key)
        };
        Ok(query.execute(&self.pool).await?.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
