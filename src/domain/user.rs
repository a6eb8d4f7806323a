//! User identity as the token states it: the id keeps its JSON type (a number
//! stays a number in every payload) while users are compared by its string form.

use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// A user id as the token gave it. `key` is the string form used for every
/// comparison, so `5` and `"5"` are one user.
#[derive(Clone, Debug)]
pub struct UserId {
    json: Value,
    key: Arc<str>,
}

impl UserId {
    /// Accepts a non-empty string or an integer; anything else is not an id.
    pub fn from_json(value: &Value) -> Option<Self> {
        let key = match value {
            Value::String(s) if valid_key(s) => s.clone(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => return None,
        };
        Some(Self {
            json: value.clone(),
            key: key.into(),
        })
    }

    /// A user id given as a path segment or form field (always a string).
    pub fn from_key(key: &str) -> Option<Self> {
        Self::from_json(&Value::String(key.to_owned()))
    }

    /// The string form: what users are compared by.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id with the JSON type the token gave it.
    pub fn json(&self) -> &Value {
        &self.json
    }
}

/// The one rule for a string user id, whatever the engine: non-blank, at most
/// 128 bytes, and no control characters (Postgres can't store NUL, and a
/// newline in an id breaks logs and Pusher's own `user_id`s).
fn valid_key(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
}

impl PartialEq for UserId {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for UserId {}

impl Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

/// Optional profile claims, shown to others in `members` and on messages.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
}

/// An authenticated user: who they are, and the credential they came with
/// (kept so that later checks, such as the Pusher auth shim, can forward it).
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: UserId,
    pub profile: Profile,
    pub token: Arc<str>,
}

/// One entry of a room's `members`: an id and a flat bag of profile fields.
/// In ordinary rooms the fields are the token's profile; presence rooms put
/// the auth endpoint's `user_info` here instead.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub user: UserId,
    pub info: Map<String, Value>,
}

impl Member {
    pub fn from_identity(identity: &Identity) -> Self {
        let info = match serde_json::to_value(&identity.profile) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Self {
            user: identity.user.clone(),
            info,
        }
    }

    pub fn key(&self) -> &str {
        self.user.key()
    }

    /// Reads back what [`Member`]'s `Serialize` wrote.
    pub fn from_value(value: Value) -> Option<Self> {
        let Value::Object(mut info) = value else {
            return None;
        };
        let user = UserId::from_json(&info.remove("userId")?)?;
        Some(Self { user, info })
    }
}

impl Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.info.len() + 1))?;
        map.serialize_entry("userId", &self.user)?;
        for (k, v) in &self.info {
            if k != "userId" {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_keep_their_json_type_but_compare_by_string() {
        let n = UserId::from_json(&json!(5)).expect("number id");
        let s = UserId::from_json(&json!("5")).expect("string id");
        assert_eq!(n, s);
        assert_eq!(serde_json::to_value(&n).ok(), Some(json!(5)));
        assert_eq!(serde_json::to_value(&s).ok(), Some(json!("5")));
    }

    #[test]
    fn rejects_what_is_not_an_id() {
        for bad in [
            json!(""),
            json!("  "),
            json!(1.5),
            json!(null),
            json!([1]),
            json!({"a": 1}),
            json!(true),
            json!("a\u{0}b"),
            json!("a\nb"),
            json!("a\rb"),
            json!("tab\tbed"),
            json!("x".repeat(129)),
        ] {
            assert!(UserId::from_json(&bad).is_none(), "{bad} accepted");
        }
    }

    #[test]
    fn member_serializes_flat() {
        let identity = Identity {
            user: UserId::from_json(&json!(12)).expect("id"),
            profile: Profile {
                username: Some("carol".into()),
                full_name: None,
                avatar: None,
            },
            token: "t".into(),
        };
        let member = Member::from_identity(&identity);
        let v = serde_json::to_value(&member).ok();
        assert_eq!(v, Some(json!({"userId": 12, "username": "carol"})));
        assert_eq!(v.and_then(Member::from_value), Some(member), "round trip");
    }
}
