//! What a chat message may contain, parsed from either payload shape a client
//! sends, and the stored message every transport hands back.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

pub const MAX_TEXT_CHARS: usize = 4_000;
pub const MAX_CLIENT_ID_CHARS: usize = 128;
pub const MAX_URL_CHARS: usize = 2_048;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Message,
    Icon,
    Sticker,
    Image,
    Audio,
}

impl MessageKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "message" => Self::Message,
            "icon" => Self::Icon,
            "sticker" => Self::Sticker,
            "image" => Self::Image,
            "audio" => Self::Audio,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Icon => "icon",
            Self::Sticker => "sticker",
            Self::Image => "image",
            Self::Audio => "audio",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
}

fn invalid(msg: impl Into<String>) -> ValidationError {
    ValidationError::Invalid(msg.into())
}

/// A message as a client asked to send it, validated but not yet stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The room as the client named it; the caller parses it into a `RoomId`.
    pub room: String,
    pub client_id: Option<String>,
    pub text: String,
    pub kind: MessageKind,
    pub media: Option<String>,
    pub audio: Option<String>,
    /// Old Pusher hook shape: the other participant of a direct room.
    pub target_id: Option<String>,
}

impl Draft {
    /// Parses `{ roomId, clientId?, message, type?, media?, audio? }` or the
    /// old hook's `{ roomId, targetId?, data: { id, message, type, media, audio } }`.
    /// `room_from_path` (REST) overrides any `roomId` in the body. Sender fields
    /// (`userId`, `username`, …) are ignored: the sender is the token's user.
    pub fn parse(payload: &Value, room_from_path: Option<&str>) -> Result<Self, ValidationError> {
        let top = payload
            .as_object()
            .ok_or_else(|| invalid("payload must be an object"))?;
        let room = match room_from_path {
            Some(r) => r.to_owned(),
            None => required_str(top, "roomId")?,
        };
        let (body, legacy) = match top.get("data") {
            Some(Value::Object(data)) => (data, true),
            Some(Value::Null) | None => (top, false),
            Some(_) => return Err(invalid("data must be an object")),
        };

        let client_id = match top.get("clientId") {
            Some(v) if !v.is_null() => Some(v),
            _ if legacy => body.get("id").filter(|v| !v.is_null()),
            _ => None,
        }
        .map(client_id)
        .transpose()?;

        let kind = match body.get("type") {
            None | Some(Value::Null) => MessageKind::Message,
            Some(Value::String(s)) => MessageKind::parse(s)
                .ok_or_else(|| invalid("type must be one of message, icon, sticker, image, audio"))?,
            Some(_) => return Err(invalid("type must be a string")),
        };
        let media = optional_url(body, "media")?;
        let audio = optional_url(body, "audio")?;

        let text = match body.get("message") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("message must be a string")),
        };
        no_nul("message", &text)?;
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(ValidationError::TooLarge(format!(
                "message is {chars} characters; at most {MAX_TEXT_CHARS} are allowed"
            )));
        }
        if text.trim().is_empty() && media.is_none() && audio.is_none() {
            return Err(invalid("message is empty: send text, media or audio"));
        }

        let target_id = match top.get("targetId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(invalid("targetId must be a string or a number")),
        };

        Ok(Self {
            room,
            client_id,
            text,
            kind,
            media,
            audio,
            target_id,
        })
    }
}

fn required_str(map: &Map<String, Value>, field: &str) -> Result<String, ValidationError> {
    match map.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(invalid(format!("{field} must be a string"))),
        None => Err(invalid(format!("{field} is required"))),
    }
}

fn client_id(v: &Value) -> Result<String, ValidationError> {
    let id = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(invalid("clientId must be a string or a number")),
    };
    if id.is_empty() || id.chars().count() > MAX_CLIENT_ID_CHARS {
        return Err(invalid(format!("clientId must be 1-{MAX_CLIENT_ID_CHARS} characters")));
    }
    no_nul("clientId", &id)?;
    Ok(id)
}

/// Postgres text cannot hold U+0000, so no store may be handed one: the same
/// message must be accepted or refused alike on every engine.
fn no_nul(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.contains('\0') {
        return Err(invalid(format!("{field} must not contain NUL (U+0000)")));
    }
    Ok(())
}

fn optional_url(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ValidationError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            no_nul(field, s)?;
            if s.len() > MAX_URL_CHARS {
                return Err(ValidationError::TooLarge(format!(
                    "{field} URL is longer than {MAX_URL_CHARS}"
                )));
            }
            match url::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(Some(s.clone())),
                _ => Err(invalid(format!("{field} must be an http(s) URL"))),
            }
        }
        Some(_) => Err(invalid(format!("{field} must be a URL string"))),
    }
}

/// A message as stored and as every client sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    #[serde(serialize_with = "decimal_string")]
    pub id: i64,
    pub room_id: String,
    pub user_id: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: MessageKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
    /// Milliseconds since the epoch, taken by the server when it stored the message.
    pub timestamp: i64,
}

fn decimal_string<S: Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Draft, ValidationError> {
        Draft::parse(&v, None)
    }

    #[test]
    fn new_shape() {
        let d = parse(json!({"roomId": "chat-5-12", "clientId": 42, "message": "hi", "userId": 99})).expect("valid");
        assert_eq!(d.room, "chat-5-12");
        assert_eq!(d.client_id.as_deref(), Some("42"));
        assert_eq!(d.text, "hi");
        assert_eq!(d.kind, MessageKind::Message);
    }

    #[test]
    fn legacy_shape() {
        let d = parse(json!({
            "roomId": "chat-5-12", "targetId": 12,
            "data": {"id": "temp-1-abc", "message": "", "type": "image", "media": "https://x.test/a.png", "userId": 1}
        }))
        .expect("valid");
        assert_eq!(d.client_id.as_deref(), Some("temp-1-abc"));
        assert_eq!(d.kind, MessageKind::Image);
        assert_eq!(d.media.as_deref(), Some("https://x.test/a.png"));
        assert_eq!(d.target_id.as_deref(), Some("12"));
    }

    #[test]
    fn rejections() {
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        let cases = [
            (json!("chat-5-12"), false),
            (json!(null), false),
            (json!({"message": "hi"}), false),
            (json!({"roomId": 5, "message": "hi"}), false),
            (json!({"roomId": "r", "message": ""}), false),
            (json!({"roomId": "r", "message": "   "}), false),
            (json!({"roomId": "r", "message": 5}), false),
            (json!({"roomId": "r", "message": "hi", "type": "video"}), false),
            (
                json!({"roomId": "r", "message": "", "media": "javascript:alert(1)"}),
                false,
            ),
            (
                json!({"roomId": "r", "message": "hi", "clientId": "x".repeat(129)}),
                false,
            ),
            (json!({"roomId": "r", "message": "hi", "clientId": {}}), false),
            (json!({"roomId": "r", "message": "a\u{0}b"}), false),
            (json!({"roomId": "r", "message": "hi", "clientId": "c\u{0}"}), false),
            (
                json!({"roomId": "r", "message": "", "media": "https://x.test/a\u{0}.png"}),
                false,
            ),
            (
                json!({"roomId": "r", "message": "", "audio": "https://x.test/\u{0}"}),
                false,
            ),
            (json!({"roomId": "r", "message": long}), true),
        ];
        for (payload, too_large) in cases {
            match parse(payload.clone()) {
                Err(ValidationError::TooLarge(_)) => assert!(too_large, "{payload}"),
                Err(ValidationError::Invalid(_)) => assert!(!too_large, "{payload}"),
                Ok(d) => panic!("accepted {payload}: {d:?}"),
            }
        }
    }

    #[test]
    fn exactly_the_limit_is_fine_and_counts_characters() {
        let text = "é".repeat(MAX_TEXT_CHARS);
        assert!(parse(json!({"roomId": "r", "message": text})).is_ok());
    }

    #[test]
    fn stored_id_is_a_decimal_string() {
        let m = StoredMessage {
            id: 17,
            room_id: "r".into(),
            user_id: json!(5),
            username: None,
            full_name: None,
            avatar: None,
            client_id: None,
            message: "hi".into(),
            kind: MessageKind::Icon,
            media: None,
            audio: None,
            timestamp: 1,
        };
        let v = serde_json::to_value(&m).expect("serializes");
        assert_eq!(v["id"], json!("17"));
        assert_eq!(v["type"], json!("icon"));
        assert!(v.get("media").is_none());
    }
}
