//! Room members that are not Socket.IO sockets (Pusher-protocol connections
//! today), registered with the [`crate::broadcast::Broadcaster`] so that every
//! room event reaches them through the same place as it reaches sockets:
//! local emits and envelopes from other nodes alike, with the same exclusions.
//! Nothing here knows a wire format: each connection implements
//! [`Subscriber`] and turns a [`RoomEvent`] into its own frames.

use std::{
    any::Any,
    collections::HashSet,
    sync::{Arc, OnceLock},
};

use dashmap::DashMap;
use serde_json::value::RawValue;

/// One event to one room, as every subscriber of that room sees it.
pub struct RoomEvent<'a> {
    pub room: &'a str,
    pub event: &'a str,
    pub payload: &'a RawValue,
    /// The user a client event came from (Pusher adds it on presence channels).
    pub from_user: Option<&'a str>,
    /// The event as a transport encodes it, built by the first subscriber that
    /// needs it and shared by the rest: one encoding per emit, not per connection.
    encoded: OnceLock<Option<Box<dyn Any + Send + Sync>>>,
}

impl<'a> RoomEvent<'a> {
    pub fn new(room: &'a str, event: &'a str, payload: &'a RawValue, from_user: Option<&'a str>) -> Self {
        Self {
            room,
            event,
            payload,
            from_user,
            encoded: OnceLock::new(),
        }
    }

    /// The shared encoding of type `T`, built once by `encode`; `None` when
    /// `encode` said the event is not for this kind of connection.
    pub fn encoded<T: Any + Send + Sync + Clone>(&self, encode: impl FnOnce(&Self) -> Option<T>) -> Option<T> {
        self.encoded
            .get_or_init(|| encode(self).map(|t| Box::new(t) as Box<dyn Any + Send + Sync>))
            .as_ref()
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }
}

/// A connection of some other protocol, as the broadcaster drives it. Every
/// method is called synchronously from the delivering task: none may block.
pub trait Subscriber: Send + Sync + 'static {
    /// Queues one room event; false when it was not queued (full or closed).
    fn deliver(&self, event: &RoomEvent<'_>) -> bool;
    /// The connection was taken out of `room` by the server (e.g. removed from
    /// a group): presence already knows, it must just forget the room.
    fn evict(&self, room: &str);
    /// Closes the connection.
    fn terminate(&self, why: Farewell);
}

/// Why the server closes a connection, for the client to decide whether to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// The server is going away or lost track of it: reconnect.
    Reconnect,
    /// The app terminated the user's connections.
    Terminated,
}

struct Entry {
    socket_id: Arc<str>,
    /// The member key the connection holds in this room (exclusion by user).
    user_key: Arc<str>,
    sink: Arc<dyn Subscriber>,
}

/// This node's non-Socket.IO connections, per room and by socket id.
#[derive(Default)]
pub struct Subscribers {
    rooms: DashMap<Box<str>, Vec<Entry>>,
    conns: DashMap<Arc<str>, Arc<dyn Subscriber>>,
    /// Socket id → the user it signed in as (Pusher user authentication),
    /// so the app can terminate a user's connections in no room at all.
    signed_in: DashMap<Arc<str>, Arc<str>>,
}

impl Subscribers {
    pub fn connect(&self, socket_id: &str, sink: Arc<dyn Subscriber>) {
        self.conns.insert(socket_id.into(), sink);
    }

    /// Records the user a connection authenticated as.
    pub fn sign_in(&self, socket_id: &str, user_key: &str) {
        self.signed_in.insert(socket_id.into(), user_key.into());
    }

    /// Forgets a closed connection everywhere.
    pub fn disconnect(&self, socket_id: &str, rooms: impl IntoIterator<Item = impl AsRef<str>>) {
        self.conns.remove(socket_id);
        self.signed_in.remove(socket_id);
        for room in rooms {
            self.leave(room.as_ref(), socket_id);
        }
    }

    pub fn join(&self, room: &str, socket_id: &str, user_key: &str, sink: Arc<dyn Subscriber>) {
        let mut entries = self.rooms.entry(room.into()).or_default();
        entries.retain(|e| &*e.socket_id != socket_id);
        entries.push(Entry {
            socket_id: socket_id.into(),
            user_key: user_key.into(),
            sink,
        });
    }

    pub fn leave(&self, room: &str, socket_id: &str) {
        self.rooms.remove_if_mut(room, |_, entries| {
            entries.retain(|e| &*e.socket_id != socket_id);
            entries.is_empty()
        });
    }

    /// Hands the event to the room's connections not excluded by `except`
    /// (the broadcaster's internal room names, `#u:<user>` and `#s:<socket id>`).
    pub fn deliver(&self, event: &RoomEvent<'_>, except: &[String]) -> usize {
        let Some(entries) = self.rooms.get(event.room) else {
            return 0;
        };
        let excluded = |e: &Entry| {
            except.iter().any(|x| {
                x.strip_prefix("#u:").is_some_and(|u| u == &*e.user_key)
                    || x.strip_prefix("#s:").is_some_and(|s| s == &*e.socket_id)
            })
        };
        entries
            .iter()
            .filter(|e| !excluded(e))
            .filter(|e| e.sink.deliver(event))
            .count()
    }

    /// Takes every connection of `user_key` out of `room`.
    pub fn evict_user(&self, room: &str, user_key: &str) {
        let mut gone = Vec::new();
        self.rooms.remove_if_mut(room, |_, entries| {
            entries.retain(|e| {
                let keep = &*e.user_key != user_key;
                if !keep {
                    gone.push(e.sink.clone());
                }
                keep
            });
            entries.is_empty()
        });
        // Outside the map's lock: the connection updates its own state.
        for sink in gone {
            sink.evict(room);
        }
    }

    /// Closes every connection that holds `user_key` in any room or signed in as it.
    pub fn terminate_user(&self, user_key: &str) {
        let mut ids = HashSet::new();
        let mut sinks = Vec::new();
        for signed in self.signed_in.iter().filter(|e| &**e.value() == user_key) {
            if let Some(sink) = self.conns.get(signed.key())
                && ids.insert(signed.key().clone())
            {
                sinks.push(sink.value().clone());
            }
        }
        for entries in self.rooms.iter() {
            for e in entries.iter().filter(|e| &*e.user_key == user_key) {
                if ids.insert(e.socket_id.clone()) {
                    sinks.push(e.sink.clone());
                }
            }
        }
        for sink in sinks {
            sink.terminate(Farewell::Terminated);
        }
    }

    /// Closes every connection of this node.
    pub fn terminate_all(&self) {
        let sinks: Vec<_> = self.conns.iter().map(|e| e.value().clone()).collect();
        for sink in sinks {
            sink.terminate(Farewell::Reconnect);
        }
    }

    /// Connections open on this node.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Probe {
        got: Mutex<Vec<String>>,
        evicted: Mutex<Vec<String>>,
        terminated: Mutex<bool>,
    }

    impl Subscriber for Probe {
        fn deliver(&self, event: &RoomEvent<'_>) -> bool {
            let frame = event.encoded(|e| Some(format!("{}:{}", e.event, e.payload.get())));
            self.got.lock().expect("lock").extend(frame);
            true
        }
        fn evict(&self, room: &str) {
            self.evicted.lock().expect("lock").push(room.to_owned());
        }
        fn terminate(&self, _: Farewell) {
            *self.terminated.lock().expect("lock") = true;
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("json")
    }

    #[test]
    fn delivers_with_the_same_exclusions_as_sockets() {
        let subs = Subscribers::default();
        let (a, b, c) = (
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
            Arc::new(Probe::default()),
        );
        subs.join("r", "1.1", "5", a.clone());
        subs.join("r", "2.2", "5", b.clone());
        subs.join("r", "3.3", "7", c.clone());
        let payload = raw("{\"x\":1}");
        let n = subs.deliver(&RoomEvent::new("r", "e", &payload, None), &["#s:1.1".into()]);
        assert_eq!(n, 2);
        let n = subs.deliver(&RoomEvent::new("r", "f", &payload, None), &["#u:5".into()]);
        assert_eq!(n, 1);
        assert_eq!(*a.got.lock().expect("lock"), Vec::<String>::new());
        assert_eq!(*b.got.lock().expect("lock"), ["e:{\"x\":1}"]);
        assert_eq!(*c.got.lock().expect("lock"), ["e:{\"x\":1}", "f:{\"x\":1}"]);
        assert_eq!(subs.deliver(&RoomEvent::new("other", "e", &payload, None), &[]), 0);
    }

    #[test]
    fn evicts_terminates_and_forgets() {
        let subs = Subscribers::default();
        let (a, c) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
        subs.connect("1.1", a.clone());
        subs.connect("3.3", c.clone());
        subs.join("r", "1.1", "5", a.clone());
        subs.join("r", "3.3", "7", c.clone());
        subs.evict_user("r", "5");
        assert_eq!(*a.evicted.lock().expect("lock"), ["r"]);
        let payload = raw("1");
        assert_eq!(subs.deliver(&RoomEvent::new("r", "e", &payload, None), &[]), 1);
        subs.terminate_user("7");
        assert!(*c.terminated.lock().expect("lock"));
        assert!(!*a.terminated.lock().expect("lock"));
        subs.disconnect("3.3", ["r"]);
        assert_eq!(subs.deliver(&RoomEvent::new("r", "e", &payload, None), &[]), 0);
        assert!(subs.rooms.is_empty(), "an empty room is dropped");
        subs.terminate_all();
        assert!(*a.terminated.lock().expect("lock"));
    }
}
