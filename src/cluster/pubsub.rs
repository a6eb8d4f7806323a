//! The pub/sub transport under the Socket.IO Redis adapter. socketioxide-redis
//! ships a driver on a plain multiplexed connection, which stays broken after
//! Redis restarts; this one rides a [`ConnectionManager`] that reconnects and
//! subscribes again to every channel, so broadcasts between nodes resume by
//! themselves once Redis is back.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use redis::{AsyncCommands, PushInfo, PushKind, aio::ConnectionManager};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

#[derive(Clone)]
pub struct PubSub {
    conn: ConnectionManager,
    handlers: Handlers,
}

impl PubSub {
    /// `lost` counts messages from other nodes dropped because their stream was full.
    pub async fn connect(client: &redis::Client, lost: Counter) -> Result<Self, redis::RedisError> {
        let handlers: Handlers = Arc::default();
        let routes = handlers.clone();
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2))
            .set_automatic_resubscription()
            .set_push_sender(move |push: PushInfo| {
                route(push, &routes, &lost);
                Ok::<(), redis::aio::SendError>(())
            });
        let conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        Ok(Self { conn, handlers })
    }
}

/// Hands a pushed message to the stream subscribed to its channel. Never
/// blocks the connection: a full stream loses the message (and counts it).
fn route(push: PushInfo, handlers: &Handlers, lost: &Counter) {
    if !matches!(push.kind, PushKind::Message) {
        return;
    }
    let mut data = push.data.into_iter();
    let (Some(chan), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(chan), Ok(payload)) = (
        redis::from_redis_value::<String>(chan),
        redis::from_redis_value::<Vec<u8>>(payload),
    ) else {
        tracing::warn!("unreadable pub/sub message");
        return;
    };
    let handlers = handlers.read().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = handlers.get(&chan)
        && let Err(e) = tx.try_send((chan, payload))
    {
        lost.inc();
        tracing::error!(error = %e, "cluster message stream full: a message from another node was lost");
    }
}

impl Driver for PubSub {
    type Error = redis::RedisError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        self.conn.clone().publish::<_, _, redis::Value>(chan, val).await?;
        Ok(())
    }

    async fn subscribe(&self, chan: String, size: usize) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        self.handlers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chan.clone(), tx);
        self.conn.clone().subscribe(chan.as_str()).await?;
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers.write().unwrap_or_else(|p| p.into_inner()).remove(&chan);
        self.conn.clone().unsubscribe(chan).await?;
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let (_, count): (String, u16) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(chan)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(count)
    }
}
