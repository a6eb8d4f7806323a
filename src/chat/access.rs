//! Who may enter a room, decided by its kind. Every transport asks here
//! (socket join, REST read and write), so the rules hold everywhere alike.

use crate::{
    domain::{Identity, Member, RoomId, RoomKind},
    error::ChatError,
    store::Store,
};

/// Decides admission; returns the member as the room will show them.
pub async fn admit(store: &dyn Store, identity: &Identity, room: &RoomId) -> Result<Member, ChatError> {
    match room.kind() {
        RoomKind::Public => Ok(Member::from_identity(identity)),
        RoomKind::Direct { a, b } => {
            let me = identity.user.key();
            if me == a || me == b {
                Ok(Member::from_identity(identity))
            } else {
                Err(ChatError::Forbidden(format!(
                    "{room} is a direct room between users {a} and {b}"
                )))
            }
        }
        RoomKind::Group(group) => {
            let member = store
                .is_group_member(&group, identity.user.key())
                .await
                .map_err(|e| ChatError::internal("could not check group membership", &e))?;
            if member {
                Ok(Member::from_identity(identity))
            } else {
                Err(ChatError::Forbidden(format!("not a member of group {group}")))
            }
        }
        RoomKind::Private | RoomKind::Presence => Err(ChatError::Forbidden(
            "private- and presence- rooms need PUSHER_AUTH_ENDPOINT, which is not configured".into(),
        )),
    }
}
