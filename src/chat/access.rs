//! Who may enter a room, decided by its kind. Every transport asks here
//! (socket join, REST read and write), so the rules hold everywhere alike.

use crate::{
    domain::{Identity, Member, RoomId, RoomKind},
    error::ChatError,
    pusher::{AuthShim, ChannelAuth, Forwarded, PresentedAuth, auth_shim::ShimError},
    store::Store,
};

/// Who asks to enter: the user, the Pusher socket id they would hold, and the
/// credentials their client sent (forwarded to the app's auth endpoint).
#[derive(Clone, Copy)]
pub struct Seeker<'a> {
    pub identity: &'a Identity,
    pub socket_id: &'a str,
    pub forwarded: &'a Forwarded,
}

/// Decides admission; returns the member as the room will show them.
pub async fn admit(
    store: &dyn Store,
    shim: Option<&AuthShim>,
    who: Seeker<'_>,
    room: &RoomId,
) -> Result<Member, ChatError> {
    let identity = who.identity;
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
        RoomKind::Private | RoomKind::Presence => {
            let shim = shim.ok_or_else(|| {
                ChatError::Forbidden(
                    "private- and presence- rooms need PUSHER_AUTH_ENDPOINT, which is not configured".into(),
                )
            })?;
            match shim
                .authorize(who.socket_id, room, who.forwarded, &identity.token)
                .await
            {
                Ok(Some(member)) => Ok(member),
                Ok(None) => Ok(Member::from_identity(identity)),
                Err(e @ ShimError::Failed(_)) => {
                    tracing::warn!(error = %e, %room, "Pusher auth endpoint failed");
                    Err(ChatError::Internal(e.to_string()))
                }
                Err(e) => Err(ChatError::Forbidden(e.to_string())),
            }
        }
    }
}

/// Admission to a `private-`/`presence-` room by an auth endpoint answer the
/// browser fetched itself for this socket (cross-site, where the server
/// cannot send the app's cookies): checked with the app secret, nobody asked.
pub fn admit_presented(
    signed: Option<&ChannelAuth>,
    who: Seeker<'_>,
    room: &RoomId,
    presented: &PresentedAuth,
) -> Result<Member, ChatError> {
    let signed = signed.ok_or_else(|| {
        ChatError::Forbidden("a presented auth needs PUSHER_KEY and PUSHER_SECRET, which are not configured".into())
    })?;
    match signed.check(
        who.socket_id,
        room.as_str(),
        &presented.auth,
        presented.channel_data.as_deref(),
    ) {
        Ok(Some(member)) => Ok(member),
        Ok(None) => Ok(Member::from_identity(who.identity)),
        Err(e) => Err(ChatError::Forbidden(e.to_string())),
    }
}
