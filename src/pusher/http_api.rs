//! The Pusher HTTP API, signed and answered as Pusher Channels does, so the
//! official server SDKs work when pointed at this host; plus the signed group
//! membership routes. Every route passes the signature check first. Triggers
//! of the configured stored events (`new-message`) are chat messages the app's
//! backend relays: they are stored like a sent message before they go out.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::signing::{Credentials, body_md5, string_to_sign};
use crate::{
    broadcast::Audience,
    chat::Chat,
    domain::{Draft, Identity, Profile, RoomId, UserId},
};

/// Largest request body (Pusher's limit).
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest `data` of one event (Pusher's limit).
pub const MAX_EVENT_DATA: usize = 10 * 1024;
pub const MAX_CHANNELS: usize = 100;
pub const MAX_BATCH: usize = 10;
/// How far `auth_timestamp` may be from the server's clock.
pub const TIMESTAMP_WINDOW_SECS: i64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // Pusher answers errors as plain text.
        (status, format!("{self}\n")).into_response()
    }
}

impl From<crate::error::ChatError> for ApiError {
    fn from(e: crate::error::ChatError) -> Self {
        Self::Internal(e.to_string())
    }
}

#[derive(Clone)]
struct Api {
    chat: Arc<Chat>,
    credentials: Arc<Credentials>,
    /// Event names stored as chat messages (PUSHER_STORED_EVENTS).
    stored: Arc<[String]>,
}

pub fn router(chat: Arc<Chat>, credentials: Credentials, stored_events: Vec<String>) -> Router {
    let api = Api {
        chat,
        credentials: Arc::new(credentials),
        stored: stored_events.into(),
    };
    Router::new()
        .route("/apps/{app_id}/events", post(trigger))
        .route("/apps/{app_id}/batch_events", post(trigger_batch))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{name}", get(channel))
        .route("/apps/{app_id}/channels/{name}/users", get(users))
        .route("/apps/{app_id}/users/{user_id}/terminate_connections", post(terminate))
        .route(
            "/apps/{app_id}/groups/{group}/members/{user_id}",
            put(add_member).delete(remove_member),
        )
        .route_layer(middleware::from_fn_with_state(api.clone(), signed))
        .with_state(api)
}

/// Reads the body (bounded), checks the app id and the signature, and hands
/// the body on.
async fn signed(State(api): State<Api>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ApiError::TooLarge(format!("Request body is larger than {MAX_BODY} bytes")).into_response();
    };
    let app_id = parts.uri.path().split('/').nth(2).unwrap_or_default();
    if app_id != api.credentials.app_id {
        return ApiError::NotFound(format!("Unknown app id {app_id}")).into_response();
    }
    let now = crate::clock::now_ms() / 1000;
    if let Err(e) = verify(
        &api.credentials,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &bytes,
        now,
    ) {
        api.chat.metrics.error("unauthorized");
        return e.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Pusher's request authentication: key, timestamp window, version, body MD5
/// and the HMAC over method, path and the sorted query.
pub fn verify(
    credentials: &Credentials,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), ApiError> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let unauthorized = |m: String| Err(ApiError::Unauthorized(m));

    let Some(key) = param("auth_key") else {
        return unauthorized("Missing auth_key".into());
    };
    if key != credentials.key {
        return unauthorized(format!("Unknown auth_key {key}"));
    }
    let Some(timestamp) = param("auth_timestamp") else {
        return unauthorized("Missing auth_timestamp".into());
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return unauthorized("auth_timestamp must be seconds since the epoch".into());
    };
    // abs_diff: `now - ts` overflows for a timestamp near i64::MIN.
    if now.abs_diff(ts) > TIMESTAMP_WINDOW_SECS.unsigned_abs() {
        return unauthorized(format!(
            "Timestamp expired: Given timestamp ({ts}) not within {TIMESTAMP_WINDOW_SECS}s of server time ({now})"
        ));
    }
    if param("auth_version") != Some("1.0") {
        return unauthorized("auth_version must be 1.0".into());
    }
    if !body.is_empty() {
        let expected = body_md5(body);
        if param("body_md5") != Some(expected.as_str()) {
            return unauthorized("The body_md5 parameter does not match the request body".into());
        }
    }
    let Some(signature) = param("auth_signature") else {
        return unauthorized("Missing auth_signature".into());
    };
    let to_sign = string_to_sign(method.as_str(), path, &params);
    if !credentials.verify(&to_sign, signature) {
        return unauthorized(format!(
            "Invalid signature: you should have sent HmacSHA256Hex({to_sign:?}, your_secret_key), but you sent \"{signature}\""
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// An event checked against Pusher's limits, ready to deliver.
struct Checked {
    name: String,
    payload: Value,
    rooms: Vec<RoomId>,
    socket_id: Option<String>,
    info: Vec<String>,
    /// Set for a stored event: the message it carries, validated.
    message: Option<Triggered>,
}

/// A chat message the backend triggered: the sender it names and the message.
struct Triggered {
    sender: Identity,
    draft: Draft,
}

/// Reads a stored event's `data`, the legacy hook's ChatMessage
/// `{ id, userId, username?, fullName?, avatar?, message, type?, media?, audio? }`.
/// The backend is trusted for the sender; the message is validated as
/// `send-message` validates it, with `id` as its clientId (retries store once).
fn triggered(name: &str, data: &Value) -> Result<Triggered, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("Invalid data for the stored event {name:?}: {why}"));
    let Value::Object(fields) = data else {
        return Err(bad("it must be a JSON object (a chat message)".into()));
    };
    let user = fields
        .get("userId")
        .and_then(UserId::from_json)
        .ok_or_else(|| bad("userId is required: a number or a non-empty string".into()))?;
    // The legacy shape nests the message under `data`, its `id` being the clientId.
    let draft = Draft::parse(&json!({ "data": data }), Some("")).map_err(|e| bad(e.to_string()))?;
    if draft.client_id.is_none() {
        return Err(bad("id is required: the sender's message id, kept as clientId".into()));
    }
    let text = |key: &str| {
        fields
            .get(key)
            .and_then(Value::as_str)
            // Stored beside the message; Postgres text cannot hold NUL.
            .map(|s| s.replace('\0', ""))
    };
    let sender = Identity {
        user,
        profile: Profile {
            username: text("username"),
            full_name: text("fullName"),
            avatar: text("avatar"),
        },
        token: "".into(),
    };
    Ok(Triggered { sender, draft })
}

fn check(event: Event, stored: &[String]) -> Result<Checked, ApiError> {
    if event.name.is_empty() || event.name.len() > 200 {
        return Err(ApiError::BadRequest("Event name must be 1-200 characters".into()));
    }
    let names = match (event.channels, event.channel) {
        (Some(list), _) if !list.is_empty() => list,
        (_, Some(one)) => vec![one],
        _ => return Err(ApiError::BadRequest("Missing channels".into())),
    };
    if names.len() > MAX_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "Cannot trigger to more than {MAX_CHANNELS} channels ({} given)",
            names.len()
        )));
    }
    let rooms = names
        .iter()
        .map(|n| RoomId::parse(n).map_err(|e| ApiError::BadRequest(format!("Invalid channel name {n:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let size = match &event.data {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    };
    if size > MAX_EVENT_DATA {
        return Err(ApiError::TooLarge(format!(
            "Event data is {size} bytes; the limit is {MAX_EVENT_DATA} bytes"
        )));
    }
    if let Some(id) = &event.socket_id
        && !is_socket_id(id)
    {
        return Err(ApiError::BadRequest(format!("Invalid socket_id {id:?}")));
    }
    // `data` that is a JSON string arrives parsed; any other string stays a string.
    let payload = match event.data {
        Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        other => other,
    };
    let message = stored
        .contains(&event.name)
        .then(|| triggered(&event.name, &payload))
        .transpose()?;
    let info = event
        .info
        .map(|i| {
            i.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Checked {
        name: event.name,
        payload,
        rooms,
        socket_id: event.socket_id,
        info,
        message,
    })
}

fn is_socket_id(id: &str) -> bool {
    let Some((a, b)) = id.split_once('.') else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("Invalid JSON body: {e}")))
}

/// Delivers a checked event and returns the requested channel info, if any.
/// A stored event is stored in each room first, and what goes out is the
/// stored message (none when an earlier identical trigger stored it already).
async fn deliver(chat: &Chat, event: &Checked) -> Result<Option<Map<String, Value>>, ApiError> {
    let except = event.socket_id.as_deref();
    for room in &event.rooms {
        match &event.message {
            Some(m) => {
                chat.send_triggered(&m.sender, room, m.draft.clone(), except).await?;
            }
            None => {
                chat.broadcaster()
                    .emit(Audience::room(room).except_socket(except), &event.name, &event.payload)
                    .await;
            }
        }
    }
    if event.info.is_empty() {
        return Ok(None);
    }
    let mut out = Map::new();
    for room in &event.rooms {
        out.insert(room.to_string(), channel_info(chat, room, &event.info).await?);
    }
    Ok(Some(out))
}

async fn channel_info(chat: &Chat, room: &RoomId, info: &[String]) -> Result<Value, ApiError> {
    let stats = chat.room_stats(room).await?;
    let mut out = Map::new();
    if info.iter().any(|i| i == "user_count") && room.as_str().starts_with("presence-") {
        out.insert("user_count".into(), json!(stats.users));
    }
    if info.iter().any(|i| i == "subscription_count") {
        out.insert("subscription_count".into(), json!(stats.sockets));
    }
    Ok(Value::Object(out))
}

async fn trigger(State(api): State<Api>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let event = check(parse_json::<Event>(&body)?, &api.stored)?;
    let info = deliver(&api.chat, &event).await?;
    Ok(Json(match info {
        Some(channels) => json!({ "channels": channels }),
        None => json!({}),
    }))
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

async fn trigger_batch(State(api): State<Api>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let batch = parse_json::<Batch>(&body)?.batch;
    if batch.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "Batch too large: {} events, at most {MAX_BATCH}",
            batch.len()
        )));
    }
    // Check everything before delivering anything: a bad batch delivers nothing.
    let checked = batch
        .into_iter()
        .map(|e| check(e, &api.stored))
        .collect::<Result<Vec<_>, _>>()?;
    let mut infos = Vec::new();
    let mut any_info = false;
    for event in &checked {
        let info = deliver(&api.chat, event).await?;
        any_info |= info.is_some();
        // Each batch entry names one channel; its info is that channel's.
        infos.push(
            info.and_then(|m| m.into_iter().next().map(|(_, v)| v))
                .unwrap_or_else(|| json!({})),
        );
    }
    Ok(Json(if any_info { json!({ "batch": infos }) } else { json!({}) }))
}

async fn channels(
    State(api): State<Api>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let prefix = params.get("filter_by_prefix").map(String::as_str).unwrap_or("");
    let info: Vec<String> = params
        .get("info")
        .map(|i| i.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let wants_users = info.iter().any(|i| i == "user_count");
    if wants_users && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest(
            "info=user_count is only valid with filter_by_prefix=presence-".into(),
        ));
    }
    let mut out = Map::new();
    let mut occupied = api.chat.occupied().await?;
    occupied.sort_by(|a, b| a.0.cmp(&b.0));
    for (room, stats) in occupied {
        if !room.as_str().starts_with(prefix) || stats.sockets == 0 {
            continue;
        }
        let entry = if wants_users {
            json!({ "user_count": stats.users })
        } else {
            json!({})
        };
        out.insert(room.to_string(), entry);
    }
    Ok(Json(json!({ "channels": out })))
}

fn channel_name(name: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(name).map_err(|e| ApiError::BadRequest(format!("Invalid channel name {name:?}: {e}")))
}

async fn channel(
    State(api): State<Api>,
    Path((_app, name)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let room = channel_name(&name)?;
    let info: Vec<String> = params
        .get("info")
        .map(|i| i.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    if info.iter().any(|i| i == "user_count") && !name.starts_with("presence-") {
        return Err(ApiError::BadRequest(
            "info=user_count is only valid for presence channels".into(),
        ));
    }
    let stats = api.chat.room_stats(&room).await?;
    let mut out = Map::new();
    out.insert("occupied".into(), json!(stats.sockets > 0));
    if let Value::Object(extra) = channel_info(&api.chat, &room, &info).await? {
        out.extend(extra);
    }
    Ok(Json(Value::Object(out)))
}

async fn users(State(api): State<Api>, Path((_app, name)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    let room = channel_name(&name)?;
    if !name.starts_with("presence-") {
        return Err(ApiError::BadRequest(
            "Users are only available for presence channels".into(),
        ));
    }
    let members = api.chat.members(&room).await?;
    let users: Vec<Value> = members.iter().map(|m| json!({ "id": m.key() })).collect();
    Ok(Json(json!({ "users": users })))
}

async fn terminate(
    State(api): State<Api>,
    Path((_app, user_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    if user_id.is_empty() {
        return Err(ApiError::BadRequest("Invalid user id".into()));
    }
    api.chat.broadcaster().disconnect_user(&user_id).await;
    tracing::info!(user = %user_id, "terminated connections");
    Ok(Json(json!({})))
}

fn group_room(group: &str, user_id: &str) -> Result<RoomId, ApiError> {
    if crate::domain::UserId::from_key(user_id).is_none() {
        return Err(ApiError::BadRequest(
            "Invalid user id: 1-128 bytes, not blank, no control characters".into(),
        ));
    }
    RoomId::parse(&format!("group-{group}")).map_err(|e| ApiError::BadRequest(format!("Invalid group {group:?}: {e}")))
}

async fn add_member(
    State(api): State<Api>,
    Path((_app, group, user_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    group_room(&group, &user_id)?;
    api.chat
        .store
        .set_group_member(&group, &user_id, true)
        .await
        .map_err(|e| {
            ApiError::Internal(crate::error::ChatError::internal("could not add group member", &e).to_string())
        })?;
    Ok(Json(json!({ "ok": true, "member": true })))
}

async fn remove_member(
    State(api): State<Api>,
    Path((_app, group, user_id)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let room = group_room(&group, &user_id)?;
    api.chat
        .store
        .set_group_member(&group, &user_id, false)
        .await
        .map_err(|e| {
            ApiError::Internal(crate::error::ChatError::internal("could not remove group member", &e).to_string())
        })?;
    api.chat
        .evict(&room, &user_id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({ "ok": true, "member": false })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials::new("3", "278d425bdf160c739803", "7ad3773142a6692b25b8")
    }

    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const QUERY: &str = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    fn status(r: Result<(), ApiError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(ApiError::Unauthorized(_)) => "401",
            Err(_) => "other",
        }
    }

    #[test]
    fn accepts_pushers_documented_request() {
        let r = verify(
            &creds(),
            &Method::POST,
            "/apps/3/events",
            Some(QUERY),
            BODY.as_bytes(),
            1353088179,
        );
        assert_eq!(status(r), "ok");
    }

    #[test]
    fn refuses_tampering_and_stale_requests() {
        let at = 1353088179;
        let post = |path: &str, query: &str, body: &str, now: i64| {
            status(verify(&creds(), &Method::POST, path, Some(query), body.as_bytes(), now))
        };
        assert_eq!(post("/apps/3/events", QUERY, BODY, at + 601), "401", "stale");
        assert_eq!(post("/apps/3/events", QUERY, BODY, at - 601), "401", "from the future");
        assert_eq!(post("/apps/3/events", QUERY, BODY, at + 600), "ok", "inside the window");
        assert_eq!(
            post("/apps/3/events", QUERY, &BODY.replace("foo", "bar"), at),
            "401",
            "body changed"
        );
        assert_eq!(post("/apps/4/events", QUERY, BODY, at), "401", "path changed");
        assert_eq!(
            post("/apps/3/events", &QUERY.replace("278d", "999d"), BODY, at),
            "401",
            "unknown key"
        );
        assert_eq!(
            post("/apps/3/events", &QUERY.replace("da45", "da46"), BODY, at),
            "401",
            "signature"
        );
        assert_eq!(
            post("/apps/3/events", &format!("{QUERY}&extra=1"), BODY, at),
            "401",
            "unsigned param"
        );
        let get = verify(
            &creds(),
            &Method::GET,
            "/apps/3/events",
            Some(QUERY),
            BODY.as_bytes(),
            at,
        );
        assert_eq!(status(get), "401", "method changed");
    }

    #[test]
    fn checks_pusher_limits() {
        let event = |v: Value| check(serde_json::from_value(v).expect("event"), &[]);
        assert!(event(json!({"name": "e", "data": "{}", "channels": ["a"]})).is_ok());
        let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        assert!(matches!(
            event(json!({"name": "e", "data": "{}", "channels": many})),
            Err(ApiError::BadRequest(_))
        ));
        let big = "x".repeat(MAX_EVENT_DATA + 1);
        assert!(matches!(
            event(json!({"name": "e", "data": big, "channel": "a"})),
            Err(ApiError::TooLarge(_))
        ));
        assert!(matches!(
            event(json!({"name": "e", "data": "{}", "channel": "a b"})),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            event(json!({"name": "e", "data": "{}", "channel": "a", "socket_id": "x"})),
            Err(ApiError::BadRequest(_))
        ));
        let parsed = event(json!({"name": "e", "data": "{\"a\":1}", "channel": "a"})).expect("ok");
        assert_eq!(parsed.payload, json!({"a": 1}));
        let plain = event(json!({"name": "e", "data": "hello", "channel": "a"})).expect("ok");
        assert_eq!(plain.payload, json!("hello"));
    }

    #[test]
    fn stored_events_carry_a_valid_legacy_message() {
        let stored = ["new-message".to_owned()];
        let event = |data: Value| {
            check(
                serde_json::from_value(json!({"name": "new-message", "channel": "private-chat-5-12", "data": data}))
                    .expect("event"),
                &stored,
            )
        };
        let ok = event(json!({"id": "temp-1", "userId": 5, "username": "alice", "fullName": "Alice", "message": "hi"}))
            .expect("valid");
        let m = ok.message.expect("stored");
        assert_eq!(m.sender.user.json(), &json!(5));
        assert_eq!(m.sender.profile.full_name.as_deref(), Some("Alice"));
        assert_eq!(m.draft.client_id.as_deref(), Some("temp-1"));
        assert_eq!(m.draft.text, "hi");
        let as_string =
            json!({"id": 7, "userId": "u-5", "message": "", "type": "image", "media": "https://x.test/a.png"});
        let m = event(Value::String(as_string.to_string()))
            .expect("a JSON string")
            .message
            .expect("stored");
        assert_eq!(m.draft.client_id.as_deref(), Some("7"));
        assert_eq!(m.sender.user.json(), &json!("u-5"));
        for bad in [
            json!("hello"),
            json!([1]),
            json!({"id": "t", "message": "no sender"}),
            json!({"id": "t", "userId": 1.5, "message": "x"}),
            json!({"userId": 5, "message": "no id"}),
            json!({"id": "t", "userId": 5, "message": "  "}),
            json!({"id": "t", "userId": 5, "message": "x", "type": "video"}),
            json!({"id": "t", "userId": 5, "message": "", "media": "javascript:alert(1)"}),
        ] {
            assert!(matches!(event(bad.clone()), Err(ApiError::BadRequest(_))), "{bad}");
        }
        let other = check(
            serde_json::from_value(json!({"name": "typing", "channel": "a", "data": "x"})).expect("event"),
            &stored,
        )
        .expect("relayed");
        assert!(other.message.is_none(), "other names are only relayed");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn creds() -> Credentials {
        Credentials::new("3", "key", "secret")
    }

    /// A query string signed like the official SDKs sign it.
    fn signed_query(method: &str, path: &str, body: &[u8], ts: i64, extra: &[(String, String)]) -> String {
        let mut params: Vec<(String, String)> = vec![
            ("auth_key".into(), "key".into()),
            ("auth_timestamp".into(), ts.to_string()),
            ("auth_version".into(), "1.0".into()),
        ];
        if !body.is_empty() {
            params.push(("body_md5".into(), body_md5(body)));
        }
        params.extend(extra.iter().cloned());
        let signature = creds().sign(&string_to_sign(method, path, &params));
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        query.append_pair("auth_signature", &signature);
        query.finish()
    }

    proptest! {
        /// Whatever arrives, the verifier answers, and only with 401.
        #[test]
        fn any_request_is_verified_or_refused_with_401(
            query in "\\PC{0,200}|(auth_[a-z_]{1,10}=[^&]{0,30}&?){0,6}",
            body in prop::collection::vec(any::<u8>(), 0..64),
            now in any::<i64>(),
            path in "/apps/[0-9]{1,3}/[a-z_/]{0,20}",
        ) {
            if let Err(e) = verify(&creds(), &Method::POST, &path, Some(&query), &body, now) {
                prop_assert_eq!(e.into_response().status(), StatusCode::UNAUTHORIZED);
            }
        }

        /// A request the SDKs would sign passes; the same with its body changed does not.
        #[test]
        fn signed_requests_pass_and_tampered_ones_do_not(
            body in prop::collection::vec(any::<u8>(), 1..64),
            skew in -600i64..=600,
            name in "[a-z]{1,8}",
            value in "\\PC{0,16}",
        ) {
            let now = 1_700_000_000;
            let path = "/apps/3/events";
            let query = signed_query("POST", path, &body, now + skew, &[(name, value)]);
            prop_assert!(verify(&creds(), &Method::POST, path, Some(&query), &body, now).is_ok());
            let mut tampered = body.clone();
            tampered[0] ^= 1;
            prop_assert!(verify(&creds(), &Method::POST, path, Some(&query), &tampered, now).is_err());
        }

        /// Outside the window, whatever the numbers (no overflow lets one through).
        #[test]
        fn timestamps_outside_the_window_are_refused(now in any::<i64>(), ts in any::<i64>()) {
            prop_assume!(now.abs_diff(ts) > 600);
            let path = "/apps/3/channels";
            let query = signed_query("GET", path, b"", ts, &[]);
            prop_assert!(verify(&creds(), &Method::GET, path, Some(&query), b"", now).is_err());
        }
    }
}
