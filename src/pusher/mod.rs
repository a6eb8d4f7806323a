//! Pusher compatibility: the signatures Pusher uses, the auth shim that lets
//! an app's legacy `/api/pusher/auth` route admit sockets to `private-` and
//! `presence-` rooms, and the Pusher HTTP API that the official server SDKs call.

pub mod auth_shim;
pub mod http_api;
pub mod signing;

pub use auth_shim::{AuthShim, ChannelAuth, Forwarded, PresentedAuth, UserIdType};
pub use signing::Credentials;

/// A Pusher-format socket id (`\d+\.\d+`), so ids work with Pusher auth and
/// `socket_id` exclusion.
pub fn new_socket_id() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!("{}.{}", rng.random_range(1..u32::MAX), rng.random_range(1..u32::MAX))
}
