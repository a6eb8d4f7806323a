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
}

impl AuthShim {
    pub fn new(endpoint: String, credentials: Credentials, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            endpoint,
            credentials,
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

        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.to_string()
            };
            ShimError::Failed(why)
        })?;
        let status = response.status();
        if status.is_server_error() || status.is_informational() || status.is_redirection() {
            return Err(ShimError::Failed(format!("it answered {status}")));
        }
        if !status.is_success() {
            return Err(ShimError::Denied(status));
        }
        let answer: AuthAnswer = response.json().await.map_err(|_| ShimError::BadSignature)?;
        let channel_data = answer.channel_data.as_deref();
        if !self
            .credentials
            .verify_channel_auth(&answer.auth, socket_id, room.as_str(), channel_data)
        {
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
}
