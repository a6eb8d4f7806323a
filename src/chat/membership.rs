//! The one join/leave sequence for a connection of any transport. A
//! transport only says how its own fanout takes a connection in and out of a
//! room, and whether the connection is still there ([`Membership`]); admission,
//! the connection's record, presence, the rollback when presence fails and the
//! clean-up of a connection that went away mid-join all live here, so a second
//! transport does not copy them.

use super::{Chat, Conn};
use crate::{
    domain::{Member, RoomId},
    error::ChatError,
    pusher::PresentedAuth,
};

/// A transport's hold on one connection's rooms. Called synchronously from
/// the join/leave sequence: none of these may block.
pub trait Membership: Send + Sync {
    /// Puts the connection in the transport's fanout for `room`, as `member`.
    fn join(&self, room: &RoomId, member: &Member);
    /// Takes the connection out of the transport's fanout for `room`.
    fn leave(&self, room: &RoomId);
    /// False once the connection is gone (its disconnect clean-up may already
    /// have run, so a room entered after it would be a ghost).
    fn connected(&self) -> bool;
}

impl Chat {
    /// Admits `conn` to `room` and enters it there; the member it holds.
    /// A connection that went away while this awaited is taken out again, so
    /// no ghost stays in presence.
    pub async fn join(
        &self,
        conn: &Conn,
        room: &RoomId,
        presented: Option<&PresentedAuth>,
        via: &dyn Membership,
    ) -> Result<Member, ChatError> {
        let member = self.admit_presented(conn.seeker(), room, presented).await?;
        self.enter(conn, room, member.clone(), via).await?;
        if !via.connected()
            && let Some(member) = conn.remove(room)
        {
            via.leave(room);
            self.left(conn, room, &member).await;
        }
        Ok(member)
    }

    /// Enters `room` as `member`, already admitted: the transport's fanout,
    /// the connection's record, then presence (announcing a first
    /// connection). When presence fails, the first two are undone.
    pub async fn enter(
        &self,
        conn: &Conn,
        room: &RoomId,
        member: Member,
        via: &dyn Membership,
    ) -> Result<(), ChatError> {
        via.join(room, &member);
        conn.insert(room.clone(), member.clone());
        if let Err(e) = self.entered(conn, room, &member).await {
            conn.remove(room);
            via.leave(room);
            return Err(e);
        }
        Ok(())
    }

    /// Leaves `room`; false when the connection was not in it.
    pub async fn leave(&self, conn: &Conn, room: &RoomId, via: &dyn Membership) -> bool {
        let Some(member) = conn.remove(room) else {
            return false;
        };
        via.leave(room);
        self.left(conn, room, &member).await;
        true
    }

    /// The connection closed: it leaves every room it held (the transport
    /// forgets a closed connection's rooms by itself).
    pub async fn disconnected(&self, conn: &Conn) {
        for (room, member) in conn.drain() {
            self.left(conn, &room, &member).await;
        }
    }
}
