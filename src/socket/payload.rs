//! Client event payloads other than messages (see `domain::message` for those):
//! tolerant of the shapes existing clients send, strict about types.

use serde_json::Value;

use crate::{error::ChatError, pusher::PresentedAuth};

fn invalid(msg: &str) -> ChatError {
    ChatError::InvalidPayload(msg.to_owned())
}

fn room_field(data: &Value) -> Result<String, ChatError> {
    match data {
        Value::String(s) => Ok(s.clone()),
        Value::Object(map) => match map.get("roomId") {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(invalid("roomId must be a string")),
            None => Err(invalid("roomId is required")),
        },
        _ => Err(invalid("payload must be an object with roomId")),
    }
}

/// `leave-room`: `{ roomId }` or a bare room id.
pub struct RoomRequest {
    pub room: String,
}

impl RoomRequest {
    pub fn parse(data: &Value) -> Result<Self, ChatError> {
        Ok(Self {
            room: room_field(data)?,
        })
    }
}

/// `join-room`: `{ roomId, since?, auth?, channel_data? }` or a bare room id.
pub struct JoinRequest {
    pub room: String,
    pub since: Option<i64>,
    /// An auth endpoint answer the browser fetched itself (cross-site).
    pub presented: Option<PresentedAuth>,
}

impl JoinRequest {
    pub fn parse(data: &Value) -> Result<Self, ChatError> {
        let since = match data.get("since") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.parse::<i64>().map_err(|_| invalid("since must be a message id"))?),
            Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| invalid("since must be a message id"))?),
            Some(_) => return Err(invalid("since must be a message id")),
        };
        if since.is_some_and(|s| s < 0) {
            return Err(invalid("since must be a message id"));
        }
        let text = |field: &str, msg: &str| match data.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(msg)),
        };
        let auth = text("auth", "auth must be the auth endpoint's auth string")?;
        let channel_data = text(
            "channel_data",
            "channel_data must be the auth endpoint's channel_data string",
        )?;
        let presented = match (auth, channel_data) {
            (Some(auth), channel_data) => Some(PresentedAuth { auth, channel_data }),
            (None, Some(_)) => return Err(invalid("channel_data comes with auth")),
            (None, None) => None,
        };
        Ok(Self {
            room: room_field(data)?,
            since,
            presented,
        })
    }
}

/// `typing`: `{ roomId, isTyping }`.
pub struct TypingRequest {
    pub room: String,
    pub is_typing: bool,
}

impl TypingRequest {
    pub fn parse(data: &Value) -> Result<Self, ChatError> {
        let room = room_field(data)?;
        let is_typing = match data.get("isTyping") {
            Some(Value::Bool(b)) => *b,
            _ => return Err(invalid("isTyping must be true or false")),
        };
        Ok(Self { room, is_typing })
    }
}

/// Length of the value's JSON, counted without building the string.
pub fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn join_shapes() {
        let j = JoinRequest::parse(&json!("lobby")).expect("bare string");
        assert_eq!((j.room.as_str(), j.since), ("lobby", None));
        let j = JoinRequest::parse(&json!({"roomId": "lobby", "since": "42"})).expect("string since");
        assert_eq!(j.since, Some(42));
        let j = JoinRequest::parse(&json!({"roomId": "lobby", "since": 42})).expect("number since");
        assert_eq!(j.since, Some(42));
        for bad in [
            json!(null),
            json!(5),
            json!({}),
            json!({"roomId": 1}),
            json!({"roomId": "r", "since": "x"}),
            json!({"roomId": "r", "since": -1}),
        ] {
            assert!(JoinRequest::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn typing_shape() {
        assert!(TypingRequest::parse(&json!({"roomId": "r", "isTyping": true})).is_ok_and(|t| t.is_typing));
        assert!(TypingRequest::parse(&json!({"roomId": "r", "isTyping": "yes"})).is_err());
        assert!(TypingRequest::parse(&json!({"roomId": "r"})).is_err());
    }

    #[test]
    fn size_matches_serialization() {
        let v = json!({"a": "é", "b": [1, 2, 3]});
        assert_eq!(json_size(&v), serde_json::to_string(&v).map(|s| s.len()).unwrap_or(0));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Draft, arb};

    /// The codes a payload may be refused with: the contract's, never internal.
    fn refused_as_the_contract_says(e: &ChatError) -> bool {
        matches!(e.code(), "invalid_payload" | "too_large")
    }

    proptest! {
        #[test]
        fn event_payloads_parse_or_are_refused_in_the_contracts_shape(data in arb::json()) {
            if let Err(e) = JoinRequest::parse(&data) {
                prop_assert!(refused_as_the_contract_says(&e), "{e:?}");
            }
            if let Err(e) = RoomRequest::parse(&data) {
                prop_assert!(refused_as_the_contract_says(&e), "{e:?}");
            }
            if let Err(e) = TypingRequest::parse(&data) {
                prop_assert!(refused_as_the_contract_says(&e), "{e:?}");
            }
            if let Err(e) = Draft::parse(&data, None) {
                prop_assert!(refused_as_the_contract_says(&ChatError::from(e)));
            }
            if let Err(e) = Draft::parse(&data, Some("lobby")) {
                prop_assert!(refused_as_the_contract_says(&ChatError::from(e)));
            }
            let _ = json_size(&data);
        }
    }
}
