//! Who is typing where. A `typing: true` opens a window that a refresh
//! extends; when it lapses the chat service announces `isTyping: false`.
//! Each start gets a generation so a stale expiry timer does nothing. With many
//! nodes the state lives in Redis, so a refresh or a stop through any node
//! counts, and exactly one timer (the latest start's) announces the lapse.

use std::{collections::HashMap, sync::Mutex};

use crate::{cluster::SharedTyping, domain::RoomId};

pub enum Typing {
    Local(LocalTyping),
    Shared(Box<SharedTyping>),
}

impl Typing {
    /// Marks the user typing; returns the generation its expiry timer must present.
    pub async fn start(&self, room: &RoomId, user_key: &str) -> String {
        match self {
            Self::Local(t) => t.start(room, user_key).to_string(),
            Self::Shared(t) => t.start(room, user_key).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "typing state unavailable");
                String::new()
            }),
        }
    }

    /// Clears the user's typing state; true when they were typing.
    pub async fn stop(&self, room: &RoomId, user_key: &str) -> bool {
        match self {
            Self::Local(t) => t.stop(room, user_key),
            Self::Shared(t) => t.stop(room, user_key).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "typing state unavailable");
                false
            }),
        }
    }

    /// Called when a timer fires: clears the state only if no refresh came since.
    pub async fn expire(&self, room: &RoomId, user_key: &str, generation: &str) -> bool {
        match self {
            Self::Local(t) => generation.parse().is_ok_and(|g| t.expire(room, user_key, g)),
            Self::Shared(t) => t.expire(room, user_key, generation).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "typing state unavailable");
                false
            }),
        }
    }
}

#[derive(Default)]
struct State {
    /// (room, user key) → generation of the latest `typing: true`.
    active: HashMap<(RoomId, String), u64>,
    next: u64,
}

/// One node's typing state.
#[derive(Default)]
pub struct LocalTyping {
    /// std `Mutex`: held only for a map operation, never across an await.
    state: Mutex<State>,
}

impl LocalTyping {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, room: &RoomId, user_key: &str) -> u64 {
        let mut state = self.lock();
        state.next += 1;
        let generation = state.next;
        state.active.insert((room.clone(), user_key.to_owned()), generation);
        generation
    }

    fn stop(&self, room: &RoomId, user_key: &str) -> bool {
        self.lock()
            .active
            .remove(&(room.clone(), user_key.to_owned()))
            .is_some()
    }

    fn expire(&self, room: &RoomId, user_key: &str, generation: u64) -> bool {
        let mut state = self.lock();
        let key = (room.clone(), user_key.to_owned());
        if state.active.get(&key) == Some(&generation) {
            state.active.remove(&key);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refresh_defeats_the_old_timer() {
        let t = Typing::Local(LocalTyping::default());
        let room = RoomId::parse("lobby").expect("room");
        let g1 = t.start(&room, "5").await;
        let g2 = t.start(&room, "5").await;
        assert!(!t.expire(&room, "5", &g1).await);
        assert!(t.expire(&room, "5", &g2).await);
        assert!(!t.stop(&room, "5").await);
        t.start(&room, "5").await;
        assert!(t.stop(&room, "5").await);
    }
}
