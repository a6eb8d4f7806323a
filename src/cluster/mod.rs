//! Many nodes sharing one Redis: the connection, the key layout, and this
//! node's heartbeat. Events between nodes ride on [`PubSub`] (the broadcaster's
//! own channel, and socketioxide-redis for acting on sockets, wired in
//! `startup`); this module owns the cluster's *state*: who is present where
//! ([`RedisPresence`]), who is typing ([`SharedTyping`]) and the shared
//! per-user rate budget ([`SharedLimit`]).
//!
//! Every node writes a heartbeat into a sorted set; any node that sees another
//! silent past the node timeout removes that node's presence entries in one
//! atomic script and announces its users offline. Scripts read Redis' own
//! clock (`TIME`), so clock skew between nodes doesn't matter.
//!
//! Scripts build keys from the prefix they are given, so this needs a single
//! Redis (or a primary with replicas), not Redis Cluster.

mod presence;
mod pubsub;
mod ratelimit;
mod scripts;
mod typing;

use std::time::Duration;

use redis::aio::ConnectionManager;

pub use presence::RedisPresence;
pub use pubsub::PubSub;
pub use ratelimit::SharedLimit;
pub use typing::SharedTyping;

use crate::config::ClusterSettings;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis answered something unexpected: {0}")]
    Unexpected(String),
}

/// A handle on the cluster's Redis; cheap to clone (one multiplexed,
/// self-reconnecting connection underneath).
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    node: String,
    node_timeout: Duration,
}

impl Redis {
    /// Connects, and fails when Redis doesn't answer: a node must not start
    /// believing it is alone.
    pub async fn connect(settings: &ClusterSettings) -> Result<Self, ClusterError> {
        let client = redis::Client::open(settings.redis_url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        let redis = Self {
            client,
            conn,
            prefix: settings.prefix.clone(),
            node: new_node_id(),
            node_timeout: settings.node_timeout,
        };
        redis.ping().await?;
        Ok(redis)
    }

    /// The client the Socket.IO adapter opens its own pub/sub connection with.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// This node's id in Redis (random per process start).
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    pub async fn ping(&self) -> Result<(), ClusterError> {
        let pong: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(ClusterError::Unexpected(pong))
        }
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

fn new_node_id() -> String {
    use rand::Rng;
    let bytes: [u8; 8] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
