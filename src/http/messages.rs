//! `GET`/`POST /api/rooms/{roomId}/messages`: history and sending over HTTP,
//! with the same access rules, validation, idempotency and broadcast as the
//! socket events.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
};
use serde_json::{Value, json};

use super::User;
use crate::{
    chat::{Chat, HISTORY_LATEST, HISTORY_MAX, Seeker, message_reply},
    domain::{Draft, Identity, Member, RoomId},
    error::ChatError,
    pusher::{Forwarded, new_socket_id},
    store::PageQuery,
};

pub fn router(max_body: usize) -> Router<Arc<Chat>> {
    Router::new()
        .route("/api/rooms/{room}/messages", get(list).post(send))
        .layer(DefaultBodyLimit::max(max_body))
}

/// REST has no socket: `private-`/`presence-` rooms ask the auth endpoint
/// with a fresh socket id and the request's own Cookie and Authorization.
async fn admit(chat: &Chat, identity: &Identity, headers: &HeaderMap, room: &RoomId) -> Result<Member, ChatError> {
    let socket_id = new_socket_id();
    let forwarded = Forwarded::from_headers(headers);
    let who = Seeker {
        identity,
        socket_id: &socket_id,
        forwarded: &forwarded,
    };
    chat.admit(who, room).await
}

fn id_param(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ChatError> {
    match params.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| ChatError::InvalidPayload(format!("{name} must be a message id"))),
    }
}

async fn list(
    State(chat): State<Arc<Chat>>,
    User(identity): User,
    headers: HeaderMap,
    Path(room): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ChatError> {
    let result = async {
        chat.gate(&identity, 0).await?;
        let room = RoomId::parse(&room)?;
        let limit = match params.get("limit").map(String::as_str) {
            None | Some("") => HISTORY_LATEST,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ChatError::InvalidPayload("limit must be a positive integer".into()))?
                .min(HISTORY_MAX),
        };
        let query = PageQuery {
            after: id_param(&params, "after")?,
            before: id_param(&params, "before")?,
            limit,
        };
        admit(&chat, &identity, &headers, &room).await?;
        let page = chat.page(&room, query).await?;
        Ok(Json(json!({ "messages": page.messages, "hasMore": page.has_more })))
    }
    .await;
    count_error(&chat, result)
}

async fn send(
    State(chat): State<Arc<Chat>>,
    User(identity): User,
    headers: HeaderMap,
    Path(room): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ChatError> {
    let result = async {
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ChatError::TooLarge(format!("the body is larger than the limit: {e}")),
            _ => ChatError::InvalidPayload(format!("could not read the body: {e}")),
        })?;
        chat.gate(&identity, body.len()).await?;
        let data: Value =
            serde_json::from_slice(&body).map_err(|e| ChatError::InvalidPayload(format!("body must be JSON: {e}")))?;
        let draft = Draft::parse(&data, Some(&room))?;
        let room = RoomId::parse(&draft.room)?;
        admit(&chat, &identity, &headers, &room).await?;
        let appended = chat.send(&identity, &room, draft).await?;
        let status = if appended.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(message_reply(&appended.message))))
    }
    .await;
    count_error(&chat, result)
}

fn count_error<T>(chat: &Chat, result: Result<T, ChatError>) -> Result<T, ChatError> {
    if let Err(e) = &result {
        chat.metrics.error(e.code());
    }
    result
}
