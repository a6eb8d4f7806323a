//! The one place through which every event to a room passes. Chat logic,
//! REST and the Pusher HTTP API call [`Broadcaster`]; other kinds of
//! subscribers hook in here without touching them.
//!
//! An event is encoded once, then handed to this node's sockets one by one,
//! so that a socket whose bounded send buffer is full can be told apart and
//! disconnected (its client recovers with `since`): nobody else waits for it.
//! With many nodes the same event is also queued, in the same step, for the
//! others: one task publishes the queue in order on the cluster's event
//! channel, and every other node hands what it receives to its own
//! broadcaster, which delivers it the same way. So every node sees this
//! node's events in the order it did, and cuts off its own slow consumers
//! whichever node an event came from.
//!
//! Connections of other protocols (Pusher WebSocket) register in
//! [`Subscribers`] and get every room event here too, local or from another
//! node, with the same exclusions; Socket.IO's own fanout is untouched.
//!
//! `new-message` carries one more argument, last: the message id, which is the
//! offset socket.io-client's connection state recovery keeps and hands back on
//! a reconnect ([`crate::chat::sessions`]). It is the same for every socket of
//! the room, so the packet is still encoded once. Other events carry none.

use std::{sync::Arc, time::Duration};

use dashmap::DashSet;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socketioxide::{
    SocketError, SocketIo,
    adapter::{Adapter, Emitter, LocalAdapter},
    extract::SocketRef,
    socket::Sid,
};
use socketioxide_core::Value;
use socketioxide_redis::drivers::Driver;
use tokio::sync::mpsc;

use crate::{
    cluster::PubSub,
    domain::{RoomId, StoredMessage},
    metrics::Metrics,
    subscribers::{RoomEvent, Subscribers},
};

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
}

/// Events waiting to be handed to the other nodes. Bounded: when Redis stalls
/// this long, later events are dropped for the other nodes (and counted)
/// rather than held without limit.
const OUTBOUND_QUEUE: usize = 65_536;

/// Events from the other nodes waiting for this one; sized for bursts of
/// fanout, not for a node that stopped reading.
const INBOUND_QUEUE: usize = 65_536;

/// An event as it crosses between nodes: addressed, its payload already encoded.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The node that emitted it (which skips it when it comes back).
    node: String,
    room: String,
    except: Vec<String>,
    event: String,
    payload: Box<RawValue>,
    /// The user a client event came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from_user: Option<String>,
    /// Set for a membership operation instead of an event: Socket.IO sockets
    /// get those through their adapter, the other subscribers through this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<Op>,
    /// The recovery offset sent as the last argument (`new-message` only).
    /// Absent from an older node's envelopes, and then none is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<String>,
}

/// A membership operation on the other protocols' connections of every node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// Take the user's connections out of the envelope's room.
    Evict { user: String },
    /// Close every connection of the user.
    Terminate { user: String },
}

/// One event on its way to this node's connections.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    event: &'a str,
    payload: &'a RawValue,
    /// The user a client event came from.
    from_user: Option<&'a str>,
    /// The recovery offset (`new-message` only).
    offset: Option<&'a str>,
}

/// The pub/sub channel events cross between nodes on.
fn events_channel(prefix: &str) -> String {
    format!("{prefix}:events")
}

/// Locks that make delivering an event here and queueing it for the other
/// nodes one step per room (striped by room, so rooms don't wait on each other).
const ORDER_STRIPES: usize = 64;

#[derive(Clone)]
enum Io {
    Single(SocketIo<LocalAdapter>),
    Cluster {
        io: SocketIo<ClusterAdapter>,
        node: String,
        outbound: mpsc::Sender<Envelope>,
        order: Arc<[std::sync::Mutex<()>; ORDER_STRIPES]>,
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
    /// Connections of other protocols, fed by the same emits.
    subscribers: Arc<Subscribers>,
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
            subscribers: Arc::default(),
        }
    }

    /// Subscribes to the cluster's event channel, then starts the tasks that
    /// publish this node's events to it and deliver the other nodes' events here.
    pub async fn cluster(
        io: SocketIo<ClusterAdapter>,
        pubsub: PubSub,
        prefix: &str,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        let channel = events_channel(prefix);
        let inbound = pubsub.subscribe(channel.clone(), INBOUND_QUEUE).await?;
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let broadcaster = Self {
            io: Io::Cluster {
                io,
                node: node.to_owned(),
                outbound,
                order: Arc::new(std::array::from_fn(|_| std::sync::Mutex::new(()))),
            },
            metrics: metrics.clone(),
            cutting_off: Arc::default(),
            subscribers: Arc::default(),
        };
        tokio::spawn(publish(pubsub, channel, queue, metrics));
        tokio::spawn(broadcaster.clone().receive(inbound));
        Ok(broadcaster)
    }

    /// The internal rooms a new socket joins.
    pub fn rooms_of(&self, user_key: &str, socket_id: &str) -> Vec<String> {
        vec![user_room(user_key), socket_room(socket_id)]
    }

    /// This node's connections of other protocols.
    pub fn subscribers(&self) -> &Subscribers {
        &self.subscribers
    }

    /// Sends `event` to the audience on every node; returns how many of this
    /// node's connections got it.
    pub async fn emit<T: Serialize + ?Sized>(&self, audience: Audience<'_>, event: &str, payload: &T) -> usize {
        self.emit_inner(audience, event, payload, None, None).await
    }

    /// [`Broadcaster::emit`] for a client event: `from_user` is the user who
    /// sent it (Pusher shows it on presence channels).
    pub async fn emit_from<T: Serialize + ?Sized>(
        &self,
        audience: Audience<'_>,
        event: &str,
        payload: &T,
        from_user: Option<&str>,
    ) -> usize {
        self.emit_inner(audience, event, payload, from_user, None).await
    }

    /// Sends a stored message as `new-message`, its id as the last argument
    /// (the recovery offset), to the audience on every node.
    pub async fn emit_message(&self, audience: Audience<'_>, message: &StoredMessage) -> usize {
        self.emit_inner(audience, "new-message", message, None, Some(message.id.to_string()))
            .await
    }

    async fn emit_inner<T: Serialize + ?Sized>(
        &self,
        audience: Audience<'_>,
        event: &str,
        payload: &T,
        from_user: Option<&str>,
        offset: Option<String>,
    ) -> usize {
        // JSON once: the other nodes get these bytes as they are, and each node
        // wraps them into one Socket.IO packet for all of its sockets.
        let payload = match serde_json::value::to_raw_value(payload) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::error!(error = %e, event, "could not encode event");
                return 0;
            }
        };
        let room = audience.room.to_string();
        let except = audience.except_rooms();
        match &self.io {
            Io::Single(io) => self.deliver_here(
                io,
                room,
                except,
                Outgoing {
                    event,
                    payload: &payload,
                    from_user,
                    offset: offset.as_deref(),
                },
            ),
            Io::Cluster {
                io,
                node,
                outbound,
                order,
            } => {
                // Two emits to one room from different threads must not cross
                // between delivering here and queueing for the others, or the
                // other nodes would see them in another order than this one.
                // Held for synchronous work only, never across an await.
                let turn = order[audience.room.shard(ORDER_STRIPES)]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let delivered = self.deliver_here(
                    io,
                    room.clone(),
                    except.clone(),
                    Outgoing {
                        event,
                        payload: &payload,
                        from_user,
                        offset: offset.as_deref(),
                    },
                );
                let queued = outbound.try_send(Envelope {
                    node: node.clone(),
                    room,
                    except,
                    event: event.to_owned(),
                    payload,
                    from_user: from_user.map(str::to_owned),
                    op: None,
                    offset,
                });
                drop(turn);
                if queued.is_err() {
                    self.metrics.adapter_errors.inc();
                    tracing::error!(event, room = %audience.room, "queue to the other nodes is full: event not sent to them");
                }
                delivered
            }
        }
    }

    /// Delivers to this node's connections in `room` but not in any of `except`.
    fn deliver_here<A: Adapter>(
        &self,
        io: &SocketIo<A>,
        room: String,
        except: Vec<String>,
        out: Outgoing<'_>,
    ) -> usize {
        let others = self
            .subscribers
            .deliver(&RoomEvent::new(&room, out.event, out.payload, out.from_user), &except);
        let delivered = others + self.deliver_to_sockets(io, room, except, out.event, out.payload, out.offset);
        self.metrics.messages_out.inc_by(delivered as u64);
        delivered
    }

    /// The Socket.IO part of [`Broadcaster::deliver_here`].
    fn deliver_to_sockets<A: Adapter>(
        &self,
        io: &SocketIo<A>,
        room: String,
        except: Vec<String>,
        event: &str,
        payload: &RawValue,
        offset: Option<&str>,
    ) -> usize {
        let Some(ns) = io.of("/") else {
            return 0;
        };
        let sockets = ns.to(room).except(except).sockets();
        // Encoded once for the whole room; each socket gets the same bytes.
        let Some(packet) = sockets.first().and_then(|s| encode(s, event, payload, offset)) else {
            return 0;
        };
        sockets
            .iter()
            .filter(|s| self.sent(s, s.send_encoded(packet.clone())))
            .count()
    }

    /// Delivers the other nodes' events here, in the order they were published.
    async fn receive(self, mut inbound: impl futures_util::Stream<Item = (String, Vec<u8>)> + Unpin) {
        let Io::Cluster { io, node, .. } = &self.io else {
            return;
        };
        while let Some((_, bytes)) = inbound.next().await {
            let envelope: Envelope = match serde_json::from_slice(&bytes) {
                Ok(envelope) => envelope,
                Err(e) => {
                    self.metrics.adapter_errors.inc();
                    tracing::error!(error = %e, "unreadable event from another node");
                    continue;
                }
            };
            if envelope.node == *node {
                continue;
            }
            match &envelope.op {
                Some(Op::Evict { user }) => self.subscribers.evict_user(&envelope.room, user),
                Some(Op::Terminate { user }) => self.subscribers.terminate_user(user),
                None => {
                    self.deliver_here(
                        io,
                        envelope.room,
                        envelope.except,
                        Outgoing {
                            event: &envelope.event,
                            payload: &envelope.payload,
                            from_user: envelope.from_user.as_deref(),
                            offset: envelope.offset.as_deref(),
                        },
                    );
                }
            }
        }
    }

    /// Sends to one socket of this node; a full buffer disconnects it.
    pub fn send<A: Adapter, T: Serialize + ?Sized>(&self, socket: &SocketRef<A>, event: &str, payload: &T) -> bool {
        encode(socket, event, payload, None).is_some_and(|packet| self.sent(socket, socket.send_encoded(packet)))
    }

    /// Sends a stored message as `new-message` to one socket of this node,
    /// with its offset, as [`Broadcaster::emit_message`] does (recovery replays).
    pub fn send_message<A: Adapter>(&self, socket: &SocketRef<A>, message: &StoredMessage) -> bool {
        let offset = message.id.to_string();
        encode(socket, "new-message", message, Some(&offset))
            .is_some_and(|packet| self.sent(socket, socket.send_encoded(packet)))
    }

    /// An acknowledgement that could not be queued: past the socket's buffer,
    /// it is a slow consumer like any other.
    pub fn ack_failed<A: Adapter>(&self, socket: &SocketRef<A>, error: socketioxide::SendError) {
        match error {
            socketioxide::SendError::Socket(e) => {
                self.sent(socket, Err(e));
            }
            socketioxide::SendError::Serialize(e) => tracing::error!(error = %e, "could not encode an ack"),
        }
    }

    /// Whether a send went through; a full buffer disconnects the socket.
    fn sent<A: Adapter>(&self, socket: &SocketRef<A>, result: Result<(), SocketError>) -> bool {
        match result {
            Ok(()) => true,
            Err(SocketError::InternalChannelFull) => {
                self.cut_off(socket);
                false
            }
            Err(SocketError::Closed) => false,
        }
    }

    /// Disconnects a socket whose send buffer is full. socketioxide's own
    /// disconnect packet must fit in that same buffer, so the first try often
    /// fails; it is retried from a task until it goes through or the
    /// transport is gone, and the socket is counted and logged once.
    fn cut_off<A: Adapter>(&self, socket: &SocketRef<A>) {
        // Events already received keep being answered for a moment after the
        // disconnect: the socket is cut off once.
        if !socket.connected() || !self.cutting_off.insert(socket.id) {
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

    /// Queues a membership operation for the other nodes' subscribers.
    fn relay(&self, room: &str, op: Op) {
        let Io::Cluster { node, outbound, .. } = &self.io else {
            return;
        };
        let envelope = Envelope {
            node: node.clone(),
            room: room.to_owned(),
            except: Vec::new(),
            event: String::new(),
            payload: RawValue::NULL.to_owned(),
            from_user: None,
            op: Some(op),
            offset: None,
        };
        if outbound.try_send(envelope).is_err() {
            self.metrics.adapter_errors.inc();
            tracing::error!(
                room,
                "queue to the other nodes is full: membership change not sent to them"
            );
        }
    }

    /// Disconnects every socket of a user, on every node (Pusher `terminate_connections`).
    pub async fn disconnect_user(&self, user_key: &str) {
        self.subscribers.terminate_user(user_key);
        self.relay(
            "",
            Op::Terminate {
                user: user_key.to_owned(),
            },
        );
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
        self.subscribers.evict_user(room.as_str(), user_key);
        self.relay(
            room.as_str(),
            Op::Evict {
                user: user_key.to_owned(),
            },
        );
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
        self.subscribers.terminate_all();
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
        self.subscribers.terminate_all();
        with_io!(self, io => io.close().await);
    }
}

/// The whole Socket.IO packet for `event`, as `socket`'s namespace sends it:
/// the payload, then the offset as a second argument when there is one.
fn encode<A: Adapter, T: Serialize + ?Sized>(
    socket: &SocketRef<A>,
    event: &str,
    payload: &T,
    offset: Option<&str>,
) -> Option<Value> {
    let encoded = match offset {
        // A tuple is sent as that many arguments.
        Some(offset) => socket.encode_event(event, &(payload, offset)),
        None => socket.encode_event(event, payload),
    };
    encoded
        .inspect_err(|e| tracing::error!(error = %e, event, "could not encode event"))
        .ok()
}

/// Publishes queued events one after another, so Redis receives them (and
/// every node delivers them) in the order this node emitted them.
async fn publish(pubsub: PubSub, channel: String, mut queue: mpsc::Receiver<Envelope>, metrics: Arc<Metrics>) {
    while let Some(envelope) = queue.recv().await {
        let bytes = match serde_json::to_vec(&envelope) {
            Ok(bytes) => bytes,
            Err(e) => {
                metrics.adapter_errors.inc();
                tracing::error!(error = %e, event = envelope.event, "could not encode an event for the other nodes");
                continue;
            }
        };
        if let Err(e) = pubsub.publish(channel.clone(), bytes).await {
            metrics.adapter_errors.inc();
            tracing::error!(error = %e, event = envelope.event, room = envelope.room, "could not reach the other nodes");
        }
    }
}
