//! Validated types shared by every transport: who a user is, which room they
//! mean, and what a message may contain. Parsing happens here, once, at the edge;
//! everything past this module can trust its inputs.

pub mod message;
pub mod room;
pub mod user;

pub use message::{Draft, MessageKind, StoredMessage, ValidationError};
pub use room::{RoomError, RoomId, RoomKind};
pub use user::{Identity, Member, Profile, UserId};

/// Arbitrary JSON for the property tests of everything that parses untrusted input.
#[cfg(test)]
pub(crate) mod arb {
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// Any JSON value, biased towards the keys and shapes the parsers look at
    /// so that deep paths are reached, not only the first type check.
    pub fn json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("roomId".to_owned()),
            Just("since".to_owned()),
            Just("isTyping".to_owned()),
            Just("message".to_owned()),
            Just("clientId".to_owned()),
            Just("type".to_owned()),
            Just("media".to_owned()),
            Just("audio".to_owned()),
            Just("data".to_owned()),
            Just("id".to_owned()),
            Just("targetId".to_owned()),
            Just("auth".to_owned()),
            Just("channel_data".to_owned()),
            ".{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "(chat|group|private|presence)-[0-9a-z-]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }
}
