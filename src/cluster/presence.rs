//! Cluster-wide presence: the [`Presence`] registry kept in Redis, so a user's
//! sockets on every node count together for `members` and `user-online`.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use async_trait::async_trait;

use super::{Redis, scripts};
use crate::{
    chat::presence::{Joined, Left, Presence, PresenceError, RoomStats, Tick},
    domain::{Member, RoomId},
};

impl From<redis::RedisError> for PresenceError {
    fn from(e: redis::RedisError) -> Self {
        PresenceError(e.to_string())
    }
}

pub struct RedisPresence {
    redis: Redis,
    /// This node's sockets per room, for the `rooms` gauge without a round trip.
    local: Mutex<HashMap<RoomId, usize>>,
    /// Set once the first heartbeat is in; a later "not listed" means we were reaped.
    beating: std::sync::atomic::AtomicBool,
}

impl RedisPresence {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            local: Mutex::new(HashMap::new()),
            beating: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, usize>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn heartbeat(&self, score: Option<u64>) -> Result<(bool, usize), PresenceError> {
        let (added, live): (i64, i64) = scripts::HEARTBEAT
            .arg(self.redis.prefix())
            .arg(self.redis.node())
            .arg(score.map(|s| s.to_string()).unwrap_or_default())
            .invoke_async(&mut self.redis.conn())
            .await?;
        Ok((added == 1, usize::try_from(live).unwrap_or(0)))
    }
}

fn parse_member(json: &str) -> Result<Member, PresenceError> {
    serde_json::from_str(json)
        .ok()
        .and_then(Member::from_value)
        .ok_or_else(|| PresenceError(format!("unreadable member entry {json:?}")))
}

#[async_trait]
impl Presence for RedisPresence {
    async fn join(&self, room: &RoomId, member: &Member, socket: &str) -> Result<Joined, PresenceError> {
        let json = serde_json::to_string(member).map_err(|e| PresenceError(e.to_string()))?;
        let (outcome, occupied): (i64, i64) = scripts::JOIN
            .arg(self.redis.prefix())
            .arg(room.as_str())
            .arg(socket)
            .arg(self.redis.node())
            .arg(member.key())
            .arg(json)
            .invoke_async(&mut self.redis.conn())
            .await?;
        if outcome > 0 {
            *self.local().entry(room.clone()).or_default() += 1;
        }
        Ok(Joined {
            first: outcome == 2,
            occupied: occupied == 1,
        })
    }

    async fn leave(&self, room: &RoomId, _member_key: &str, socket: &str) -> Result<Left, PresenceError> {
        let (found, gone, vacated): (i64, Option<String>, i64) = scripts::LEAVE
            .arg(self.redis.prefix())
            .arg(room.as_str())
            .arg(socket)
            .invoke_async(&mut self.redis.conn())
            .await?;
        if found == 1 {
            let mut local = self.local();
            if let Some(n) = local.get_mut(room) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    local.remove(room);
                }
            }
        }
        Ok(Left {
            gone: gone.as_deref().map(parse_member).transpose()?,
            vacated: vacated == 1,
        })
    }

    async fn evict(&self, room: &RoomId, member_key: &str) -> Result<Left, PresenceError> {
        let (gone, vacated): (Option<String>, i64) = scripts::EVICT
            .arg(self.redis.prefix())
            .arg(room.as_str())
            .arg(member_key)
            .invoke_async(&mut self.redis.conn())
            .await?;
        // The local gauge catches up when the evicted sockets' own leaves find nothing.
        Ok(Left {
            gone: gone.as_deref().map(parse_member).transpose()?,
            vacated: vacated == 1,
        })
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, PresenceError> {
        let entries: Vec<String> = scripts::MEMBERS
            .arg(self.redis.prefix())
            .arg(room.as_str())
            .invoke_async(&mut self.redis.conn())
            .await?;
        entries.iter().map(|j| parse_member(j)).collect()
    }

    async fn stats(&self, room: &RoomId) -> Result<RoomStats, PresenceError> {
        let base = format!("{}:room:{}", self.redis.prefix(), room.as_str());
        let (users, sockets): (usize, usize) = redis::pipe()
            .hlen(format!("{base}:users"))
            .hlen(format!("{base}:sockets"))
            .query_async(&mut self.redis.conn())
            .await?;
        Ok(RoomStats { users, sockets })
    }

    async fn occupied(&self) -> Result<Vec<(RoomId, RoomStats)>, PresenceError> {
        let prefix = self.redis.prefix();
        let rooms: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{prefix}:rooms"))
            .query_async(&mut self.redis.conn())
            .await?;
        let rooms: Vec<RoomId> = rooms.iter().filter_map(|r| RoomId::parse(r).ok()).collect();
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for room in &rooms {
            let base = format!("{prefix}:room:{}", room.as_str());
            pipe.hlen(format!("{base}:users")).hlen(format!("{base}:sockets"));
        }
        let counts: Vec<usize> = pipe.query_async(&mut self.redis.conn()).await?;
        Ok(rooms
            .into_iter()
            .zip(counts.chunks(2))
            .map(|(room, c)| {
                let stats = RoomStats {
                    users: c.first().copied().unwrap_or(0),
                    sockets: c.get(1).copied().unwrap_or(0),
                };
                (room, stats)
            })
            .filter(|(_, s)| s.sockets > 0)
            .collect())
    }

    fn occupied_rooms(&self) -> usize {
        self.local().len()
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(self.redis.node_timeout() / 3)
    }

    async fn tick(&self) -> Result<Tick, PresenceError> {
        let (added, live) = self.heartbeat(None).await?;
        let was_beating = self.beating.swap(true, std::sync::atomic::Ordering::Relaxed);
        let timeout = u64::try_from(self.redis.node_timeout().as_millis()).unwrap_or(u64::MAX);
        let reaped: Vec<redis::Value> = scripts::REAP
            .arg(self.redis.prefix())
            .arg(timeout)
            .arg(self.redis.node())
            .invoke_async(&mut self.redis.conn())
            .await?;
        let mut values = reaped.into_iter();
        let dead_nodes: usize = values
            .next()
            .map(|v| redis::from_redis_value(v).unwrap_or(0))
            .unwrap_or(0);
        let mut offline = Vec::new();
        let mut vacated = Vec::new();
        while let (Some(room), Some(member), Some(emptied)) = (values.next(), values.next(), values.next()) {
            let unreadable = |e: redis::ParsingError| PresenceError(e.to_string());
            let room: String = redis::from_redis_value(room).map_err(unreadable)?;
            let member: Option<String> = redis::from_redis_value(member).map_err(unreadable)?;
            let emptied: i64 = redis::from_redis_value(emptied).map_err(unreadable)?;
            let Ok(room) = RoomId::parse(&room) else {
                tracing::warn!(%room, "skipping unreadable reaped room");
                continue;
            };
            match member.as_deref().map(parse_member) {
                Some(Ok(member)) => offline.push((room.clone(), member)),
                Some(Err(e)) => tracing::warn!(%room, error = %e, "skipping unreadable reaped member"),
                None => {}
            }
            if emptied == 1 {
                vacated.push(room);
            }
        }
        Ok(Tick {
            offline,
            vacated,
            dead_nodes,
            live_nodes: live,
            // Listed anew after we had been beating: others took us for dead and
            // removed our entries, so our sockets must reconnect to be counted again.
            forgotten: added && was_beating,
        })
    }

    async fn goodbye(&self) {
        // Score 0: the next survivor to tick reaps whatever we could not remove ourselves.
        if let Err(e) = self.heartbeat(Some(0)).await {
            tracing::warn!(error = %e, "could not sign off from the cluster");
        }
    }
}
