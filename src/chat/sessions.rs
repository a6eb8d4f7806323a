//! Sessions for socket.io-client's connection state recovery, kept in the
//! [`Store`](crate::store::Store) rather than in memory, so a client resumes
//! after a crash or restart of the server and through another node.
//!
//! A session is a connection's private id (`pid`), its user, the rooms it
//! joined (with the member identity it held in each and the room's newest
//! message id at the time) and an expiry. It is written when the connection
//! joins or leaves a room; a disconnect only pushes the expiry back, since
//! the rooms are what a reconnect restores. Live sessions are touched now and
//! then so a long-lived connection can still be resumed after a crash.

use std::{
    collections::HashSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Chat, HISTORY_MAX};
use crate::{
    clock,
    domain::{Identity, Member, RoomId, StoredMessage},
    store::{PageQuery, SessionJoin},
};

/// Most messages replayed per room; past it the session is not resumed (the
/// client starts afresh and pages with `since` if it wants to).
pub const REPLAY_MAX: u32 = HISTORY_MAX;

/// How often expired sessions are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(300);

/// The recovery window and this node's live sessions.
pub struct Sessions {
    /// Zero disables recovery.
    window: Duration,
    /// Sessions of this node's connected sockets that joined a room: their
    /// expiry is pushed back while they stay connected. std `Mutex`: set
    /// operations only, never held across an await.
    live: Mutex<HashSet<String>>,
    /// When housekeeping last touched the live sessions and deleted expired ones.
    last: Mutex<(Instant, Instant)>,
}

impl Sessions {
    pub fn new(window: Duration) -> Self {
        let now = Instant::now();
        Self {
            window,
            live: Mutex::new(HashSet::new()),
            last: Mutex::new((now, now)),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stored session that can be resumed: each room with the messages to replay.
#[derive(Debug)]
pub struct Resumable {
    pub rooms: Vec<ResumedRoom>,
}

#[derive(Debug)]
pub struct ResumedRoom {
    pub room: RoomId,
    /// Replay starts after this id (the client's offset, or the room's join
    /// mark when that is later).
    pub after: i64,
    /// Stored messages after `after`, oldest first (at most [`REPLAY_MAX`]).
    pub messages: Vec<StoredMessage>,
}

/// A fresh private session id: 128 random bits, hex.
pub fn new_pid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Chat {
    /// Whether connection state recovery is on (`RECOVERY_WINDOW_SECS` > 0).
    pub fn recovery(&self) -> bool {
        !self.sessions.window.is_zero()
    }

    fn session_expiry(&self) -> i64 {
        clock::now_ms().saturating_add(self.sessions.window.as_millis().min(i64::MAX as u128) as i64)
    }

    /// A socket of session `pid` entered `room` as `member`. Failures are
    /// logged, not raised: the join stands, only its recovery is lost.
    pub async fn session_joined(&self, pid: &str, identity: &Identity, room: &RoomId, member: &Member) {
        if !self.recovery() {
            return;
        }
        self.sessions.live().insert(pid.to_owned());
        let join = SessionJoin {
            pid,
            identity,
            room,
            member,
            expires_at: self.session_expiry(),
        };
        if let Err(e) = self.store.session_join(join).await {
            tracing::error!(error = %e, %room, "could not record the room in the session");
        }
    }

    /// A socket of session `pid` left `room` on purpose: not restored any more.
    pub async fn session_left(&self, pid: &str, room: &RoomId) {
        if !self.recovery() {
            return;
        }
        if let Err(e) = self.store.session_leave(pid, room, self.session_expiry()).await {
            tracing::error!(error = %e, %room, "could not forget the room in the session");
        }
    }

    /// Session `pid` was resumed by a new socket of this node.
    pub async fn session_resumed(&self, pid: &str) {
        self.sessions.live().insert(pid.to_owned());
        if let Err(e) = self.store.session_touch(&[pid.to_owned()], self.session_expiry()).await {
            tracing::error!(error = %e, "could not push the session's expiry back");
        }
    }

    /// The socket of session `pid` disconnected: the session may be resumed
    /// for a whole window from now.
    pub async fn session_closed(&self, pid: &str) {
        if !self.recovery() || !self.sessions.live().remove(pid) {
            return;
        }
        if let Err(e) = self.store.session_touch(&[pid.to_owned()], self.session_expiry()).await {
            tracing::error!(error = %e, "could not push the session's expiry back");
        }
    }

    /// The session `pid` as `identity` may resume it from `offset` (the last
    /// message id the client got; `None` when it got none since connecting).
    /// `None` when it is unknown, expired, another user's, or has more than
    /// [`REPLAY_MAX`] messages to replay in a room: the client starts afresh.
    pub async fn resumable(&self, pid: &str, identity: &Identity, offset: Option<i64>) -> Option<Resumable> {
        if !self.recovery() {
            return None;
        }
        let session = match self.store.session(pid, clock::now_ms()).await {
            Ok(Some(session)) => session,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "could not read a session to resume");
                return None;
            }
        };
        if session.user_key != identity.user.key() {
            tracing::warn!(
                user = identity.user.key(),
                "a session of another user was presented: not resumed"
            );
            return None;
        }
        let mut rooms = Vec::with_capacity(session.rooms.len());
        for stored in session.rooms {
            // The join's history covered the room up to its mark, and the
            // client got every message up to its offset: whichever is later.
            let after = offset.unwrap_or(0).max(stored.after);
            let query = PageQuery {
                after: Some(after),
                before: None,
                limit: REPLAY_MAX,
            };
            let page = match self.page(&stored.room, query).await {
                Ok(page) => page,
                Err(_) => return None,
            };
            if page.has_more {
                tracing::info!(room = %stored.room, "too much to replay: session not resumed");
                return None;
            }
            rooms.push(ResumedRoom {
                room: stored.room,
                after,
                messages: page.messages,
            });
        }
        Some(Resumable { rooms })
    }

    /// Housekeeping: pushes back the expiry of this node's live sessions every
    /// quarter window, and deletes expired sessions every few minutes.
    pub(super) async fn sessions_upkeep(&self) {
        if !self.recovery() {
            return;
        }
        let (touch, expire) = {
            let mut last = self.sessions.last.lock().unwrap_or_else(|p| p.into_inner());
            let touch = last.0.elapsed() >= self.sessions.window / 4;
            let expire = last.1.elapsed() >= EXPIRE_EVERY.min(self.sessions.window);
            if touch {
                last.0 = Instant::now();
            }
            if expire {
                last.1 = Instant::now();
            }
            (touch, expire)
        };
        if touch {
            let live: Vec<String> = self.sessions.live().iter().cloned().collect();
            for chunk in live.chunks(500) {
                if let Err(e) = self.store.session_touch(chunk, self.session_expiry()).await {
                    tracing::error!(error = %e, "could not push live sessions' expiry back");
                }
            }
        }
        if expire {
            match self.store.expire_sessions(clock::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(sessions = n, "deleted expired sessions"),
                Err(e) => tracing::error!(error = %e, "could not delete expired sessions"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_long_random_and_distinct() {
        let (a, b) = (new_pid(), new_pid());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
