//! Integration tests: the real server, bound to port 0, each test with its own
//! database. Network tests speak Engine.IO/Socket.IO over a real WebSocket;
//! time-based tests attach in-process sockets so time can be paused.

mod cluster;
mod hardening;
mod helpers;
mod presence;
mod pusher;
mod pusher_ws;
mod recovery;
mod rest;
mod socket;
mod typing;
mod webhooks;
