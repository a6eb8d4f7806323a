//! The embedded store: one SQLite file in WAL mode. `synchronous=FULL` so a
//! message acked to a client survives a crash of the process or the machine.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Row,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
};

use super::{Appended, NewMessage, Page, PageQuery, Store, StoreError, user_json};
use crate::domain::{MessageKind, RoomId, StoredMessage};

const COLUMNS: &str =
    "id, room_id, user_json, username, full_name, avatar, client_id, body, kind, media, audio, created_at";

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

fn message(row: &SqliteRow) -> Result<StoredMessage, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(StoredMessage {
        id: row.try_get("id")?,
        room_id: row.try_get("room_id")?,
        user_id: user_json(&row.try_get::<String, _>("user_json")?)?,
        username: row.try_get("username")?,
        full_name: row.try_get("full_name")?,
        avatar: row.try_get("avatar")?,
        client_id: row.try_get("client_id")?,
        message: row.try_get("body")?,
        kind: MessageKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("kind {kind:?}")))?,
        media: row.try_get("media")?,
        audio: row.try_get("audio")?,
        timestamp: row.try_get("created_at")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, StoreError> {
        let user_json = m.sender.user.json().to_string();
        let inserted = sqlx::query(&format!(
            "INSERT INTO messages (room_id, user_key, user_json, username, full_name, avatar, client_id, body, kind, media, audio, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .bind(m.room.as_str())
        .bind(m.sender.user.key())
        .bind(&user_json)
        .bind(&m.sender.profile.username)
        .bind(&m.sender.profile.full_name)
        .bind(&m.sender.profile.avatar)
        .bind(&m.client_id)
        .bind(&m.text)
        .bind(m.kind.as_str())
        .bind(&m.media)
        .bind(&m.audio)
        .bind(m.timestamp)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok(Appended {
                message: message(&row)?,
                created: true,
            });
        }
        // Only the idempotency index can conflict: return the stored original.
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM messages WHERE room_id = ? AND user_key = ? AND client_id = ?"
        ))
        .bind(m.room.as_str())
        .bind(m.sender.user.key())
        .bind(&m.client_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Appended {
            message: message(&row)?,
            created: false,
        })
    }

    async fn page(&self, room: &RoomId, q: PageQuery) -> Result<Page, StoreError> {
        let limit = i64::from(q.limit);
        let after = q.after.unwrap_or(0);
        let before = q.before.unwrap_or(i64::MAX);
        let forward = q.after.is_some();
        let order = if forward { "ASC" } else { "DESC" };
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM messages WHERE room_id = ? AND id > ? AND id < ? ORDER BY id {order} LIMIT ?"
        ))
        .bind(room.as_str())
        .bind(after)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        let has_more = rows.len() as i64 > limit;
        let mut messages = rows
            .iter()
            .take(q.limit as usize)
            .map(message)
            .collect::<Result<Vec<_>, _>>()?;
        if !forward {
            messages.reverse();
        }
        Ok(Page { messages, has_more })
    }

    async fn is_group_member(&self, group: &str, user_key: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM group_members WHERE group_id = ? AND user_key = ?")
            .bind(group)
            .bind(user_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn set_group_member(&self, group: &str, user_key: &str, member: bool) -> Result<bool, StoreError> {
        let result = if member {
            sqlx::query(
                "INSERT INTO group_members (group_id, user_key, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(user_key)
            .bind(crate::clock::now_ms())
            .execute(&self.pool)
            .await?
        } else {
            sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_key = ?")
                .bind(group)
                .bind(user_key)
                .execute(&self.pool)
                .await?
        };
        Ok(result.rows_affected() > 0)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Identity, Profile, UserId};
    use serde_json::json;

    async fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}/nested/db.sqlite", dir.path().display());
        (SqliteStore::open(&url).await.expect("opens"), dir)
    }

    fn new(room: &str, user: serde_json::Value, client_id: Option<&str>, text: &str) -> NewMessage {
        NewMessage {
            room: RoomId::parse(room).expect("room"),
            sender: Identity {
                user: UserId::from_json(&user).expect("id"),
                profile: Profile::default(),
                token: "t".into(),
            },
            client_id: client_id.map(str::to_owned),
            text: text.into(),
            kind: MessageKind::Message,
            media: None,
            audio: None,
            timestamp: 1,
        }
    }

    #[tokio::test]
    async fn append_is_idempotent_per_room_sender_and_client_id() {
        let (s, _dir) = store().await;
        let first = s
            .append(new("lobby", json!(5), Some("c1"), "hi"))
            .await
            .expect("stored");
        assert!(first.created);
        let retry = s
            .append(new("lobby", json!("5"), Some("c1"), "changed"))
            .await
            .expect("stored");
        assert!(!retry.created);
        assert_eq!(retry.message, first.message);
        assert_eq!(retry.message.user_id, json!(5));
        let other_user = s
            .append(new("lobby", json!(6), Some("c1"), "hi"))
            .await
            .expect("stored");
        assert!(other_user.created);
        let other_room = s
            .append(new("room2", json!(5), Some("c1"), "hi"))
            .await
            .expect("stored");
        assert!(other_room.created);
        let no_id_1 = s.append(new("lobby", json!(5), None, "a")).await.expect("stored");
        let no_id_2 = s.append(new("lobby", json!(5), None, "a")).await.expect("stored");
        assert!(no_id_1.created && no_id_2.created);
        assert!(no_id_2.message.id > no_id_1.message.id);
    }

    #[tokio::test]
    async fn pages() {
        let (s, _dir) = store().await;
        let room = RoomId::parse("lobby").expect("room");
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(
                s.append(new("lobby", json!(1), None, &i.to_string()))
                    .await
                    .expect("stored")
                    .message
                    .id,
            );
            s.append(new("elsewhere", json!(1), None, "x")).await.expect("stored");
        }
        let q = |after, before, limit| PageQuery { after, before, limit };
        let texts = |p: &Page| {
            p.messages
                .iter()
                .map(|m| m.message.clone())
                .collect::<Vec<_>>()
                .join("")
        };

        let latest = s.page(&room, q(None, None, 3)).await.expect("page");
        assert_eq!((texts(&latest).as_str(), latest.has_more), ("789", true));
        let all = s.page(&room, q(None, None, 50)).await.expect("page");
        assert_eq!((texts(&all).as_str(), all.has_more), ("0123456789", false));
        let after = s.page(&room, q(Some(ids[2]), None, 3)).await.expect("page");
        assert_eq!((texts(&after).as_str(), after.has_more), ("345", true));
        let tail = s.page(&room, q(Some(ids[7]), None, 3)).await.expect("page");
        assert_eq!((texts(&tail).as_str(), tail.has_more), ("89", false));
        let before = s.page(&room, q(None, Some(ids[5]), 2)).await.expect("page");
        assert_eq!((texts(&before).as_str(), before.has_more), ("34", true));
        let between = s.page(&room, q(Some(ids[1]), Some(ids[4]), 10)).await.expect("page");
        assert_eq!((texts(&between).as_str(), between.has_more), ("23", false));
    }

    #[tokio::test]
    async fn group_membership() {
        let (s, _dir) = store().await;
        assert!(!s.is_group_member("7", "5").await.expect("reads"));
        assert!(s.set_group_member("7", "5", true).await.expect("writes"));
        assert!(!s.set_group_member("7", "5", true).await.expect("writes"));
        assert!(s.is_group_member("7", "5").await.expect("reads"));
        assert!(s.set_group_member("7", "5", false).await.expect("writes"));
        assert!(!s.is_group_member("7", "5").await.expect("reads"));
    }
}
