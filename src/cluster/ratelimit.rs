//! The per-user rate budget shared by every node (GCRA in one Redis script),
//! so a user spreading sockets over nodes gets no more than on one.

use super::{ClusterError, Redis, scripts};

pub struct SharedLimit {
    redis: Redis,
    /// Milliseconds one event costs.
    interval_ms: f64,
    burst: u32,
}

impl SharedLimit {
    pub fn new(redis: Redis, per_second: u32, burst: u32) -> Self {
        Self {
            redis,
            interval_ms: 1000.0 / f64::from(per_second.max(1)),
            burst: burst.max(1),
        }
    }

    pub async fn check(&self, user_key: &str) -> Result<bool, ClusterError> {
        let allowed: i64 = scripts::RATE
            .key(format!("{}:rate:{user_key}", self.redis.prefix()))
            .arg(self.interval_ms)
            .arg(self.burst)
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok(allowed == 1)
    }
}
