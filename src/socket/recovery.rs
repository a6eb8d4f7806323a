//! socket.io-client's connection state recovery, on the Socket.IO side.
//!
//! Every CONNECT answer carries a private session id (`pid`); every
//! `new-message` carries its id as a last argument, which the client keeps as
//! its offset. A client that reconnects sends `{ pid, offset }` with its auth.
//! Once the handshake is authenticated as usual, [`resume`] looks the session
//! up ([`Chat::resumable`]); when it belongs to the same user and has little
//! enough to replay, the socket re-enters its rooms through the normal join
//! path (admission, presence, `user-online`) *before* the CONNECT answer, so
//! events the client had buffered find their rooms, and the answer carries the
//! same `pid` (`socket.recovered === true`). [`replay`] then sends the missed
//! messages, after the answer. Anything else gets a fresh session.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use socketioxide::{adapter::Adapter, extract::SocketRef};

use super::Via;
use crate::{
    chat::{
        Chat, Conn,
        sessions::{REPLAY_MAX, new_pid},
    },
    domain::{Member, RoomId, StoredMessage},
    error::ChatError,
    store::PageQuery,
};

/// A socket's session, in its extensions.
pub struct Resume {
    pub pid: String,
    /// What a resumed session still has to send once the socket is connected.
    /// std `Mutex`: taken once, never held across an await.
    pending: Mutex<Option<Replay>>,
}

#[derive(Debug, Default)]
struct Replay {
    /// Messages read while resuming, of every room.
    messages: Vec<StoredMessage>,
    /// Each restored room and the last id read for it.
    read_up_to: Vec<(RoomId, i64)>,
}

/// The session a reconnecting client names: `pid` must look like one of ours;
/// `offset` is the last message id it got (absent when it got none).
/// `None` when there is nothing usable to resume.
fn asked(auth: Option<&Value>) -> Option<(&str, Option<i64>)> {
    let auth = auth?;
    let pid = auth
        .get("pid")
        .and_then(Value::as_str)
        .filter(|p| p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit()))?;
    let offset = match auth.get("offset") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<i64>().ok().filter(|n| *n >= 0)?),
        Some(Value::Number(n)) => Some(n.as_i64().filter(|n| *n >= 0)?),
        Some(_) => return None,
    };
    Some((pid, offset))
}

/// Called by the connect middleware once the socket is authenticated: resumes
/// the session the client names, or starts a fresh one, and sets the `pid`
/// the CONNECT answer carries. Never refuses the connection.
pub async fn resume<A: Adapter>(s: &SocketRef<A>, chat: &Arc<Chat>, conn: &Conn, auth: Option<&Value>) {
    if !chat.recovery() {
        return;
    }
    let resumed = match asked(auth) {
        Some((pid, offset)) => restore(s, chat, conn, pid, offset)
            .await
            .map(|replay| (pid.to_owned(), Some(replay))),
        None => None,
    };
    let (pid, replay) = resumed.unwrap_or_else(|| (new_pid(), None));
    s.set_connect_pid(pid.clone());
    s.extensions.insert(Arc::new(Resume {
        pid,
        pending: Mutex::new(replay),
    }));
}

/// Restores the session's rooms through the join path; what to replay, or
/// `None` (nothing restored) when the session can't be resumed.
async fn restore<A: Adapter>(
    s: &SocketRef<A>,
    chat: &Arc<Chat>,
    conn: &Conn,
    pid: &str,
    offset: Option<i64>,
) -> Option<Replay> {
    let plan = chat.resumable(pid, &conn.identity, offset).await?;
    // Admission again, as a join would: a user removed from a group, or no
    // longer authorized by the app's auth endpoint, doesn't get the room back.
    let mut admitted: Vec<(RoomId, Member)> = Vec::with_capacity(plan.rooms.len());
    for r in &plan.rooms {
        match chat.admit(conn.seeker(), &r.room).await {
            Ok(member) => admitted.push((r.room.clone(), member)),
            Err(ChatError::Forbidden(_) | ChatError::InvalidRoom(_)) => chat.session_left(pid, &r.room).await,
            Err(e) => {
                tracing::warn!(error = %e, room = %r.room, "could not admit to a room to resume: fresh session");
                return None;
            }
        }
    }
    let mut entered: Vec<RoomId> = Vec::with_capacity(admitted.len());
    for (room, member) in admitted {
        if let Err(e) = chat.enter(conn, &room, member, &Via(s)).await {
            tracing::warn!(error = %e, %room, "could not restore a room: fresh session");
            for room in entered {
                chat.leave(conn, &room, &Via(s)).await;
            }
            return None;
        }
        entered.push(room);
    }
    chat.session_resumed(pid).await;
    let mut replay = Replay::default();
    for r in plan.rooms.into_iter().filter(|r| entered.contains(&r.room)) {
        let last = r.messages.last().map_or(r.after, |m| m.id);
        replay.read_up_to.push((r.room, last));
        replay.messages.extend(r.messages);
    }
    Some(replay)
}

/// Called once the socket is connected: sends a resumed session's missed
/// messages, oldest first across its rooms, each once. Messages stored while
/// the socket was being restored (their broadcast found it not connected yet)
/// are read now and sent with the others.
pub async fn replay<A: Adapter>(s: &SocketRef<A>, chat: &Chat) {
    let Some(resume) = s.extensions.get::<Arc<Resume>>() else {
        return;
    };
    let Some(Replay {
        mut messages,
        read_up_to,
    }) = resume.pending.lock().unwrap_or_else(|p| p.into_inner()).take()
    else {
        return;
    };
    for (room, mut after) in read_up_to {
        loop {
            let query = PageQuery {
                after: Some(after),
                before: None,
                limit: REPLAY_MAX,
            };
            let Ok(page) = chat.page(&room, query).await else {
                break;
            };
            after = page.messages.last().map_or(after, |m| m.id);
            messages.extend(page.messages);
            if !page.has_more {
                break;
            }
        }
    }
    // By id, so the client's offset only moves forward: a drop in the middle
    // of the replay resumes from where it got to.
    messages.sort_by_key(|m| m.id);
    messages.dedup_by_key(|m| m.id);
    for message in &messages {
        if !chat.broadcaster().send_message(s, message) {
            break;
        }
    }
}

/// The socket's session id, when recovery is on.
fn pid_of<A: Adapter>(s: &SocketRef<A>) -> Option<Arc<Resume>> {
    s.extensions.get::<Arc<Resume>>()
}

/// After a `join-room` entered `room`: the session remembers it.
pub async fn joined<A: Adapter>(s: &SocketRef<A>, chat: &Chat, conn: &Conn, room: &RoomId, member: &Member) {
    if let Some(resume) = pid_of(s)
        && s.connected()
    {
        chat.session_joined(&resume.pid, &conn.identity, room, member).await;
    }
}

/// After a `leave-room`: the session forgets the room.
pub async fn left<A: Adapter>(s: &SocketRef<A>, chat: &Chat, room: &RoomId) {
    if let Some(resume) = pid_of(s) {
        chat.session_left(&resume.pid, room).await;
    }
}

/// On disconnect: the session stays resumable for a window from now.
pub async fn closed<A: Adapter>(s: &SocketRef<A>, chat: &Chat) {
    if let Some(resume) = pid_of(s) {
        chat.session_closed(&resume.pid).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn what_a_reconnecting_client_asks_for() {
        let cases = [
            (json!({ "pid": PID, "offset": "42" }), Some((PID, Some(42)))),
            (json!({ "pid": PID, "offset": 42 }), Some((PID, Some(42)))),
            (json!({ "pid": PID, "token": "t" }), Some((PID, None))),
            (json!({ "pid": PID, "offset": null }), Some((PID, None))),
            (json!({ "pid": PID, "offset": "x" }), None),
            (json!({ "pid": PID, "offset": "-1" }), None),
            (json!({ "pid": PID, "offset": [1] }), None),
            (json!({ "pid": "short", "offset": "1" }), None),
            (json!({ "pid": 5, "offset": "1" }), None),
            (json!({ "token": "t" }), None),
        ];
        for (auth, want) in cases {
            assert_eq!(asked(Some(&auth)), want, "{auth}");
        }
        assert_eq!(asked(None), None);
    }
}
