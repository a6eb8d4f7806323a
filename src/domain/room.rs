//! Room ids and what kind of room each names. The kind decides who may join
//! (see `chat::access`); this module only decides what is well formed.

use std::{cmp::Ordering, fmt, sync::Arc};

/// Longest room id: Pusher's channel name limit.
const MAX_LEN: usize = 164;

/// A validated room id: 1–164 characters of `[A-Za-z0-9_\-=@,.;:]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(Arc<str>);

/// What a room id names. The kind is derived from the id, never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomKind {
    /// `chat-A-B`: only users A and B (as strings; A may equal B).
    Direct { a: String, b: String },
    /// `group-N`: the members the app's backend registered for group N.
    Group(String),
    /// `private-…`: whoever the app's Pusher auth endpoint authorizes.
    Private,
    /// `presence-…`: like private, and the endpoint names the member.
    Presence,
    /// Anything else: any authenticated user.
    Public,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("room id must be 1-{MAX_LEN} characters")]
    Length,
    #[error("room id may only contain letters, digits and _-=@,.;:")]
    Charset,
    #[error("a direct room is chat-A-B with two user ids that contain no '-'")]
    MalformedDirect,
    #[error("a group room is group-N with a non-empty N")]
    MalformedGroup,
    #[error("direct room ids are canonical: use {canonical}")]
    NotCanonical { canonical: String },
}

impl RoomId {
    pub fn parse(raw: &str) -> Result<Self, RoomError> {
        if raw.is_empty() || raw.chars().count() > MAX_LEN {
            return Err(RoomError::Length);
        }
        if !raw.bytes().all(allowed) {
            return Err(RoomError::Charset);
        }
        let room = RoomId(raw.into());
        // Validate the kind now so a malformed direct room never gets past the edge.
        room.kind_checked()?;
        Ok(room)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This room's bucket among `n` (stable within one process), for
    /// spreading rooms over writers or locks. `n` must not be 0.
    pub fn shard(&self, n: usize) -> usize {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.0.hash(&mut hasher);
        hasher.finish() as usize % n
    }

    pub fn kind(&self) -> RoomKind {
        // Ids are only built by `parse`, which already ran `kind_checked`.
        self.kind_checked().unwrap_or(RoomKind::Public)
    }

    fn kind_checked(&self) -> Result<RoomKind, RoomError> {
        let s = self.as_str();
        if let Some(rest) = s.strip_prefix("chat-") {
            let mut parts = rest.split('-');
            let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(RoomError::MalformedDirect);
            };
            if a.is_empty() || b.is_empty() {
                return Err(RoomError::MalformedDirect);
            }
            // One room per pair: `chat-05-5` would be a second room for 5 and 5.
            let (ca, cb) = (canonical_part(a), canonical_part(b));
            let (lo, hi) = if compare_user_ids(ca, cb) == Ordering::Greater {
                (cb, ca)
            } else {
                (ca, cb)
            };
            if (lo, hi) != (a, b) {
                return Err(RoomError::NotCanonical {
                    canonical: format!("chat-{lo}-{hi}"),
                });
            }
            return Ok(RoomKind::Direct {
                a: a.to_owned(),
                b: b.to_owned(),
            });
        }
        if let Some(n) = s.strip_prefix("group-") {
            if n.is_empty() {
                return Err(RoomError::MalformedGroup);
            }
            return Ok(RoomKind::Group(n.to_owned()));
        }
        if s.starts_with("presence-") {
            return Ok(RoomKind::Presence);
        }
        if s.starts_with("private-") {
            return Ok(RoomKind::Private);
        }
        Ok(RoomKind::Public)
    }

    /// The canonical direct room of two users.
    pub fn direct(a: &str, b: &str) -> Result<Self, RoomError> {
        let (a, b) = (canonical_part(a), canonical_part(b));
        let (lo, hi) = if compare_user_ids(a, b) == Ordering::Greater {
            (b, a)
        } else {
            (a, b)
        };
        Self::parse(&format!("chat-{lo}-{hi}"))
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RoomId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-=@,.;:".contains(&b)
}

/// A numeric user id without its leading zeros (`007` is user 7); any other
/// id as it is.
fn canonical_part(part: &str) -> &str {
    if part.bytes().all(|c| c.is_ascii_digit()) {
        let trimmed = part.trim_start_matches('0');
        if trimmed.is_empty() { "0" } else { trimmed }
    } else {
        part
    }
}

/// Numeric ascending when both ids are all digits, else lexicographic.
fn compare_user_ids(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if numeric(a) && numeric(b) {
        // Compare as integers of any length: strip leading zeros, then length, then digits.
        let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        a.len().cmp(&b.len()).then_with(|| a.cmp(b))
    } else {
        a.cmp(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let cases = [
            (
                "chat-5-12",
                Ok(RoomKind::Direct {
                    a: "5".into(),
                    b: "12".into(),
                }),
            ),
            (
                "chat-5-5",
                Ok(RoomKind::Direct {
                    a: "5".into(),
                    b: "5".into(),
                }),
            ),
            (
                "chat-alice-bob",
                Ok(RoomKind::Direct {
                    a: "alice".into(),
                    b: "bob".into(),
                }),
            ),
            (
                "chat-12-5",
                Err(RoomError::NotCanonical {
                    canonical: "chat-5-12".into(),
                }),
            ),
            (
                "chat-bob-alice",
                Err(RoomError::NotCanonical {
                    canonical: "chat-alice-bob".into(),
                }),
            ),
            (
                "chat-05-5",
                Err(RoomError::NotCanonical {
                    canonical: "chat-5-5".into(),
                }),
            ),
            (
                "chat-5-05",
                Err(RoomError::NotCanonical {
                    canonical: "chat-5-5".into(),
                }),
            ),
            (
                "chat-12-007",
                Err(RoomError::NotCanonical {
                    canonical: "chat-7-12".into(),
                }),
            ),
            (
                "chat-0-5",
                Ok(RoomKind::Direct {
                    a: "0".into(),
                    b: "5".into(),
                }),
            ),
            (
                "chat-a05-b",
                Ok(RoomKind::Direct {
                    a: "a05".into(),
                    b: "b".into(),
                }),
            ),
            ("chat-5", Err(RoomError::MalformedDirect)),
            ("chat-5-6-7", Err(RoomError::MalformedDirect)),
            ("chat--5", Err(RoomError::MalformedDirect)),
            ("group-7", Ok(RoomKind::Group("7".into()))),
            ("group-", Err(RoomError::MalformedGroup)),
            ("private-chat-5-12", Ok(RoomKind::Private)),
            ("presence-online", Ok(RoomKind::Presence)),
            ("lobby", Ok(RoomKind::Public)),
            ("a=b@c,d.e;f:g_h", Ok(RoomKind::Public)),
            ("", Err(RoomError::Length)),
            ("has space", Err(RoomError::Charset)),
            ("#internal", Err(RoomError::Charset)),
            ("é", Err(RoomError::Charset)),
        ];
        for (raw, want) in cases {
            assert_eq!(RoomId::parse(raw).map(|r| r.kind()), want, "{raw}");
        }
    }

    #[test]
    fn length_limit() {
        assert!(RoomId::parse(&"a".repeat(164)).is_ok());
        assert_eq!(RoomId::parse(&"a".repeat(165)), Err(RoomError::Length));
    }

    #[test]
    fn numeric_order_is_by_value() {
        assert_eq!(compare_user_ids("9", "10"), Ordering::Less);
        assert_eq!(compare_user_ids("007", "10"), Ordering::Less);
        assert_eq!(
            compare_user_ids("99999999999999999999999", "100000000000000000000000"),
            Ordering::Less
        );
        assert_eq!(compare_user_ids("9", "a"), Ordering::Less);
        assert_eq!(RoomId::direct("12", "5").map(|r| r.to_string()), Ok("chat-5-12".into()));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::error::ChatError;

    proptest! {
        /// Any string: parsed or refused with `invalid_room`, never a panic;
        /// what parses is exactly the input and has a kind.
        #[test]
        fn any_string_parses_or_is_an_invalid_room(raw in "\\PC{0,170}|[A-Za-z0-9_=@,.;:-]{1,170}|chat-[0-9a-z]{0,4}-[0-9a-z]{0,4}") {
            match RoomId::parse(&raw) {
                Ok(room) => {
                    prop_assert_eq!(room.as_str(), raw.as_str());
                    prop_assert_eq!(room.kind_checked(), Ok(room.kind()));
                }
                Err(e) => prop_assert_eq!(ChatError::from(e).code(), "invalid_room"),
            }
        }

        /// Every pair of user ids has exactly one direct room, whichever way round.
        #[test]
        fn a_pair_has_one_direct_room(a in "[0-9]{1,6}|[a-z0-9_]{1,6}", b in "[0-9]{1,6}|[a-z0-9_]{1,6}") {
            let one = RoomId::direct(&a, &b).expect("canonical");
            let other = RoomId::direct(&b, &a).expect("canonical");
            prop_assert_eq!(&one, &other);
            prop_assert!(RoomId::parse(one.as_str()).is_ok());
            let swapped = format!("chat-{b}-{a}");
            if swapped != one.as_str() {
                prop_assert!(RoomId::parse(&swapped).is_err(), "{} and {} both accepted", swapped, one);
            }
        }
    }
}
