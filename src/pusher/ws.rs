//! Pusher's WebSocket protocol (version 7) at `GET /app/{key}`, so an
//! unmodified `pusher-js` pointed at switchboard (`wsHost`/`wsPort`) joins the
//! same rooms as Socket.IO clients. A connection enters and leaves rooms
//! through the same [`Chat`] calls as a socket (admission, presence, typing),
//! and receives room events as a [`Subscriber`] of the broadcaster, which
//! turns them into Pusher frames here: chat never learns which protocol a
//! member speaks.
//!
//! Identity: on a `presence-` channel the connection is the user its signed
//! `channel_data` names; anywhere else it is that user if it already joined a
//! presence channel, else an anonymous user whose id is its socket id.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message, Utf8Bytes,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};
use tokio_util::sync::CancellationToken;

use super::{Credentials, Forwarded, PresentedAuth, auth_shim::identity_of, new_socket_id};
use crate::{
    broadcast::Audience,
    chat::{Chat, Conn, Membership, Seeker},
    domain::{Identity, Member, RoomId, RoomKind, UserId},
    error::ChatError,
    subscribers::{Farewell, RoomEvent, Subscriber},
};

/// How long a client may stay silent before it is pinged, and how long it
/// then has to answer before it is closed with 4201.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub activity_timeout: Duration,
    pub pong_timeout: Duration,
}

/// Frames queued for one connection before it counts as a slow consumer.
const QUEUE: usize = 4096;

/// The protocol versions pusher-js 7 and 8 speak (`?protocol=7`).
const PROTOCOLS: std::ops::RangeInclusive<u32> = 5..=7;

struct Ws {
    chat: Arc<Chat>,
    /// The app's key (the URL's) and secret (user authentication).
    credentials: Credentials,
    timing: Timing,
    max_frame_bytes: usize,
}

/// `GET /app/{key}`: the WebSocket endpoint pusher-js connects to.
pub fn router(chat: Arc<Chat>, credentials: Credentials, timing: Timing, max_frame_bytes: usize) -> Router {
    let ws = Arc::new(Ws {
        chat,
        credentials,
        timing,
        max_frame_bytes,
    });
    Router::new().route("/app/{key}", get(upgrade)).with_state(ws)
}

/// What a Pusher connection is told before it is closed, or in `pusher:error`.
/// Codes as Pusher documents them: 4000–4099 don't reconnect, 4100–4199
/// reconnect slowly, 4200–4299 reconnect at once, 4300–4399 other errors.
#[derive(Debug, thiserror::Error)]
enum WsError {
    #[error("Could not find app by key {0}")]
    UnknownApp(String),
    #[error("Unsupported protocol version {0}; this server speaks 7")]
    Protocol(String),
    #[error("{0}")]
    BadFrame(String),
    #[error("Client event rejected: {0}")]
    ClientEvent(String),
    #[error("Client event rejected due to rate limit")]
    RateLimited,
    #[error("Pong reply not received: closing")]
    NoPong,
    #[error("Connection is too slow to keep up: closing")]
    OverCapacity,
    #[error("Signin refused: {0}")]
    Signin(String),
    #[error("The app terminated this user's connections")]
    Terminated,
    #[error("Server is restarting or lost this connection: reconnect")]
    Reconnect,
}

impl WsError {
    fn code(&self) -> u16 {
        match self {
            Self::UnknownApp(_) => 4001,
            Self::Protocol(_) => 4007,
            Self::Signin(_) | Self::Terminated => 4009,
            Self::OverCapacity => 4100,
            Self::BadFrame(_) | Self::ClientEvent(_) | Self::Reconnect => 4200,
            Self::NoPong => 4201,
            Self::RateLimited => 4301,
        }
    }

    /// `pusher:error`, whose `data` is an object (not a string) in Pusher's protocol.
    fn frame(&self) -> Message {
        text(&json!({
            "event": "pusher:error",
            "data": { "code": self.code(), "message": self.to_string() },
        }))
    }

    fn close(&self) -> Message {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(self.code()),
            reason: self.to_string().chars().take(100).collect::<String>().into(),
        }))
    }
}

fn text(value: &Value) -> Message {
    Message::Text(value.to_string().into())
}

async fn upgrade(State(ws): State<Arc<Ws>>, Path(key): Path<String>, req: Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let accept = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .and_then(|a| HeaderValue::from_str(&a).ok());
    let (true, Some(accept)) = (is_upgrade, accept) else {
        return (
            StatusCode::BAD_REQUEST,
            "this is Pusher's WebSocket endpoint: connect with a WebSocket client such as pusher-js",
        )
            .into_response();
    };
    let protocol = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "protocol")
            .map(|(_, v)| v.into_owned())
    });
    let forwarded = Forwarded::from_headers(req.headers());
    let refusal = if key != ws.credentials.key {
        Some(WsError::UnknownApp(key.chars().take(64).collect()))
    } else {
        match protocol {
            Some(p) if !p.parse().is_ok_and(|v: u32| PROTOCOLS.contains(&v)) => {
                Some(WsError::Protocol(p.chars().take(16).collect()))
            }
            _ => None,
        }
    };
    tokio::spawn(async move {
        let io = match hyper::upgrade::on(req).await {
            Ok(io) => hyper_util::rt::TokioIo::new(io),
            Err(e) => {
                tracing::debug!(error = %e, "Pusher WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(ws.max_frame_bytes))
            .max_frame_size(Some(ws.max_frame_bytes));
        let mut stream = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        if let Some(refusal) = refusal {
            // pusher-js reads the error, then the close code tells it not to retry.
            let _ = stream.send(refusal.frame()).await;
            let _ = stream.send(refusal.close()).await;
            return;
        }
        run(ws, stream, forwarded).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The connection as the broadcaster sees it: a queue of frames and a way to
/// close it. Shared between the broadcaster and the connection's own task.
struct Link {
    socket_id: String,
    out: mpsc::Sender<Message>,
    closing: CancellationToken,
    why: Mutex<Option<WsError>>,
    /// Channel → the chat connection (identity) it was joined with.
    channels: Mutex<HashMap<RoomId, Arc<Conn>>>,
}

impl Link {
    fn channels(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Arc<Conn>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close_with(&self, why: WsError) {
        let mut slot = self.why.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(why);
        self.closing.cancel();
    }
}

impl Subscriber for Link {
    fn deliver(&self, event: &RoomEvent<'_>) -> bool {
        let Some(frame) = event.encoded(frame_of) else {
            return false;
        };
        match self.out.try_send(Message::Text(frame)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close_with(WsError::OverCapacity);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn evict(&self, room: &str) {
        let Ok(room) = RoomId::parse(room) else { return };
        if let Some(conn) = self.channels().remove(&room) {
            conn.remove(&room);
        }
    }

    fn terminate(&self, why: Farewell) {
        self.close_with(match why {
            Farewell::Reconnect => WsError::Reconnect,
            Farewell::Terminated => WsError::Terminated,
        });
    }
}

/// A room event as a Pusher frame, once for all of a room's Pusher
/// connections; `None` for events Pusher clients don't get.
fn frame_of(event: &RoomEvent<'_>) -> Option<Utf8Bytes> {
    let presence = event.room.starts_with("presence-");
    let frame = match event.event {
        // Presence rooms say it as member_added/removed; elsewhere it is
        // Socket.IO's own event.
        "user-online" => return None,
        "pusher:member_added" | "pusher:member_removed" => {
            if !presence {
                return None;
            }
            let member: Value = serde_json::from_str(event.payload.get()).ok()?;
            let id = member.get("id")?.as_str()?;
            let (name, data) = if event.event == "pusher:member_added" {
                let info = member.get("info").cloned().unwrap_or_else(|| json!({}));
                (
                    "pusher_internal:member_added",
                    json!({ "user_id": id, "user_info": info }),
                )
            } else {
                ("pusher_internal:member_removed", json!({ "user_id": id }))
            };
            json!({ "event": name, "channel": event.room, "data": data.to_string() })
        }
        name => {
            // `data` is a string on Pusher's wire: a trigger's string as it was
            // sent, anything else as its JSON text.
            let raw = event.payload.get();
            let data = match serde_json::from_str::<Value>(raw) {
                Ok(Value::String(s)) => s,
                _ => raw.to_owned(),
            };
            let mut frame = json!({ "event": name, "channel": event.room, "data": data });
            if let (true, Some(user)) = (presence, event.from_user) {
                frame["user_id"] = Value::String(user.to_owned());
            }
            frame
        }
    };
    Some(frame.to_string().into())
}

#[derive(Deserialize)]
struct Frame {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    channel: Option<String>,
}

#[derive(Deserialize)]
struct Signin {
    auth: String,
    user_data: String,
}

/// The channel pusher-js subscribes to once signed in, for events sent to the
/// user (`#server-to-user-<id>`).
const USER_CHANNEL: &str = "#server-to-user-";

#[derive(Deserialize)]
struct Subscribe {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

/// The connection's own state, kept by its task.
struct Session {
    chat: Arc<Chat>,
    link: Arc<Link>,
    forwarded: Forwarded,
    /// One chat connection per identity it holds: the anonymous one, and the
    /// users its presence channels named.
    conns: HashMap<String, Arc<Conn>>,
    /// The user its first presence channel named: its identity elsewhere.
    user: Option<String>,
    /// The user `pusher:signin` authenticated it as.
    signed_in: Option<String>,
    credentials: Credentials,
}

async fn run<S>(ws: Arc<Ws>, stream: WebSocketStream<S>, forwarded: Forwarded)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut frames) = stream.split();
    let socket_id = new_socket_id();
    let (out, mut queue) = mpsc::channel(QUEUE);
    let link = Arc::new(Link {
        socket_id: socket_id.clone(),
        out,
        closing: CancellationToken::new(),
        why: Mutex::new(None),
        channels: Mutex::new(HashMap::new()),
    });
    let chat = ws.chat.clone();
    let subscribers = chat.broadcaster().subscribers();
    subscribers.connect(&socket_id, link.clone());
    chat.metrics.connections.inc();
    let mut session = Session {
        chat: chat.clone(),
        link: link.clone(),
        forwarded,
        conns: HashMap::new(),
        user: None,
        signed_in: None,
        credentials: ws.credentials.clone(),
    };

    let established = json!({
        "socket_id": socket_id,
        "activity_timeout": ws.timing.activity_timeout.as_secs(),
    });
    let hello = text(&json!({ "event": "pusher:connection_established", "data": established.to_string() }));
    let mut open = sink.send(hello).await.is_ok();
    let mut deadline = tokio::time::Instant::now() + ws.timing.activity_timeout;
    let mut pinged = false;
    while open {
        tokio::select! {
            () = link.closing.cancelled() => {
                let why = link.why.lock().unwrap_or_else(|p| p.into_inner()).take();
                let why = why.unwrap_or(WsError::Reconnect);
                let _ = sink.send(why.frame()).await;
                let _ = sink.send(why.close()).await;
                break;
            }
            Some(frame) = queue.recv() => {
                open = sink.send(frame).await.is_ok();
            }
            () = tokio::time::sleep_until(deadline) => {
                if pinged {
                    link.close_with(WsError::NoPong);
                } else {
                    pinged = true;
                    deadline = tokio::time::Instant::now() + ws.timing.pong_timeout;
                    open = sink.send(text(&json!({ "event": "pusher:ping", "data": {} }))).await.is_ok();
                }
            }
            frame = frames.next() => {
                // Anything from the client shows it is alive.
                pinged = false;
                deadline = tokio::time::Instant::now() + ws.timing.activity_timeout;
                let replies = match frame {
                    Some(Ok(Message::Text(t))) => session.handle(t.as_str()).await,
                    Some(Ok(Message::Binary(_))) => vec![WsError::BadFrame("binary frames are not part of the protocol".into()).frame()],
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    // Pings are answered by the WebSocket layer.
                    Some(Ok(_)) => Vec::new(),
                };
                for reply in replies {
                    if sink.send(reply).await.is_err() {
                        open = false;
                        break;
                    }
                }
            }
        }
    }
    session.close().await;
    chat.metrics.connections.dec();
}

impl Session {
    /// Answers one text frame; never closes the connection.
    async fn handle(&mut self, raw: &str) -> Vec<Message> {
        let frame: Frame = match serde_json::from_str(raw) {
            Ok(frame) => frame,
            Err(e) => {
                let why = WsError::BadFrame(format!("not a Pusher frame ({{event, data, channel?}} JSON): {e}"));
                return vec![why.frame()];
            }
        };
        match frame.event.as_str() {
            "pusher:ping" => vec![text(&json!({ "event": "pusher:pong", "data": {} }))],
            "pusher:pong" => Vec::new(),
            "pusher:signin" => match serde_json::from_value::<Signin>(data_object(frame.data)) {
                Ok(signin) => match self.signin(signin) {
                    Ok(reply) => vec![reply],
                    // Pusher's servers close an unauthorized connection with 4009.
                    Err(e) => {
                        self.link.close_with(e);
                        Vec::new()
                    }
                },
                Err(e) => {
                    vec![WsError::BadFrame(format!("pusher:signin needs data.auth and data.user_data: {e}")).frame()]
                }
            },
            "pusher:subscribe" => match serde_json::from_value::<Subscribe>(data_object(frame.data)) {
                Ok(sub) if sub.channel.starts_with(USER_CHANNEL) => vec![self.user_channel(&sub.channel)],
                Ok(sub) => vec![self.subscribe(sub).await],
                Err(e) => vec![WsError::BadFrame(format!("pusher:subscribe needs data.channel: {e}")).frame()],
            },
            "pusher:unsubscribe" => {
                if let Some(channel) = data_object(frame.data).get("channel").and_then(Value::as_str)
                    && let Ok(room) = RoomId::parse(channel)
                {
                    self.unsubscribe(&room).await;
                }
                Vec::new()
            }
            name if name.starts_with("client-") => match self.client_event(name, frame.channel, frame.data).await {
                Ok(()) => Vec::new(),
                Err(e) => vec![e.frame()],
            },
            other => {
                let shown: String = other.chars().take(64).collect();
                vec![WsError::BadFrame(format!("unknown event {shown:?}")).frame()]
            }
        }
    }

    /// `pusher:signin`: `auth` must sign `socket_id::user::user_data` with the
    /// app secret, and `user_data` be a JSON object with a non-empty string
    /// `id`. The user is then the one `terminate_connections` closes.
    fn signin(&mut self, signin: Signin) -> Result<Message, WsError> {
        let socket_id = &self.link.socket_id;
        if !self
            .credentials
            .verify_user_auth(&signin.auth, socket_id, &signin.user_data)
        {
            return Err(WsError::Signin(
                "auth does not sign socket_id::user::user_data with this app's secret".into(),
            ));
        }
        let id = serde_json::from_str::<Value>(&signin.user_data)
            .ok()
            .and_then(|data| data.get("id").and_then(Value::as_str).map(str::to_owned))
            .filter(|id| !id.is_empty())
            .ok_or_else(|| WsError::Signin("user_data must be a JSON object with a string id".into()))?;
        if self.signed_in.as_deref() != Some(id.as_str()) {
            let subscribers = self.chat.broadcaster().subscribers();
            subscribers.sign_in(socket_id, &id);
            self.signed_in = Some(id);
        }
        Ok(text(&json!({
            "event": "pusher:signin_success",
            "data": { "user_data": signin.user_data },
        })))
    }

    /// `#server-to-user-<id>`: accepted for the signed-in user only. Nothing
    /// is sent on it yet (no `sendToUser`), but pusher-js subscribes to it
    /// after every signin and must not see an error for it.
    fn user_channel(&self, channel: &str) -> Message {
        let id = &channel[USER_CHANNEL.len()..];
        if self.signed_in.as_deref() == Some(id) {
            return text(&json!({
                "event": "pusher_internal:subscription_succeeded",
                "channel": channel,
                "data": "{}",
            }));
        }
        text(&json!({
            "event": "pusher:subscription_error",
            "channel": channel,
            "data": { "type": "AuthError", "error": "sign in as this user first (pusher:signin)", "status": 401 },
        }))
    }

    /// The chat connection for `user` (None: the connection's own identity).
    fn conn(&mut self, member: Option<&Member>) -> Arc<Conn> {
        let identity = match member {
            Some(member) => identity_of(member.clone()),
            None => match self.user.as_ref().and_then(|u| self.conns.get(u)) {
                Some(conn) => return conn.clone(),
                None => anonymous(&self.link.socket_id),
            },
        };
        let key = identity.user.key().to_owned();
        self.conns
            .entry(key)
            .or_insert_with(|| Arc::new(Conn::new(identity, self.link.socket_id.clone(), self.forwarded.clone())))
            .clone()
    }

    async fn subscribe(&mut self, sub: Subscribe) -> Message {
        let channel = sub.channel.clone();
        match self.join(sub).await {
            Ok(data) => text(&json!({
                "event": "pusher_internal:subscription_succeeded",
                "channel": channel,
                "data": data.to_string(),
            })),
            Err(e) => {
                let (kind, status) = match &e {
                    ChatError::Forbidden(_) | ChatError::Unauthorized(_) => ("AuthError", 401),
                    ChatError::Internal(_) => ("InternalError", 500),
                    ChatError::RateLimited => ("LimitReached", 429),
                    _ => ("InvalidChannel", 400),
                };
                text(&json!({
                    "event": "pusher:subscription_error",
                    "channel": channel,
                    "data": { "type": kind, "error": e.to_string(), "status": status },
                }))
            }
        }
    }

    /// Admits and joins as a socket's `join-room` does; the subscription data.
    async fn join(&mut self, sub: Subscribe) -> Result<Value, ChatError> {
        let room = RoomId::parse(&sub.channel)?;
        let kind = room.kind();
        if self.link.channels().contains_key(&room) {
            return self.subscribed(&room).await;
        }
        let presented = match (&kind, sub.auth) {
            (RoomKind::Private | RoomKind::Presence, Some(auth)) => Some(PresentedAuth {
                auth,
                channel_data: sub.channel_data,
            }),
            (RoomKind::Private | RoomKind::Presence, None) => {
                return Err(ChatError::Forbidden(format!(
                    "{room} needs auth from the app's auth endpoint"
                )));
            }
            _ => None,
        };
        let asking = self.conn(None);
        // Subscriptions count against the user's rate like any client event.
        self.chat.gate(&asking.identity, 0).await?;
        let member = {
            let who = Seeker {
                identity: &asking.identity,
                socket_id: &self.link.socket_id,
                forwarded: &self.forwarded,
            };
            self.chat.admit_presented(who, &room, presented.as_ref()).await?
        };
        let conn = if kind == RoomKind::Presence {
            self.user.get_or_insert_with(|| member.key().to_owned());
            self.conn(Some(&member))
        } else {
            asking
        };
        self.chat.enter(&conn, &room, member, &self.via(&conn)).await?;
        self.subscribed(&room).await
    }

    /// `subscription_succeeded` data: presence channels list their members.
    async fn subscribed(&self, room: &RoomId) -> Result<Value, ChatError> {
        if room.kind() != RoomKind::Presence {
            return Ok(json!({}));
        }
        let members = self.chat.members(room).await?;
        let ids: Vec<&str> = members.iter().map(Member::key).collect();
        let hash: serde_json::Map<String, Value> = members
            .iter()
            .map(|m| (m.key().to_owned(), Value::Object(m.info.clone())))
            .collect();
        Ok(json!({ "presence": { "ids": ids, "hash": hash, "count": members.len() } }))
    }

    async fn unsubscribe(&mut self, room: &RoomId) {
        let Some(conn) = self.link.channels().get(room).cloned() else {
            return;
        };
        let via = self.via(&conn);
        if !self.chat.leave(&conn, room, &via).await {
            via.leave(room);
        }
    }

    /// How the chat's join/leave sequence moves this connection in and out
    /// of a channel, holding `conn`'s identity there.
    fn via<'a>(&'a self, conn: &'a Arc<Conn>) -> Via<'a> {
        Via {
            link: &self.link,
            conn,
            chat: &self.chat,
        }
    }

    /// `client-*`: private and presence channels only, from subscribers only,
    /// rate limited per user, never echoed to the sender.
    async fn client_event(&mut self, name: &str, channel: Option<String>, data: Value) -> Result<(), WsError> {
        let channel = channel.ok_or_else(|| WsError::ClientEvent("channel is required".into()))?;
        let room = RoomId::parse(&channel).map_err(|e| WsError::ClientEvent(e.to_string()))?;
        if name.len() > 200 {
            return Err(WsError::ClientEvent("event names are at most 200 characters".into()));
        }
        let kind = room.kind();
        if !matches!(kind, RoomKind::Private | RoomKind::Presence) {
            return Err(WsError::ClientEvent(format!(
                "client events are allowed on private- and presence- channels only, not {room}"
            )));
        }
        let conn = self
            .link
            .channels()
            .get(&room)
            .cloned()
            .ok_or_else(|| WsError::ClientEvent(format!("not subscribed to {room}")))?;
        let size = data.to_string().len();
        match self.chat.gate(&conn.identity, size).await {
            Ok(()) => {}
            Err(ChatError::RateLimited) => return Err(WsError::RateLimited),
            Err(e) => return Err(WsError::ClientEvent(e.to_string())),
        }
        let user = conn.identity.user.key().to_owned();
        let from = (kind == RoomKind::Presence).then_some(user.as_str());
        self.chat
            .broadcaster()
            .emit_from(
                Audience::room(&room).except_socket(Some(&self.link.socket_id)),
                name,
                &data,
                from,
            )
            .await;
        self.chat
            .webhooks()
            .client_event(&room, name, &data, &self.link.socket_id, from);
        Ok(())
    }

    /// The connection closed: leave every channel as a socket's disconnect does.
    async fn close(&mut self) {
        let joined: Vec<RoomId> = self.link.channels().drain().map(|(room, _)| room).collect();
        let subscribers = self.chat.broadcaster().subscribers();
        subscribers.disconnect(&self.link.socket_id, joined.iter().map(RoomId::as_str));
        for conn in self.conns.values() {
            self.chat.disconnected(conn).await;
        }
    }
}

/// One chat connection of a Pusher connection, as the chat's join/leave
/// sequence sees it: the broadcaster's subscriber list and the link's
/// channel → identity map.
struct Via<'a> {
    link: &'a Arc<Link>,
    conn: &'a Arc<Conn>,
    chat: &'a Chat,
}

impl Membership for Via<'_> {
    fn join(&self, room: &RoomId, member: &Member) {
        let subscribers = self.chat.broadcaster().subscribers();
        subscribers.join(room.as_str(), &self.link.socket_id, member.key(), self.link.clone());
        self.link.channels().insert(room.clone(), self.conn.clone());
    }

    fn leave(&self, room: &RoomId) {
        self.link.channels().remove(room);
        let subscribers = self.chat.broadcaster().subscribers();
        subscribers.leave(room.as_str(), &self.link.socket_id);
    }

    /// Always: the connection's own task cleans up after the frame it is
    /// handling, so nothing can be drained under a join.
    fn connected(&self) -> bool {
        true
    }
}

/// pusher-js sends `data` as an object; some clients send it as a JSON string.
fn data_object(data: Value) -> Value {
    match data {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
        other => other,
    }
}

/// A connection that no presence channel has named: a user of its own,
/// whose id is its socket id.
fn anonymous(socket_id: &str) -> Identity {
    Identity {
        user: UserId::from_key(socket_id).unwrap_or_else(|| unreachable!("a socket id is a valid user id")),
        profile: Default::default(),
        token: "".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn frame(room: &str, event: &str, payload: &str, from: Option<&str>) -> Option<Value> {
        let payload = RawValue::from_string(payload.to_owned()).expect("json");
        frame_of(&RoomEvent::new(room, event, &payload, from)).map(|f| serde_json::from_str(f.as_str()).expect("json"))
    }

    #[test]
    fn events_carry_data_as_a_string() {
        let f = frame("private-chat-5-12", "new-message", r#"{"id":"1","message":"hi"}"#, None);
        assert_eq!(
            f,
            Some(
                json!({ "event": "new-message", "channel": "private-chat-5-12", "data": r#"{"id":"1","message":"hi"}"# })
            )
        );
        let f = frame("lobby", "ev", r#""plain text""#, None);
        assert_eq!(
            f.and_then(|f| f["data"].as_str().map(str::to_owned)),
            Some("plain text".into())
        );
    }

    #[test]
    fn presence_client_events_carry_the_user() {
        let f = frame("presence-x", "client-a", "{}", Some("5")).expect("frame");
        assert_eq!(f["user_id"], "5");
        let f = frame("private-x", "client-a", "{}", Some("5")).expect("frame");
        assert!(f.get("user_id").is_none());
    }

    #[test]
    fn member_events_become_pusher_internal_ones() {
        let added = frame(
            "presence-online",
            "pusher:member_added",
            r#"{"roomId":"presence-online","id":"5","info":{"name":"Ann"}}"#,
            None,
        )
        .expect("frame");
        assert_eq!(added["event"], "pusher_internal:member_added");
        let data: Value = serde_json::from_str(added["data"].as_str().expect("string")).expect("json");
        assert_eq!(data, json!({ "user_id": "5", "user_info": { "name": "Ann" } }));
        let removed = frame(
            "presence-online",
            "pusher:member_removed",
            r#"{"id":"5","info":{}}"#,
            None,
        )
        .expect("frame");
        assert_eq!(removed["event"], "pusher_internal:member_removed");
        assert_eq!(frame("presence-online", "user-online", "{}", None), None);
        assert_eq!(frame("lobby", "pusher:member_added", r#"{"id":"5"}"#, None), None);
    }

    #[test]
    fn anonymous_ids_are_valid_user_ids() {
        let id = new_socket_id();
        assert_eq!(anonymous(&id).user.key(), id);
    }
}
