//! The one place through which every event to a room passes. Chat logic,
//! REST and (later) the Pusher HTTP API call [`Broadcaster`]; other kinds of
//! subscribers hook in here without touching them.
//!
//! Delivery is per local socket so that a socket whose bounded send buffer is
//! full can be told apart and disconnected (its client recovers with `since`):
//! nobody else waits for it, and nothing is dropped silently.

use std::sync::Arc;

use serde::Serialize;
use socketioxide::{SendError, SocketError, SocketIo, extract::SocketRef};

use crate::{domain::RoomId, metrics::Metrics};

/// Internal room holding every socket of one user. `#` never appears in a
/// client room id, so these can't collide with rooms clients join.
pub fn user_room(user_key: &str) -> String {
    format!("#u:{user_key}")
}

/// Internal room holding the one socket with this Pusher socket id, for
/// `socket_id` exclusion.
pub fn socket_room(socket_id: &str) -> String {
    format!("#s:{socket_id}")
}

/// Who in a room receives an event.
#[derive(Debug, Clone, Copy)]
pub struct Audience<'a> {
    pub room: &'a RoomId,
    /// Leave out every socket of this user (typing, user-online).
    pub except_user: Option<&'a str>,
    /// Leave out the socket with this Pusher socket id (Pusher `socket_id`).
    pub except_socket: Option<&'a str>,
}

impl<'a> Audience<'a> {
    pub fn room(room: &'a RoomId) -> Self {
        Self {
            room,
            except_user: None,
            except_socket: None,
        }
    }

    pub fn except_user(mut self, user_key: &'a str) -> Self {
        self.except_user = Some(user_key);
        self
    }

    pub fn except_socket(mut self, socket_id: Option<&'a str>) -> Self {
        self.except_socket = socket_id;
        self
    }
}

#[derive(Clone)]
pub struct Broadcaster {
    io: SocketIo,
    metrics: Arc<Metrics>,
}

impl Broadcaster {
    pub fn new(io: SocketIo, metrics: Arc<Metrics>) -> Self {
        Self { io, metrics }
    }

    /// Sends `event` to the audience; returns how many sockets got it.
    pub fn emit<T: Serialize + ?Sized>(&self, audience: Audience<'_>, event: &str, payload: &T) -> usize {
        let Some(ns) = self.io.of("/") else {
            return 0;
        };
        let mut op = ns.to(audience.room.to_string());
        if let Some(user) = audience.except_user {
            op = op.except(user_room(user));
        }
        if let Some(socket) = audience.except_socket {
            op = op.except(socket_room(socket));
        }
        let sockets = op.sockets();
        if sockets.is_empty() {
            return 0;
        }
        // Encode the payload once; each socket then only copies the bytes into its frame.
        let payload = match serde_json::value::to_raw_value(payload) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(error = %e, event, "could not encode event");
                return 0;
            }
        };
        let delivered = sockets.iter().filter(|s| self.send(s, event, &*payload)).count();
        self.metrics.messages_out.inc_by(delivered as u64);
        delivered
    }

    /// Every local socket of a user.
    pub fn user_sockets(&self, user_key: &str) -> Vec<SocketRef> {
        self.io
            .of("/")
            .map(|ns| ns.to(user_room(user_key)).sockets())
            .unwrap_or_default()
    }

    /// Disconnects every socket of a user (Pusher `terminate_connections`).
    pub fn disconnect_user(&self, user_key: &str) -> usize {
        let sockets = self.user_sockets(user_key);
        let count = sockets.len();
        for socket in sockets {
            let _ = socket.disconnect();
        }
        count
    }

    /// Sends to one socket; a full buffer disconnects it.
    pub fn send<T: Serialize + ?Sized>(&self, socket: &SocketRef, event: &str, payload: &T) -> bool {
        match socket.emit(event, payload) {
            Ok(()) => true,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                self.metrics.slow_consumers.inc();
                tracing::warn!(sid = %socket.id, "send buffer full: disconnecting slow consumer");
                let _ = socket.clone().disconnect();
                false
            }
            Err(SendError::Socket(SocketError::Closed)) => false,
            Err(e) => {
                tracing::error!(error = %e, event, "could not encode event");
                false
            }
        }
    }
}
