//! # switchboard
//!
//! A self-hosted realtime server for chat apps: a Socket.IO server (v4 clients,
//! WebSocket and long-polling) with JWT identity, rooms, stored messages,
//! typing and presence, built to replace Pusher Channels.
//!
//! # Layout
//!
//! - [`config`]: every setting, from the environment, validated at boot.
//! - [`startup`]: binds, opens the store, builds the Socket.IO layer and router, runs and drains.
//! - [`domain`]: validated types — [`domain::UserId`], [`domain::RoomId`] and its kind, message drafts.
//! - [`auth`]: JWT verification, shared by the handshake and REST.
//! - [`socket`]: the Socket.IO transport — handshake, one handler per client event, acks,
//!   and socket.io-client's connection state recovery (`pid` + offset, sessions in the store).
//! - [`http`]: health, readiness, metrics and the REST message routes.
//! - [`chat`]: the chat domain — access rules, presence, typing, sending, resumable sessions.
//! - [`broadcast`]: the one place every event to a room passes through; [`subscribers`] is
//!   where connections of other protocols (Pusher WebSocket) register to receive them.
//! - [`pusher`]: Pusher compatibility — signatures, the auth shim for `private-`/`presence-`
//!   rooms, the Pusher HTTP API (plus signed group membership routes), and Pusher's
//!   WebSocket protocol at `/app/{key}` for unmodified pusher-js.
//! - [`webhooks`]: Pusher-style webhooks (occupied/vacated, members, client events), queued
//!   and sent off the delivery path.
//! - [`store`]: durable state behind the [`store::Store`] trait (SQLite embedded, Postgres in production).
//! - [`cluster`]: many nodes sharing one Redis — presence, typing, rate limits, heartbeats.
//! - [`error`]: the boundary error and its single mapping to the contract's codes.
//! - [`metrics`], [`ratelimit`], [`telemetry`], [`dev`], [`clock`]: supporting pieces.
//!
//! # How a message flows
//!
//! 1. `send-message` arrives on a socket; [`socket`] rate limits and size checks it,
//!    parses a [`domain::Draft`] and checks the socket joined the room.
//! 2. [`chat::Chat::send`] appends it through the [`store::Store`] (idempotent on
//!    `(room, sender, clientId)`) and waits for the commit.
//! 3. Only a newly stored message is handed to [`broadcast::Broadcaster`], which
//!    delivers `new-message` to every socket in the room, the sender's included
//!    (with many nodes, also publishing it for the others' broadcasters).
//! 4. The ack `{ ok: true, message }` goes back last: an acked message is a stored one.
//!
//! REST `POST /api/rooms/{roomId}/messages` enters at step 2 with the same rules;
//! a Pusher HTTP API trigger goes straight to the broadcaster (nothing is stored:
//! it is the app's own event, as on Pusher).
//! Data flows one way: transports (`socket`, `http`) → `chat` → `store`; only
//! `broadcast` emits to clients.

pub mod auth;
pub mod broadcast;
pub mod chat;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod pusher;
pub mod ratelimit;
pub mod socket;
pub mod startup;
pub mod store;
pub mod subscribers;
pub mod telemetry;
pub mod webhooks;
