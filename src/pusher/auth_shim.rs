//! The auth shim: admits a socket to a `private-`/`presence-` room by asking
//! the app's legacy Pusher auth endpoint exactly as `pusher-js` would, then
//! checking the returned signature. Nothing is cached: each join asks again,
//! so a revoked user is refused at once.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::signing::Credentials;
use crate::domain::{Member, RoomId, UserId};

/// The client's own credentials, forwarded to the auth endpoint as its
/// browser would have sent them.
#[derive(Debug, Clone, Default)]
pub struct Forwarded {
    pub cookie: Option<String>,
    pub authorization: Option<String>,
}

impl Forwarded {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let get = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self {
            cookie: get(header::COOKIE),
            authorization: get(header::AUTHORIZATION),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("the auth endpoint refused access ({0})")]
    Denied(StatusCode),
    #[error("the auth endpoint's answer is not validly signed for this socket and room")]
    BadSignature,
    #[error("the auth endpoint's channel_data has no usable user_id")]
    BadChannelData,
    #[error("auth endpoint failed: {0}")]
    Failed(String),
}

#[derive(Deserialize)]
struct AuthAnswer {
    auth: String,
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct ChannelData {
    user_id: Value,
    #[serde(default)]
    user_info: Option<Map<String, Value>>,
}

pub struct AuthShim {
    client: reqwest::Client,
    endpoint: String,
    credentials: Credentials,
    /// The whole exchange, body included, must finish within this.
    timeout: Duration,
    /// Longest answer read; the endpoint is the app's, but a bug there must
    /// not make this server buffer whatever it sends.
    max_body: usize,
}

impl AuthShim {
    pub fn new(endpoint: String, credentials: Credentials, timeout: Duration, max_body: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            endpoint,
            credentials,
            timeout,
            max_body,
        })
    }

    /// Asks the endpoint about `socket_id` joining `room`. For presence rooms
    /// returns the member the endpoint named in `channel_data`.
    pub async fn authorize(
        &self,
        socket_id: &str,
        room: &RoomId,
        forwarded: &Forwarded,
        jwt: &str,
    ) -> Result<Option<Member>, ShimError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("socket_id", socket_id)
            .append_pair("channel_name", room.as_str())
            .finish();
        let mut request = self
            .client
            .post(&self.endpoint)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body);
        if let Some(cookie) = &forwarded.cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let authorization = forwarded
            .authorization
            .clone()
            .unwrap_or_else(|| format!("Bearer {jwt}"));
        request = request.header(header::AUTHORIZATION, authorization);

        let exchange = async {
            let response = request.send().await.map_err(failed)?;
            let status = response.status();
            if status.is_server_error() || status.is_informational() || status.is_redirection() {
                return Err(ShimError::Failed(format!("it answered {status}")));
            }
            if !status.is_success() {
                return Err(ShimError::Denied(status));
            }
            read_capped(response, self.max_body).await
        };
        // reqwest's own timeout covers the body too, but only while bytes are
        // awaited through it; this bounds the whole exchange whatever happens.
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ShimError::Failed("timed out".into()))??;
        parse_answer(&self.credentials, &body, socket_id, room)
    }
}

fn failed(e: reqwest::Error) -> ShimError {
    ShimError::Failed(if e.is_timeout() {
        "timed out".into()
    } else {
        e.to_string()
    })
}

/// Reads the body, at most `max` bytes of it; a stalled or broken body is the
/// endpoint failing (`internal`, retryable), not a refusal.
async fn read_capped(mut response: reqwest::Response, max: usize) -> Result<Vec<u8>, ShimError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(ShimError::Failed(format!("its answer is larger than {max} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > max {
            return Err(ShimError::Failed(format!("its answer is larger than {max} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks a 2xx answer's signature for this socket and room; for presence
/// rooms returns the member its `channel_data` names. Pure, so every answer
/// an endpoint could send is tested (proptest below).
pub fn parse_answer(
    credentials: &Credentials,
    body: &[u8],
    socket_id: &str,
    room: &RoomId,
) -> Result<Option<Member>, ShimError> {
    let answer: AuthAnswer = serde_json::from_slice(body).map_err(|_| ShimError::BadSignature)?;
    let channel_data = answer.channel_data.as_deref();
    if !credentials.verify_channel_auth(&answer.auth, socket_id, room.as_str(), channel_data) {
        return Err(ShimError::BadSignature);
    }
    if !room.as_str().starts_with("presence-") {
        return Ok(None);
    }
    let data: ChannelData = channel_data
        .and_then(|d| serde_json::from_str(d).ok())
        .ok_or(ShimError::BadChannelData)?;
    let user = UserId::from_json(&data.user_id).ok_or(ShimError::BadChannelData)?;
    Ok(Some(Member {
        user,
        info: data.user_info.unwrap_or_default(),
    }))
}
