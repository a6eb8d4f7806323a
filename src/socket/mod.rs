//! The Socket.IO transport: authenticates the handshake, turns each client
//! event into a call on [`Chat`], and answers every event with an ack in the
//! contract's shape. Nothing here decides chat rules; it parses and relays.

mod payload;
mod recovery;

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::{AckSender, Event, SocketRef, TryData},
    handler::ConnectHandler,
};
use socketioxide_core::adapter::DefinedAdapter;

use crate::{
    auth::AuthError,
    chat::{Chat, Conn, Membership, join_reply, message_reply},
    domain::{Draft, Member, RoomId},
    error::ChatError,
    pusher::{Forwarded, new_socket_id},
    store::Page,
};
use payload::{JoinRequest, RoomRequest, TypingRequest, json_size};

/// Registers the `/` namespace. The middleware authenticates and attaches the
/// event handlers *before* socketioxide confirms the connection: the connect
/// handler runs as a separate task after the confirmation, so handlers added
/// there could miss an event the client sends the moment it is connected.
/// Authentication may await the app's auth endpoint; socketioxide runs each
/// handshake in its own task, so a slow endpoint holds up only that one.
///
/// Generic over the adapter: one node runs the in-memory adapter, many nodes
/// the Redis one. The returned value initialises the adapter (Redis subscriptions).
pub fn register<A: Adapter + DefinedAdapter>(io: &SocketIo<A>, chat: Arc<Chat>) -> A::InitRes {
    let for_connect = chat.clone();
    let on_connect = move |s: SocketRef<A>| {
        let chat = for_connect.clone();
        async move {
            if let Some(conn) = conn_of(&s) {
                // Counted once confirmed, so a handshake abandoned while the
                // auth endpoint was asked never counts (its disconnect never runs).
                chat.metrics.connections.inc();
                let session = json!({ "socketId": conn.socket_id, "userId": conn.identity.user });
                chat.broadcaster().send(&s, "session", &session);
            }
            recovery::replay(&s, &chat).await;
        }
    };
    let authenticate = move |s: SocketRef<A>, TryData(auth): TryData<Value>| {
        let chat = chat.clone();
        async move {
            let auth = auth.ok();
            match authenticate(&s, auth.as_ref(), &chat).await {
                Ok(conn) => {
                    attach(&s, &chat, &conn);
                    recovery::resume(&s, &chat, &conn, auth.as_ref()).await;
                    Ok(())
                }
                Err(e) => {
                    chat.metrics.error("unauthorized");
                    tracing::debug!(reason = %e, "handshake refused");
                    Err(e)
                }
            }
        }
    };
    io.ns("/", on_connect.with(authenticate))
}

/// A JWT wins when one is given; without one the app's own session (its
/// cookies, through the Pusher auth endpoint) says who the connection is.
/// Nothing is attached to the socket until the identity is known, and nothing
/// borrowed from the socket is held across the endpoint's await.
async fn authenticate<A: Adapter>(s: &SocketRef<A>, auth: Option<&Value>, chat: &Chat) -> Result<Arc<Conn>, AuthError> {
    let (token, forwarded) = {
        let parts = s.req_parts();
        (token_of(parts, auth)?, Forwarded::from_headers(&parts.headers))
    };
    // The session is vouched for this very socket id, so it is the connection's.
    let socket_id = new_socket_id();
    let identity = match token {
        Some(token) => chat.verifier.verify(&token)?,
        None => chat.identify(&socket_id, &forwarded).await?,
    };
    let conn = Arc::new(Conn::new(identity, socket_id, forwarded));
    s.extensions.insert(conn.clone());
    Ok(conn)
}

/// The token comes from `auth.token`, the `token` query parameter, or an
/// `Authorization: Bearer` header, in that order; an empty one is no token,
/// and an `auth.token` that is not a string is refused as such.
fn token_of(parts: &axum::http::request::Parts, auth: Option<&Value>) -> Result<Option<String>, AuthError> {
    let given = |t: &str| !t.trim().is_empty();
    let from_auth = match auth.and_then(|a| a.get("token")) {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(token.clone()).filter(|t| given(t)),
        Some(_) => return Err(AuthError::NotAString),
    };
    let from_query = || {
        parts.uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, v)| k == "token" && given(v))
                .map(|(_, v)| v.into_owned())
        })
    };
    let from_header = || {
        parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(crate::http::bearer)
            .filter(|t| given(t))
            .map(str::to_owned)
    };
    Ok(from_auth.or_else(from_query).or_else(from_header))
}

fn conn_of<A: Adapter>(s: &SocketRef<A>) -> Option<Arc<Conn>> {
    s.extensions.get::<Arc<Conn>>()
}

/// In the room for real: the socket's own record says so *and* the socket is
/// still in the Socket.IO room. An eviction from another node removes the
/// latter only (through the adapter), and that is what counts.
fn in_room<A: Adapter>(s: &SocketRef<A>, conn: &Conn, room: &RoomId) -> bool {
    conn.joined(room) && s.rooms().iter().any(|r| r == room.as_str())
}

/// The socket's Socket.IO rooms, as the chat's join/leave sequence drives them.
pub(crate) struct Via<'a, A: Adapter>(pub &'a SocketRef<A>);

impl<A: Adapter> Membership for Via<'_, A> {
    fn join(&self, room: &RoomId, _: &Member) {
        self.0.join(room.to_string());
    }

    fn leave(&self, room: &RoomId) {
        self.0.leave(room.to_string());
    }

    fn connected(&self) -> bool {
        self.0.connected()
    }
}

/// Joins the socket's internal rooms and registers every client event.
fn attach<A: Adapter>(s: &SocketRef<A>, chat: &Arc<Chat>, conn: &Conn) {
    s.join(chat.broadcaster().rooms_of(conn.identity.user.key(), &conn.socket_id));

    on(s, chat, "join-room", |chat, s, conn, data| async move {
        let req = JoinRequest::parse(&data)?;
        let room = RoomId::parse(&req.room)?;
        let fresh = !in_room(&s, &conn, &room);
        if fresh {
            let member = chat.join(&conn, &room, req.presented.as_ref(), &Via(&s)).await?;
            recovery::joined(&s, &chat, &conn, &room, &member).await;
        }
        let members = chat.members(&room).await?;
        // A room already joined gets history only when asked with `since`: a
        // client re-joining in a loop must not be sent the same page each time.
        let page = match (fresh, req.since) {
            (false, None) => Page::default(),
            _ => chat.history(&room, req.since).await?,
        };
        Ok(join_reply(&room, &members, &page))
    });

    on(s, chat, "leave-room", |chat, s, conn, data| async move {
        let room = RoomId::parse(&RoomRequest::parse(&data)?.room)?;
        if chat.leave(&conn, &room, &Via(&s)).await {
            recovery::left(&s, &chat, &room).await;
        }
        Ok(json!({ "ok": true }))
    });

    on(s, chat, "send-message", |chat, s, conn, data| async move {
        let draft = Draft::parse(&data, None)?;
        let room = RoomId::parse(&draft.room)?;
        if !in_room(&s, &conn, &room) {
            return Err(ChatError::NotJoined(room));
        }
        let appended = chat.send(&conn.identity, &room, draft).await?;
        Ok(message_reply(&appended.message))
    });

    on(s, chat, "typing", |chat, s, conn, data| async move {
        let req = TypingRequest::parse(&data)?;
        let room = RoomId::parse(&req.room)?;
        if !in_room(&s, &conn, &room) {
            return Err(ChatError::NotJoined(room));
        }
        chat.typing(&conn.identity, &room, req.is_typing).await;
        Ok(json!({ "ok": true }))
    });

    // Any other event: answered (when the client asked for an ack) rather
    // than left to the client's own timeout.
    let fallback = chat.clone();
    s.on_fallback(move |s: SocketRef<A>, Event(name): Event, ack: AckSender<A>| {
        let chat = fallback.clone();
        async move {
            let Some(conn) = conn_of(&s) else { return };
            let shown: String = name.chars().take(64).collect();
            let error = match chat.gate(&conn.identity, 0).await {
                Ok(()) => ChatError::InvalidPayload(format!(
                    "unknown event {shown:?}: the events are join-room, leave-room, send-message and typing"
                )),
                Err(e) => e,
            };
            chat.metrics.error(error.code());
            if let Err(e) = ack.send(&error.body()) {
                chat.broadcaster().ack_failed(&s, e);
            }
        }
    });

    let chat = chat.clone();
    s.on_disconnect(move |s: SocketRef<A>| {
        let chat = chat.clone();
        async move {
            chat.metrics.connections.dec();
            if let Some(conn) = conn_of(&s) {
                chat.disconnected(&conn).await;
            }
            recovery::closed(&s, &chat).await;
        }
    });
}

/// Registers one client event: every event is rate limited, size checked and
/// answered with an ack, whatever its payload; nothing closes the connection.
fn on<A: Adapter, F, Fut>(s: &SocketRef<A>, chat: &Arc<Chat>, event: &'static str, handler: F)
where
    F: Fn(Arc<Chat>, SocketRef<A>, Arc<Conn>, Value) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, ChatError>> + Send + 'static,
{
    let chat = chat.clone();
    s.on(
        event,
        move |s: SocketRef<A>, TryData(data): TryData<Value>, ack: AckSender<A>| {
            let (chat, handler) = (chat.clone(), handler.clone());
            async move {
                let Some(conn) = conn_of(&s) else { return };
                let data = data.unwrap_or(Value::Null);
                let result = match chat.gate(&conn.identity, json_size(&data)).await {
                    Ok(()) => handler(chat.clone(), s.clone(), conn, data).await,
                    Err(e) => Err(e),
                };
                let body = result.unwrap_or_else(|e| {
                    chat.metrics.error(e.code());
                    e.body()
                });
                // No ack callback on the client side: nothing is sent, Ok.
                if let Err(e) = ack.send(&body) {
                    chat.broadcaster().ack_failed(&s, e);
                }
            }
        },
    );
}
