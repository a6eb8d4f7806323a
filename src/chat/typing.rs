//! Who is typing where. A `typing: true` opens a window that a refresh
//! extends; when it lapses the chat service announces `isTyping: false`.
//! Each start gets a generation number so a stale expiry timer does nothing.

use std::{collections::HashMap, sync::Mutex};

use crate::domain::RoomId;

#[derive(Default)]
struct State {
    /// (room, user key) → generation of the latest `typing: true`.
    active: HashMap<(RoomId, String), u64>,
    next: u64,
}

#[derive(Default)]
pub struct Typing {
    /// std `Mutex`: held only for a map operation, never across an await.
    state: Mutex<State>,
}

impl Typing {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the user typing; returns the generation its expiry timer must present.
    pub fn start(&self, room: &RoomId, user_key: &str) -> u64 {
        let mut state = self.lock();
        state.next += 1;
        let generation = state.next;
        state.active.insert((room.clone(), user_key.to_owned()), generation);
        generation
    }

    /// Clears the user's typing state; true when they were typing.
    pub fn stop(&self, room: &RoomId, user_key: &str) -> bool {
        self.lock()
            .active
            .remove(&(room.clone(), user_key.to_owned()))
            .is_some()
    }

    /// Called when a timer fires: clears the state only if no refresh came since.
    pub fn expire(&self, room: &RoomId, user_key: &str, generation: u64) -> bool {
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

    #[test]
    fn refresh_defeats_the_old_timer() {
        let t = Typing::default();
        let room = RoomId::parse("lobby").expect("room");
        let g1 = t.start(&room, "5");
        let g2 = t.start(&room, "5");
        assert!(!t.expire(&room, "5", g1));
        assert!(t.expire(&room, "5", g2));
        assert!(!t.stop(&room, "5"));
        t.start(&room, "5");
        assert!(t.stop(&room, "5"));
    }
}
