//! Typing state shared by every node: one Redis key per (room, user) holding
//! the generation of the latest `typing: true`, so any node's stop or refresh
//! wins and only the latest start's timer announces the lapse.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use super::{ClusterError, Redis, scripts};
use crate::domain::RoomId;

pub struct SharedTyping {
    redis: Redis,
    /// Keys outlive the typing window a little, then Redis forgets them by itself.
    ttl: Duration,
    next: AtomicU64,
}

impl SharedTyping {
    pub fn new(redis: Redis, timeout: Duration) -> Self {
        Self {
            redis,
            ttl: timeout * 2 + Duration::from_secs(1),
            next: AtomicU64::new(0),
        }
    }

    fn key(&self, room: &RoomId, user_key: &str) -> String {
        format!("{}:typing:{}:{user_key}", self.redis.prefix(), room.as_str())
    }

    pub async fn start(&self, room: &RoomId, user_key: &str) -> Result<String, ClusterError> {
        let generation = format!("{}:{}", self.redis.node(), self.next.fetch_add(1, Ordering::Relaxed));
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let () = redis::cmd("SET")
            .arg(self.key(room, user_key))
            .arg(&generation)
            .arg("PX")
            .arg(ttl)
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(generation)
    }

    pub async fn stop(&self, room: &RoomId, user_key: &str) -> Result<bool, ClusterError> {
        let removed: i64 = redis::cmd("DEL")
            .arg(self.key(room, user_key))
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(removed == 1)
    }

    pub async fn expire(&self, room: &RoomId, user_key: &str, generation: &str) -> Result<bool, ClusterError> {
        let removed: i64 = scripts::DELETE_IF
            .key(self.key(room, user_key))
            .arg(generation)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(removed == 1)
    }
}
