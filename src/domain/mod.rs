//! Validated types shared by every transport: who a user is, which room they
//! mean, and what a message may contain. Parsing happens here, once, at the edge;
//! everything past this module can trust its inputs.

pub mod message;
pub mod room;
pub mod user;

pub use message::{Draft, MessageKind, StoredMessage, ValidationError};
pub use room::{RoomError, RoomId, RoomKind};
pub use user::{Identity, Member, Profile, UserId};
