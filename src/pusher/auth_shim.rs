//! The auth shim: admits a socket to a `private-`/`presence-` room by asking
//! the app's legacy Pusher auth endpoint exactly as `pusher-js` would, then
//! checking the returned signature. Nothing is cached: each join asks again,
//! so a revoked user is refused at once. The same request, made at connect
//! time for the identity channel, tells who a connection without a JWT is.
//! Cross-site, the browser may fetch the answer itself and present it in
//! `join-room`; [`ChannelAuth`] checks it the same way.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::signing::Credentials;
use crate::domain::{Identity, Member, Profile, RoomId, UserId};

/// How user ids from `channel_data` are typed. Pusher's SDKs force them to
/// strings while legacy apps compare them as numbers, so `auto` turns a
/// canonical decimal string back into the number it was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UserIdType {
    #[default]
    Auto,
    String,
}

/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

impl UserIdType {
    /// `channel_data.user_id` as the room and the connection will show it.
    pub fn user_id(self, raw: &Value) -> Option<UserId> {
        let typed = match (self, raw) {
            (Self::Auto, Value::String(s)) => canonical_decimal(s).map_or_else(|| raw.clone(), Value::from),
            (Self::String, Value::Number(n)) => Value::String(n.to_string()),
            _ => raw.clone(),
        };
        UserId::from_json(&typed)
    }
}

/// `0`, or digits without a leading zero, no larger than 2^53 - 1.
fn canonical_decimal(s: &str) -> Option<u64> {
    let digits = !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n <= MAX_SAFE_INTEGER)
}

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

/// An auth endpoint's answer that the browser fetched itself (cross-site, where
/// the server cannot send the app's cookies) and presented in `join-room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedAuth {
    pub auth: String,
    pub channel_data: Option<String>,
}

/// Checks a channel authorization as the app's auth endpoint signs it, for
/// one socket id and channel, whoever brought it: the endpoint's own answer
/// to the shim, or one the browser presented.
#[derive(Clone)]
pub struct ChannelAuth {
    credentials: Credentials,
    user_id_type: UserIdType,
}

impl ChannelAuth {
    pub fn new(credentials: Credentials, user_id_type: UserIdType) -> Self {
        Self {
            credentials,
            user_id_type,
        }
    }

    /// Verifies `auth` for `socket_id` and `channel`; for a `presence-` channel
    /// returns the member its `channel_data` names.
    pub fn check(
        &self,
        socket_id: &str,
        channel: &str,
        auth: &str,
        channel_data: Option<&str>,
    ) -> Result<Option<Member>, ShimError> {
        if !self
            .credentials
            .verify_channel_auth(auth, socket_id, channel, channel_data)
        {
            return Err(ShimError::BadSignature);
        }
        if !channel.starts_with("presence-") {
            return Ok(None);
        }
        self.member(channel_data).map(Some)
    }

    fn member(&self, channel_data: Option<&str>) -> Result<Member, ShimError> {
        let data: ChannelData = channel_data
            .and_then(|d| serde_json::from_str(d).ok())
            .ok_or(ShimError::BadChannelData)?;
        let user = self
            .user_id_type
            .user_id(&data.user_id)
            .ok_or(ShimError::BadChannelData)?;
        Ok(Member {
            user,
            info: data.user_info.unwrap_or_default(),
        })
    }
}

pub struct AuthShim {
    client: reqwest::Client,
    endpoint: String,
    signed: ChannelAuth,
    /// The whole exchange, body included, must finish within this.
    timeout: Duration,
    /// Longest answer read; the endpoint is the app's, but a bug there must
    /// not make this server buffer whatever it sends.
    max_body: usize,
}

impl AuthShim {
    pub fn new(endpoint: String, signed: ChannelAuth, timeout: Duration, max_body: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            endpoint,
            signed,
            timeout,
            max_body,
        })
    }

    /// Asks the endpoint about `socket_id` joining `room`. For presence rooms
    /// returns the member the endpoint named in `channel_data`. `jwt` stands in
    /// for a missing Authorization header (empty: the connection has none).
    pub async fn authorize(
        &self,
        socket_id: &str,
        room: &RoomId,
        forwarded: &Forwarded,
        jwt: &str,
    ) -> Result<Option<Member>, ShimError> {
        let body = self.ask(socket_id, room.as_str(), forwarded, jwt).await?;
        parse_answer(&self.signed, &body, socket_id, room.as_str())
    }

    /// Who the connection `socket_id` is, by the app's own session: the
    /// endpoint is asked about the presence `channel` with the handshake's
    /// credentials, and its signed `channel_data` names the user.
    pub async fn identify(&self, socket_id: &str, channel: &str, forwarded: &Forwarded) -> Result<Identity, ShimError> {
        let body = self.ask(socket_id, channel, forwarded, "").await?;
        let member = parse_answer(&self.signed, &body, socket_id, channel)?.ok_or(ShimError::BadChannelData)?;
        let text = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| member.info.get(*k).and_then(Value::as_str))
                // Stored beside every message; Postgres text cannot hold NUL.
                .map(|s| s.replace('\0', ""))
        };
        Ok(Identity {
            profile: Profile {
                username: text(&["username"]),
                full_name: text(&["fullName", "name"]),
                avatar: text(&["avatar"]),
            },
            user: member.user,
            token: "".into(),
        })
    }

    /// One form post as `pusher-js` makes it; the answer's body, not yet read
    /// as JSON nor verified.
    async fn ask(
        &self,
        socket_id: &str,
        channel: &str,
        forwarded: &Forwarded,
        jwt: &str,
    ) -> Result<Vec<u8>, ShimError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("socket_id", socket_id)
            .append_pair("channel_name", channel)
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
        let authorization = match (&forwarded.authorization, jwt) {
            (Some(given), _) => Some(given.clone()),
            (None, "") => None,
            (None, jwt) => Some(format!("Bearer {jwt}")),
        };
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }

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
        // reqwest's own timeout covers the body only while bytes are awaited
        // through it; this bounds the whole exchange whatever happens.
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ShimError::Failed("timed out".into()))?
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

/// Reads a 2xx answer's body and checks it for this socket and channel; for
/// presence channels returns the member its `channel_data` names. Pure, so
/// every body an endpoint could send is tested (the property tests below).
pub fn parse_answer(
    signed: &ChannelAuth,
    body: &[u8],
    socket_id: &str,
    channel: &str,
) -> Result<Option<Member>, ShimError> {
    let answer: AuthAnswer = serde_json::from_slice(body).map_err(|_| ShimError::BadSignature)?;
    signed.check(socket_id, channel, &answer.auth, answer.channel_data.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_decimal_strings_become_numbers_in_auto() {
        let id = |t: UserIdType, v: Value| t.user_id(&v).map(|u| u.json().clone());
        let auto = UserIdType::Auto;
        assert_eq!(id(auto, json!("5")), Some(json!(5)));
        assert_eq!(id(auto, json!("0")), Some(json!(0)));
        assert_eq!(
            id(auto, json!("9007199254740991")),
            Some(json!(9_007_199_254_740_991u64))
        );
        for stays in ["9007199254740992", "05", "00", "-5", "+5", "5 ", "1e3", "user-5", "5.0"] {
            assert_eq!(id(auto, json!(stays)), Some(json!(stays)), "{stays}");
        }
        assert_eq!(id(auto, json!(7)), Some(json!(7)), "numbers stay numbers");
        assert_eq!(id(UserIdType::String, json!("5")), Some(json!("5")));
        assert_eq!(id(UserIdType::String, json!(7)), Some(json!("7")));
        assert_eq!(id(auto, json!("")), None);
        assert_eq!(id(auto, json!(null)), None);
    }

    #[test]
    fn a_presented_answer_is_checked_for_this_socket_and_channel() {
        let creds = Credentials::new("1", "key", "secret");
        let signed = ChannelAuth::new(creds.clone(), UserIdType::Auto);
        let data = r#"{"user_id":"5","user_info":{"username":"alice"}}"#;
        let auth = creds.channel_auth("1.2", "presence-online", Some(data));
        let member = signed
            .check("1.2", "presence-online", &auth, Some(data))
            .expect("valid")
            .expect("a presence member");
        assert_eq!(member.user.json(), &json!(5));
        assert_eq!(member.info.get("username"), Some(&json!("alice")));
        assert!(matches!(
            signed.check("1.3", "presence-online", &auth, Some(data)),
            Err(ShimError::BadSignature)
        ));
        assert!(matches!(
            signed.check("1.2", "presence-other", &auth, Some(data)),
            Err(ShimError::BadSignature)
        ));
        let forged = data.replace("\"5\"", "\"1\"");
        assert!(matches!(
            signed.check("1.2", "presence-online", &auth, Some(&forged)),
            Err(ShimError::BadSignature)
        ));
        let private = creds.channel_auth("1.2", "private-chat-5-12", None);
        assert!(matches!(
            signed.check("1.2", "private-chat-5-12", &private, None),
            Ok(None)
        ));
        let bare = creds.channel_auth("1.2", "presence-online", None);
        assert!(matches!(
            signed.check("1.2", "presence-online", &bare, None),
            Err(ShimError::BadChannelData)
        ));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::arb;

    fn signed() -> (Credentials, ChannelAuth) {
        let creds = Credentials::new("1", "key", "secret");
        (creds.clone(), ChannelAuth::new(creds, UserIdType::Auto))
    }

    proptest! {
        /// Any body an endpoint could send is refused or accepted, never a
        /// panic, and a refusal is a refusal (`forbidden`), not a failure.
        #[test]
        fn any_answer_is_checked_without_panicking(
            body in prop::collection::vec(any::<u8>(), 0..128),
            json in arb::json(),
            channel in "(private|presence)-[a-z0-9-]{1,10}",
        ) {
            let (_, signed) = signed();
            for body in [body, json.to_string().into_bytes()] {
                match parse_answer(&signed, &body, "1.2", &channel) {
                    Ok(_) => prop_assert!(false, "an unsigned answer was accepted"),
                    Err(e) => prop_assert!(!matches!(e, ShimError::Failed(_)), "{e:?}"),
                }
            }
        }

        /// A correctly signed answer is accepted for its socket and channel
        /// only, whatever its channel_data says.
        #[test]
        fn signed_answers_hold_for_their_socket_and_channel_only(
            data in arb::json(),
            user in "[0-9]{1,6}|[a-z]{1,8}",
            presence in any::<bool>(),
        ) {
            let (creds, signed) = signed();
            let channel = if presence { "presence-online" } else { "private-chat-5-12" };
            let channel_data = presence
                .then(|| serde_json::json!({ "user_id": user, "user_info": data }).to_string());
            let auth = creds.channel_auth("1.2", channel, channel_data.as_deref());
            let body = serde_json::json!({ "auth": auth, "channel_data": channel_data }).to_string();
            let member = parse_answer(&signed, body.as_bytes(), "1.2", channel);
            if presence && !(data.is_object() || data.is_null()) {
                // user_info must be an object: the member would have no profile.
                prop_assert!(matches!(member, Err(ShimError::BadChannelData)), "{member:?}");
            } else {
                prop_assert!(member.is_ok(), "{member:?}");
                prop_assert_eq!(member.ok().flatten().is_some(), presence);
            }
            prop_assert!(parse_answer(&signed, body.as_bytes(), "1.3", channel).is_err());
        }
    }
}
