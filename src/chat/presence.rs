//! Who is in which room right now, counted per user across all their sockets.
//! The registry answers "first socket in?" and "last socket out?", which is what
//! `user-online` needs. [`LocalPresence`] serves one node; the cluster-wide
//! registry (`cluster::RedisPresence`) implements the same trait.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;

use crate::domain::{Member, RoomId};

#[derive(Debug, thiserror::Error)]
#[error("presence registry unavailable: {0}")]
pub struct PresenceError(pub String);

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records `socket` of `member` in `room`: whether it is the member's first
    /// socket there, and whether it is the room's first socket at all.
    async fn join(&self, room: &RoomId, member: &Member, socket: &str) -> Result<Joined, PresenceError>;
    /// Removes `socket` of the member with `member_key`. When it was their last
    /// socket there, [`Left::gone`] is the member as the room knew them.
    async fn leave(&self, room: &RoomId, member_key: &str, socket: &str) -> Result<Left, PresenceError>;
    /// One entry per member present, in the order they arrived.
    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, PresenceError>;
    /// Distinct members and sockets in one room.
    async fn stats(&self, room: &RoomId) -> Result<RoomStats, PresenceError>;
    /// Every room with at least one socket, with its occupancy.
    async fn occupied(&self) -> Result<Vec<(RoomId, RoomStats)>, PresenceError>;
    /// Removes every socket of the member in `room`, wherever they are; the member when they were present.
    async fn evict(&self, room: &RoomId, member_key: &str) -> Result<Left, PresenceError>;
    /// Rooms with at least one member on this node (for metrics).
    fn occupied_rooms(&self) -> usize;
    /// How often [`Presence::tick`] must run; `None` when it has nothing to do.
    fn tick_every(&self) -> Option<Duration> {
        None
    }
    /// Periodic upkeep: say this node is alive, and clear nodes that are not.
    async fn tick(&self) -> Result<Tick, PresenceError> {
        Ok(Tick::default())
    }
    /// This node is going away; let the others clear what it leaves behind.
    async fn goodbye(&self) {}
}

/// What a [`Presence::join`] changed. Both are decided where sockets are
/// counted (one lock, or one Redis script), so exactly one join in the whole
/// cluster sees `occupied` for a room going from 0 sockets to 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Joined {
    /// The member's first socket in the room.
    pub first: bool,
    /// The room's first socket: it went from empty to occupied.
    pub occupied: bool,
}

/// What a [`Presence::leave`] or [`Presence::evict`] changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Left {
    /// The member, when that was their last socket in the room.
    pub gone: Option<Member>,
    /// The room's last socket left: it went from occupied to empty.
    pub vacated: bool,
}

/// What a periodic [`Presence::tick`] found.
#[derive(Debug, Default)]
pub struct Tick {
    /// Users who went offline in a room because their node died.
    pub offline: Vec<(RoomId, Member)>,
    /// Rooms left empty because the sockets of a dead node were cleared.
    pub vacated: Vec<RoomId>,
    pub dead_nodes: usize,
    pub live_nodes: usize,
    /// Other nodes took this one for dead and removed its entries.
    pub forgotten: bool,
}

/// How full a room is: distinct users, and their sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomStats {
    pub users: usize,
    pub sockets: usize,
}

fn stats_of(members: &HashMap<String, Entry>) -> RoomStats {
    RoomStats {
        users: members.len(),
        sockets: members.values().map(|e| e.sockets.len()).sum(),
    }
}

struct Entry {
    member: Member,
    sockets: HashSet<String>,
    arrived: u64,
}

#[derive(Default)]
struct Rooms {
    rooms: HashMap<RoomId, HashMap<String, Entry>>,
    seq: u64,
}

/// The single-node registry. A std `Mutex` because every critical section is
/// a few map operations and never awaits.
#[derive(Default)]
pub struct LocalPresence {
    inner: Mutex<Rooms>,
}

impl LocalPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than losing presence altogether, so recover the guard.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn join(&self, room: &RoomId, member: &Member, socket: &str) -> Result<Joined, PresenceError> {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.seq += 1;
        let seq = state.seq;
        // Empty rooms are removed, so an absent room is one with no socket.
        let occupied = !state.rooms.contains_key(room);
        let entry = state
            .rooms
            .entry(room.clone())
            .or_default()
            .entry(member.key().to_owned())
            .or_insert_with(|| Entry {
                member: member.clone(),
                sockets: HashSet::new(),
                arrived: seq,
            });
        let first = entry.sockets.is_empty();
        entry.sockets.insert(socket.to_owned());
        Ok(Joined { first, occupied })
    }

    async fn leave(&self, room: &RoomId, member_key: &str, socket: &str) -> Result<Left, PresenceError> {
        let mut state = self.lock();
        let Some(members) = state.rooms.get_mut(room) else {
            return Ok(Left::default());
        };
        let Some(entry) = members.get_mut(member_key) else {
            return Ok(Left::default());
        };
        if !entry.sockets.remove(socket) || !entry.sockets.is_empty() {
            return Ok(Left::default());
        }
        let gone = members.remove(member_key).map(|e| e.member);
        let vacated = members.is_empty();
        if vacated {
            state.rooms.remove(room);
        }
        Ok(Left { gone, vacated })
    }

    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, PresenceError> {
        let state = self.lock();
        let mut entries: Vec<&Entry> = state.rooms.get(room).map(|m| m.values().collect()).unwrap_or_default();
        entries.sort_by_key(|e| e.arrived);
        Ok(entries.into_iter().map(|e| e.member.clone()).collect())
    }

    async fn stats(&self, room: &RoomId) -> Result<RoomStats, PresenceError> {
        Ok(self.lock().rooms.get(room).map(stats_of).unwrap_or_default())
    }

    async fn occupied(&self) -> Result<Vec<(RoomId, RoomStats)>, PresenceError> {
        let state = self.lock();
        Ok(state
            .rooms
            .iter()
            .map(|(room, members)| (room.clone(), stats_of(members)))
            .collect())
    }

    async fn evict(&self, room: &RoomId, member_key: &str) -> Result<Left, PresenceError> {
        let mut state = self.lock();
        let Some(members) = state.rooms.get_mut(room) else {
            return Ok(Left::default());
        };
        let gone = members.remove(member_key).map(|e| e.member);
        let vacated = gone.is_some() && members.is_empty();
        if members.is_empty() {
            state.rooms.remove(room);
        }
        Ok(Left { gone, vacated })
    }

    fn occupied_rooms(&self) -> usize {
        self.lock().rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;
    use serde_json::json;

    fn member(id: i64) -> Member {
        Member {
            user: UserId::from_json(&json!(id)).expect("id"),
            info: Default::default(),
        }
    }

    fn joined(first: bool, occupied: bool) -> Joined {
        Joined { first, occupied }
    }

    fn left(gone: Option<Member>, vacated: bool) -> Left {
        Left { gone, vacated }
    }

    #[tokio::test]
    async fn first_in_last_out_per_user_and_per_room() {
        let p = LocalPresence::default();
        let room = RoomId::parse("lobby").expect("room");
        assert_eq!(p.join(&room, &member(5), "a").await.expect("ok"), joined(true, true));
        assert_eq!(
            p.join(&room, &member(5), "b").await.expect("ok"),
            joined(false, false),
            "second tab"
        );
        assert_eq!(
            p.join(&room, &member(5), "b").await.expect("ok"),
            joined(false, false),
            "same socket twice"
        );
        assert_eq!(p.join(&room, &member(7), "c").await.expect("ok"), joined(true, false));
        let keys: Vec<String> = p
            .members(&room)
            .await
            .expect("ok")
            .iter()
            .map(|m| m.key().to_owned())
            .collect();
        assert_eq!(keys, ["5", "7"]);
        assert_eq!(p.stats(&room).await.expect("ok"), RoomStats { users: 2, sockets: 3 });
        assert_eq!(p.leave(&room, "5", "a").await.expect("ok"), left(None, false));
        assert_eq!(
            p.leave(&room, "5", "zzz").await.expect("ok"),
            left(None, false),
            "unknown socket"
        );
        assert_eq!(
            p.leave(&room, "5", "b").await.expect("ok"),
            left(Some(member(5)), false)
        );
        assert_eq!(
            p.leave(&room, "5", "b").await.expect("ok"),
            left(None, false),
            "already gone"
        );
        assert_eq!(p.occupied_rooms(), 1);
        assert_eq!(p.leave(&room, "7", "c").await.expect("ok"), left(Some(member(7)), true));
        assert_eq!(p.occupied_rooms(), 0);
        assert_eq!(
            p.leave(&room, "7", "c").await.expect("ok"),
            left(None, false),
            "vacated is said once"
        );
        assert_eq!(
            p.join(&room, &member(7), "c").await.expect("ok"),
            joined(true, true),
            "occupied again"
        );
    }

    #[tokio::test]
    async fn evict_takes_every_socket_of_the_member() {
        let p = LocalPresence::default();
        let room = RoomId::parse("lobby").expect("room");
        p.join(&room, &member(5), "a").await.expect("ok");
        p.join(&room, &member(5), "b").await.expect("ok");
        p.join(&room, &member(7), "c").await.expect("ok");
        assert_eq!(p.evict(&room, "5").await.expect("ok"), left(Some(member(5)), false));
        assert_eq!(p.evict(&room, "5").await.expect("ok"), left(None, false));
        assert_eq!(
            p.leave(&room, "5", "a").await.expect("ok"),
            left(None, false),
            "evicted socket leaves quietly"
        );
        assert_eq!(p.stats(&room).await.expect("ok"), RoomStats { users: 1, sockets: 1 });
        assert_eq!(p.evict(&room, "7").await.expect("ok"), left(Some(member(7)), true));
    }
}
