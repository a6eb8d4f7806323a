//! The production store: Postgres through a connection pool. Appends to one
//! room are serialized with a transaction-scoped advisory lock, so within a
//! room ids follow commit order and `since` recovery never skips a message.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{Appended, NewMessage, Page, PageQuery, Store, StoreError, sql};
use crate::domain::RoomId;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let user_json = m.sender.user.json().to_string();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(m.room.as_str())
            .execute(&mut *tx)
            .await?;
        let inserted = sql::bind_insert(sqlx::query(sql::INSERT), &m, user_json)
            .fetch_optional(&mut *tx)
            .await?;
        let appended = match inserted {
            Some(row) => Appended {
                message: sql::message(&row)?,
                created: true,
            },
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
        tx.commit().await?;
        Ok(appended)
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
