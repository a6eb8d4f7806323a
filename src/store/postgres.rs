//! The production store: Postgres through a connection pool. Appends to one
//! room are serialized with a transaction-scoped advisory lock, so within a
//! room ids follow commit order and `since` recovery never skips a message.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;

use super::{Appended, NewMessage, Page, PageQuery, Store, StoreError, sql};
use crate::domain::RoomId;

pub struct PostgresStore {
    shared: sql::Shared<sqlx::Postgres>,
}

impl PostgresStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            shared: sql::Shared { pool },
        })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let user_json = m.sender.user.json().to_string();
        let mut tx = self.shared.pool.begin().await?;
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
