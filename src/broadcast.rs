//! The one place through which every event to a room passes. Chat logic,
//! REST and the Pusher HTTP API call [`Broadcaster`]; other kinds of
//! subscribers hook in here without touching them.
//!
//! Delivery to this node's sockets is per socket, so that a socket whose
//! bounded send buffer is full can be told apart and disconnected (its client
//! recovers with `since`): nobody else waits for it. With many nodes the same
//! event is also queued, in the same step, for the socketioxide-redis adapter,
//! addressed so that it skips this node's sockets; one task publishes the queue
//! in order, so every node sees this node's events in the order it did.

use std::{sync::Arc, time::Duration};

use dashmap::DashSet;
use tokio::sync::mpsc;

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::{
    SendError, SocketError, SocketIo,
    adapter::{Adapter, Emitter, LocalAdapter},
    extract::SocketRef,
    operators::BroadcastOperators,
    socket::Sid,
};

use crate::{domain::RoomId, metrics::Metrics};

/// The Socket.IO adapter that carries broadcasts between nodes.
pub type ClusterAdapter = socketioxide_redis::CustomRedisAdapter<Emitter, crate::cluster::PubSub>;

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

/// Internal room holding every socket of one node, so a broadcast handed to
/// the adapter can leave out the sockets this node delivered to itself.
fn node_room(node: &str) -> String {
    format!("#n:{node}")
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

    /// The internal rooms left out.
    fn except_rooms(&self) -> Vec<String> {
        let user = self.except_user.map(user_room);
        let socket = self.except_socket.map(socket_room);
        user.into_iter().chain(socket).collect()
    }

    fn select<A: Adapter>(&self, ns: BroadcastOperators<A>) -> BroadcastOperators<A> {
        ns.to(self.room.to_string()).except(self.except_rooms())
    }
}

/// Events waiting to be handed to the other nodes. Bounded: when Redis stalls
/// this long, later events are dropped for the other nodes (and counted)
/// rather than held without limit.
const OUTBOUND_QUEUE: usize = 65_536;

/// An event for the other nodes, addressed and encoded.
struct Outbound {
    room: String,
    except: Vec<String>,
    event: String,
    payload: Box<RawValue>,
}

#[derive(Clone)]
enum Io {
    Single(SocketIo<LocalAdapter>),
    Cluster {
        io: SocketIo<ClusterAdapter>,
        node_room: String,
        outbound: mpsc::Sender<Outbound>,
    },
}

/// Runs `$body` with `$io` bound to whichever `SocketIo` this node has.
macro_rules! with_io {
    ($self:expr, $io:ident => $body:expr) => {
        match &$self.io {
            Io::Single($io) => $body,
            Io::Cluster { io: $io, .. } => $body,
        }
    };
}

#[derive(Clone)]
pub struct Broadcaster {
    io: Io,
    metrics: Arc<Metrics>,
    /// Slow consumers being disconnected: each is counted and logged once.
    cutting_off: Arc<DashSet<Sid>>,
}

/// How often a slow consumer's disconnect is tried again while its buffer is
/// still full, and for how long at most (by then Engine.IO's ping timeout has
/// closed a client that never reads).
const CUT_OFF_RETRY: Duration = Duration::from_millis(50);
const CUT_OFF_TRIES: u32 = 1_200;

impl Broadcaster {
    pub fn single(io: SocketIo<LocalAdapter>, metrics: Arc<Metrics>) -> Self {
        Self {
            io: Io::Single(io),
            metrics,
            cutting_off: Arc::default(),
        }
    }

    /// Must be called inside the runtime: it starts the task that publishes to the other nodes.
    pub fn cluster(io: SocketIo<ClusterAdapter>, node: &str, metrics: Arc<Metrics>) -> Self {
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        tokio::spawn(publish(io.clone(), queue, metrics.clone()));
        Self {
            io: Io::Cluster {
                io,
                node_room: node_room(node),
                outbound,
            },
            metrics,
            cutting_off: Arc::default(),
        }
    }

    /// The internal rooms a new socket joins.
    pub fn rooms_of(&self, user_key: &str, socket_id: &str) -> Vec<String> {
        let mut rooms = vec![user_room(user_key), socket_room(socket_id)];
        if let Io::Cluster { node_room, .. } = &self.io {
            rooms.push(node_room.clone());
        }
        rooms
    }

    /// Sends `event` to the audience on every node; returns how many of this
    /// node's sockets got it.
    pub async fn emit<T: Serialize + ?Sized>(&self, audience: Audience<'_>, event: &str, payload: &T) -> usize {
        // Encode the payload once; each socket then only copies the bytes into its frame.
        let payload = match serde_json::value::to_raw_value(payload) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(error = %e, event, "could not encode event");
                return 0;
            }
        };
        match &self.io {
            Io::Single(io) => self.deliver_here(io, audience, event, &payload),
            Io::Cluster {
                io,
                node_room,
                outbound,
            } => {
                let delivered = self.deliver_here(io, audience, event, &payload);
                let mut except = audience.except_rooms();
                except.push(node_room.clone());
                let queued = outbound.try_send(Outbound {
                    room: audience.room.to_string(),
                    except,
                    event: event.to_owned(),
                    payload,
                });
                if queued.is_err() {
                    self.metrics.adapter_errors.inc();
                    tracing::error!(event, room = %audience.room, "queue to the other nodes is full: event not sent to them");
                }
                delivered
            }
        }
    }

    fn deliver_here<A: Adapter>(
        &self,
        io: &SocketIo<A>,
        audience: Audience<'_>,
        event: &str,
        payload: &RawValue,
    ) -> usize {
        let Some(ns) = io.of("/") else {
            return 0;
        };
        let delivered = audience
            .select(ns)
            .sockets()
            .iter()
            .filter(|s| self.send(s, event, payload))
            .count();
        self.metrics.messages_out.inc_by(delivered as u64);
        delivered
    }

    /// Sends to one socket of this node; a full buffer disconnects it.
    pub fn send<A: Adapter, T: Serialize + ?Sized>(&self, socket: &SocketRef<A>, event: &str, payload: &T) -> bool {
        match socket.emit(event, payload) {
            Ok(()) => true,
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                self.cut_off(socket);
                false
            }
            Err(SendError::Socket(SocketError::Closed)) => false,
            Err(e) => {
                tracing::error!(error = %e, event, "could not encode event");
                false
            }
        }
    }

    /// Disconnects a socket whose send buffer is full. socketioxide's own
    /// disconnect packet must fit in that same buffer, so the first try often
    /// fails; it is retried from a task until it goes through or the
    /// transport is gone, and the socket is counted and logged once.
    fn cut_off<A: Adapter>(&self, socket: &SocketRef<A>) {
        if !self.cutting_off.insert(socket.id) {
            return;
        }
        self.metrics.slow_consumers.inc();
        tracing::warn!(sid = %socket.id, "send buffer full: disconnecting slow consumer");
        let socket = socket.clone();
        let cutting_off = self.cutting_off.clone();
        tokio::spawn(async move {
            for _ in 0..CUT_OFF_TRIES {
                if !socket.connected() {
                    break;
                }
                match socket.clone().disconnect() {
                    Err(SocketError::InternalChannelFull) => tokio::time::sleep(CUT_OFF_RETRY).await,
                    Ok(()) | Err(SocketError::Closed) => break,
                }
            }
            cutting_off.remove(&socket.id);
        });
    }

    /// Disconnects every socket of a user, on every node (Pusher `terminate_connections`).
    pub async fn disconnect_user(&self, user_key: &str) {
        let result = with_io!(self, io => match io.of("/") {
            Some(ns) => ns.to(user_room(user_key)).disconnect().await,
            None => Ok(()),
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "disconnecting a user's sockets partly failed");
        }
    }

    /// Takes every socket of a user out of `room`, on every node.
    pub async fn leave_room(&self, user_key: &str, room: &RoomId) {
        let result: Result<(), String> = with_io!(self, io => match io.of("/") {
            Some(ns) => ns.to(user_room(user_key)).leave(room.to_string()).await.map_err(|e| e.to_string()),
            None => Ok(()),
        });
        if let Err(e) = result {
            self.metrics.adapter_errors.inc();
            tracing::error!(error = %e, %room, "could not take a user's sockets out of a room");
        }
    }

    /// Disconnects every socket of this node, so their clients reconnect and
    /// register again (after the cluster forgot this node).
    pub async fn disconnect_here(&self) {
        let result = with_io!(self, io => match io.of("/") {
            Some(ns) => ns.local().disconnect().await,
            None => Ok(()),
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "disconnecting this node's sockets partly failed");
        }
    }

    /// Closes every transport (shutdown).
    pub async fn close(&self) {
        with_io!(self, io => io.close().await);
    }
}

/// Hands queued events to the adapter one after another, so Redis receives
/// them (and every node delivers them) in the order this node emitted them.
async fn publish(io: SocketIo<ClusterAdapter>, mut queue: mpsc::Receiver<Outbound>, metrics: Arc<Metrics>) {
    while let Some(out) = queue.recv().await {
        let Some(ns) = io.of("/") else {
            continue;
        };
        if let Err(e) = ns
            .to(out.room.clone())
            .except(out.except)
            .emit(&out.event, &*out.payload)
            .await
        {
            metrics.adapter_errors.inc();
            tracing::error!(error = %e, event = out.event, room = out.room, "could not reach the other nodes");
        }
    }
}
