//! Every setting, from the environment (flags mirror them), validated once at
//! boot into [`Settings`]. Secrets are never printed.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;

use crate::{
    pusher::{Credentials, UserIdType},
    webhooks::{EVENT_NAMES, WebhookSettings},
};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted realtime chat server: Socket.IO rooms, stored messages, Pusher compatibility"
)]
pub struct Config {
    /// Start with nothing configured: embedded SQLite, a generated secret and a printed dev token.
    #[arg(long)]
    pub dev: bool,

    /// Probe `GET /healthz` of the server on PORT (loopback) and exit 0 when it answers 200;
    /// for container health checks, where no HTTP client is installed.
    #[arg(long)]
    pub healthcheck: bool,

    /// Port for HTTP, Socket.IO and the Pusher API.
    #[arg(long, env = "PORT", default_value_t = 7071)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// `sqlite://PATH` (embedded) or `postgres://…`. Default: a SQLite file under ./data/.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// HS256 secret for user tokens.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// RS256 public key (PEM) for user tokens; used instead of JWT_SECRET when set.
    #[arg(long, env = "JWT_PUBLIC_KEY", hide_env_values = true)]
    pub jwt_public_key: Option<String>,

    /// Share rooms, presence and broadcasts between nodes through Redis.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and pub/sub channel, so deployments can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "switchboard")]
    pub redis_prefix: String,

    /// With Redis: a node that has not sent a heartbeat for this long is dead, and the
    /// others take its users offline. Heartbeats go every third of it.
    #[arg(long, env = "NODE_TIMEOUT_MS", default_value_t = 15_000)]
    pub node_timeout_ms: u64,

    /// Comma-separated Origin allow-list for WebSocket and polling (`*` only in dev mode).
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Pusher app id the HTTP API answers to (with PUSHER_KEY and PUSHER_SECRET).
    #[arg(long, env = "PUSHER_APP_ID")]
    pub pusher_app_id: Option<String>,

    /// Pusher app key.
    #[arg(long, env = "PUSHER_KEY")]
    pub pusher_key: Option<String>,

    /// Pusher app secret: verifies HTTP API signatures and auth endpoint answers.
    #[arg(long, env = "PUSHER_SECRET", hide_env_values = true)]
    pub pusher_secret: Option<String>,

    /// The app's legacy Pusher auth URL, asked before admitting to private-/presence- rooms.
    #[arg(long, env = "PUSHER_AUTH_ENDPOINT")]
    pub pusher_auth_endpoint: Option<String>,

    /// How long the auth endpoint may take before a join fails with `internal`.
    #[arg(long, env = "PUSHER_AUTH_TIMEOUT_MS", default_value_t = 5_000)]
    pub pusher_auth_timeout_ms: u64,

    /// Presence channel the auth endpoint is asked about at connect time, with the handshake's
    /// cookies, to learn who a connection without a JWT is; empty turns that off.
    #[arg(long, env = "PUSHER_IDENTITY_CHANNEL", default_value = "presence-online")]
    pub pusher_identity_channel: String,

    /// Type of user ids read from channel_data: `auto` makes canonical decimal strings ("5")
    /// numbers, as legacy apps compare them; `string` keeps every id a string.
    #[arg(long, env = "PUSHER_USER_ID_TYPE", value_enum, default_value_t = UserIdType::Auto)]
    pub pusher_user_id_type: UserIdType,

    /// Pusher API event names stored as chat messages before they are broadcast (comma list;
    /// empty: none).
    #[arg(long, env = "PUSHER_STORED_EVENTS", default_value = "new-message")]
    pub pusher_stored_events: String,

    /// Client events per second allowed per user (all sockets and REST calls together).
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 20)]
    pub rate_limit_per_sec: u32,

    /// Burst of client events a user may send at once before the rate applies.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 60)]
    pub rate_limit_burst: u32,

    /// Largest client event (its JSON) answered normally; larger ones get `too_large`.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = 64 * 1024)]
    pub max_event_bytes: usize,

    /// Largest transport frame or polling body; past it the transport closes the connection.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Packets queued for one socket before it counts as a slow consumer and is disconnected.
    // 4096 is ≈ 280 ms at 14,400 messages/s into one socket, well past a 50 ms
    // latency budget, so a client that keeps up is not cut off by a burst; a stuck
    // socket then holds at most 4096 × 168-byte slots (672 KiB) plus the payloads.
    #[arg(long, env = "SOCKET_BUFFER_PACKETS", default_value_t = 4096)]
    pub socket_buffer_packets: usize,

    /// Bytes queued for one socket before it counts as a slow consumer and is disconnected.
    // 4 MiB is seconds of a busy room for a client that reads, and bounds what a
    // client that stops reading can make the server hold for it.
    #[arg(long, env = "SOCKET_BUFFER_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub socket_buffer_bytes: usize,

    /// Bytes queued for all sockets together; past it, sockets holding more than
    /// a sixteenth of SOCKET_BUFFER_BYTES are disconnected as slow consumers.
    #[arg(long, env = "SEND_BUFFER_TOTAL_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub send_buffer_total_bytes: usize,

    /// Largest answer read from PUSHER_AUTH_ENDPOINT; a longer one fails the join with `internal`.
    #[arg(long, env = "PUSHER_AUTH_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub pusher_auth_max_body_bytes: usize,

    /// A `typing: true` not refreshed within this is followed by `isTyping: false`.
    #[arg(long, env = "TYPING_TIMEOUT_MS", default_value_t = 8_000)]
    pub typing_timeout_ms: u64,

    /// How long socket.io-client may resume a dropped connection (its rooms and missed
    /// messages, from the database); 0 disables connection state recovery.
    // A day covers a laptop asleep overnight; a session is a few small rows.
    #[arg(long, env = "RECOVERY_WINDOW_SECS", default_value_t = 86_400)]
    pub recovery_window_secs: u64,

    /// How long shutdown waits for writes in flight.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Pusher WebSocket (`/app/{key}`): the `activity_timeout` told to clients; a client silent
    /// this long is sent `pusher:ping`.
    #[arg(long, env = "PUSHER_ACTIVITY_TIMEOUT_SECS", default_value_t = 120)]
    pub pusher_activity_timeout_secs: u64,

    /// Pusher WebSocket: how long a pinged client has to answer before it is closed (4201).
    #[arg(long, env = "PUSHER_PONG_TIMEOUT_SECS", default_value_t = 30)]
    pub pusher_pong_timeout_secs: u64,

    #[command(flatten)]
    pub webhook: WebhookArgs,
}

/// Webhook settings (WEBHOOK_*), validated into [`WebhookSettings`].
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Webhook receiver URLs (comma list), signed with PUSHER_KEY/PUSHER_SECRET; empty: no webhooks.
    #[arg(long, env = "WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,

    /// Webhook events sent (comma list of channel_occupied, channel_vacated, member_added,
    /// member_removed, client_event); empty: all of them.
    #[arg(long, env = "WEBHOOK_EVENTS", value_delimiter = ',')]
    pub webhook_events: Vec<String>,

    /// 0: one request per event; more: events are gathered for up to this long (and at most
    /// 100) into one request.
    #[arg(long, env = "WEBHOOK_BATCH_MS", default_value_t = 0)]
    pub webhook_batch_ms: u64,

    /// A webhook request that fails (non-2xx, no answer) is retried with backoff for this long.
    #[arg(long, env = "WEBHOOK_RETRY_SECS", default_value_t = 300)]
    pub webhook_retry_secs: u64,

    /// How long one webhook request may take.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 5_000)]
    pub webhook_timeout_ms: u64,

    /// Webhook events queued per URL before new ones are dropped (and counted).
    #[arg(long, env = "WEBHOOK_QUEUE_EVENTS", default_value_t = 10_000)]
    pub webhook_queue_events: usize,

    /// Bytes of webhook events queued per URL before new ones are dropped (and counted).
    #[arg(long, env = "WEBHOOK_QUEUE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub webhook_queue_bytes: usize,
}

/// Which origins may open a Socket.IO connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    List(Vec<String>),
}

impl Origins {
    /// Requests without an Origin header (non-browser clients) are always allowed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match (self, origin) {
            (_, None) | (Self::Any, _) => true,
            (Self::List(list), Some(o)) => list.iter().any(|allowed| allowed.eq_ignore_ascii_case(o)),
        }
    }
}

#[derive(Debug, Clone)]
pub enum JwtKey {
    Hs256(String),
    Rs256Pem(String),
}

/// Settings after validation: what the server actually runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub dev: bool,
    pub database_url: String,
    pub jwt: JwtKey,
    /// Set when dev mode made the secret up, so it can be printed with a token.
    pub generated_secret: bool,
    pub cluster: Option<ClusterSettings>,
    pub origins: Origins,
    /// Pusher credentials; `None` turns every `/apps/…` route off (404).
    pub pusher: Option<Credentials>,
    pub pusher_auth_endpoint: Option<String>,
    pub pusher_auth_timeout: Duration,
    /// Presence channel that identifies token-less connections; `None` when off.
    pub pusher_identity_channel: Option<String>,
    pub pusher_user_id_type: UserIdType,
    /// Event names the Pusher API stores as messages.
    pub pusher_stored_events: Vec<String>,
    pub rate_limit_per_sec: u32,
    pub rate_limit_burst: u32,
    pub max_event_bytes: usize,
    pub max_frame_bytes: usize,
    pub socket_buffer_packets: usize,
    pub socket_buffer_bytes: usize,
    pub send_buffer_total_bytes: usize,
    pub pusher_auth_max_body_bytes: usize,
    pub typing_timeout: Duration,
    /// Zero: connection state recovery is off.
    pub recovery_window: Duration,
    pub shutdown_timeout: Duration,
    /// Pusher WebSocket keep-alive.
    pub pusher_ws_timing: crate::pusher::ws::Timing,
    /// `None` when no WEBHOOK_URL is set.
    pub webhooks: Option<WebhookSettings>,
}

impl Config {
    pub fn settings(self) -> anyhow::Result<Settings> {
        let (jwt, generated_secret) = match (self.jwt_public_key, self.jwt_secret) {
            (Some(pem), _) => (JwtKey::Rs256Pem(pem), false),
            (None, Some(secret)) if !secret.is_empty() => (JwtKey::Hs256(secret), false),
            (None, _) if self.dev => (JwtKey::Hs256(random_secret()), true),
            (None, _) => bail!(
                "JWT_SECRET is not set: set JWT_SECRET (HS256) or JWT_PUBLIC_KEY (RS256 PEM), \
                 or run `switchboard --dev` to try it with a generated dev secret"
            ),
        };

        let wildcard = self.allowed_origins.iter().any(|o| o.trim() == "*");
        let list: Vec<String> = self
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty() && o != "*")
            .collect();
        let origins = match (wildcard, self.dev) {
            (true, true) => Origins::Any,
            (true, false) => {
                bail!("ALLOWED_ORIGINS=* is only allowed with --dev; list the app's origins")
            }
            (false, true) if list.is_empty() => Origins::Any,
            _ => Origins::List(list),
        };

        let cluster = match self.redis_url.filter(|u| !u.trim().is_empty()) {
            None => None,
            Some(url) => Some(ClusterSettings::new(&url, &self.redis_prefix, self.node_timeout_ms)?),
        };

        let database_url = self
            .database_url
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "sqlite://./data/switchboard.db".to_owned());
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|p| database_url.starts_with(p))
        {
            bail!("DATABASE_URL must be sqlite://PATH or postgres://…");
        }

        if self.rate_limit_per_sec == 0 || self.rate_limit_burst == 0 {
            bail!("RATE_LIMIT_PER_SEC and RATE_LIMIT_BURST must be at least 1");
        }

        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let pusher = match (
            nonempty(self.pusher_app_id),
            nonempty(self.pusher_key),
            nonempty(self.pusher_secret),
        ) {
            (Some(id), Some(key), Some(secret)) => Some(Credentials::new(id, key, secret)),
            (None, None, None) => None,
            _ => bail!("set all of PUSHER_APP_ID, PUSHER_KEY and PUSHER_SECRET, or none of them"),
        };
        let pusher_auth_endpoint = nonempty(self.pusher_auth_endpoint);
        if let Some(endpoint) = &pusher_auth_endpoint {
            if pusher.is_none() {
                bail!("PUSHER_AUTH_ENDPOINT needs PUSHER_KEY and PUSHER_SECRET to check the endpoint's signatures");
            }
            match url::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => bail!("PUSHER_AUTH_ENDPOINT must be an http(s) URL"),
            }
        }

        let pusher_identity_channel = nonempty(Some(self.pusher_identity_channel)).map(|c| c.trim().to_owned());
        if let Some(channel) = &pusher_identity_channel
            && !channel.starts_with("presence-")
        {
            bail!("PUSHER_IDENTITY_CHANNEL must be a presence- channel (its channel_data names the user)");
        }
        let pusher_stored_events = self
            .pusher_stored_events
            .split(',')
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
            .collect();

        let webhooks = webhook_settings(&self.webhook, pusher.is_some())?;

        let ip: std::net::IpAddr = self
            .host
            .parse()
            .with_context(|| format!("HOST must be an IP address, got {:?}", self.host))?;

        Ok(Settings {
            addr: SocketAddr::new(ip, self.port),
            dev: self.dev,
            database_url,
            jwt,
            generated_secret,
            cluster,
            origins,
            pusher,
            pusher_auth_endpoint,
            pusher_auth_timeout: Duration::from_millis(self.pusher_auth_timeout_ms),
            pusher_identity_channel,
            pusher_user_id_type: self.pusher_user_id_type,
            pusher_stored_events,
            rate_limit_per_sec: self.rate_limit_per_sec,
            rate_limit_burst: self.rate_limit_burst,
            max_event_bytes: self.max_event_bytes,
            max_frame_bytes: self.max_frame_bytes.max(self.max_event_bytes),
            socket_buffer_packets: self.socket_buffer_packets.max(16),
            socket_buffer_bytes: self.socket_buffer_bytes.max(64 * 1024),
            send_buffer_total_bytes: self.send_buffer_total_bytes.max(1024 * 1024),
            pusher_auth_max_body_bytes: self.pusher_auth_max_body_bytes.max(1024),
            typing_timeout: Duration::from_millis(self.typing_timeout_ms),
            recovery_window: Duration::from_secs(self.recovery_window_secs),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs),
            pusher_ws_timing: crate::pusher::ws::Timing {
                activity_timeout: Duration::from_secs(self.pusher_activity_timeout_secs.max(1)),
                pong_timeout: Duration::from_secs(self.pusher_pong_timeout_secs.max(1)),
            },
            webhooks,
        })
    }
}

fn webhook_settings(c: &WebhookArgs, signed: bool) -> anyhow::Result<Option<WebhookSettings>> {
    let urls = c
        .webhook_url
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(|u| match url::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
            _ => bail!("WEBHOOK_URL must be http(s) URLs, got {u:?}"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if urls.is_empty() {
        return Ok(None);
    }
    if !signed {
        bail!("WEBHOOK_URL needs PUSHER_APP_ID, PUSHER_KEY and PUSHER_SECRET to sign the requests");
    }
    let events = c
        .webhook_events
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| {
            if EVENT_NAMES.contains(&e) {
                Ok(e.to_owned())
            } else {
                bail!(
                    "WEBHOOK_EVENTS: unknown event {e:?} (known: {})",
                    EVENT_NAMES.join(", ")
                )
            }
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Some(WebhookSettings {
        urls,
        events,
        batch: Duration::from_millis(c.webhook_batch_ms),
        retry_for: Duration::from_secs(c.webhook_retry_secs),
        timeout: Duration::from_millis(c.webhook_timeout_ms.max(1)),
        queue_events: c.webhook_queue_events.max(1),
        queue_bytes: c.webhook_queue_bytes.max(1024),
    }))
}

/// Shortest HS256 secret not warned about: HS256 keys shorter than the hash
/// (32 bytes) make tokens easier to forge by brute force.
const MIN_SECRET_BYTES: usize = 32;

impl Settings {
    /// What is allowed but unwise, logged at start (dev mode is exempt).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let JwtKey::Hs256(secret) = &self.jwt
            && !self.dev
            && secret.len() < MIN_SECRET_BYTES
        {
            warnings.push(format!(
                "JWT_SECRET is {} bytes; use at least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        warnings
    }
}

/// Many nodes sharing Redis.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The Redis URL with RESP3 asked for: the adapter's pub/sub rides on push messages.
    pub redis_url: String,
    pub prefix: String,
    pub node_timeout: Duration,
}

impl ClusterSettings {
    fn new(url: &str, prefix: &str, node_timeout_ms: u64) -> anyhow::Result<Self> {
        let mut parsed = url::Url::parse(url).context("REDIS_URL must be a redis:// or rediss:// URL")?;
        if !matches!(parsed.scheme(), "redis" | "rediss") {
            bail!("REDIS_URL must be a redis:// or rediss:// URL");
        }
        if !parsed.query_pairs().any(|(k, _)| k == "protocol") {
            parsed.query_pairs_mut().append_pair("protocol", "resp3");
        }
        let prefix = prefix.trim();
        if prefix.is_empty() || prefix.contains(['#', ' ', '{', '}']) {
            bail!("REDIS_PREFIX must be non-empty, without spaces, '#', '{{' or '}}'");
        }
        if node_timeout_ms < 1_000 {
            bail!("NODE_TIMEOUT_MS must be at least 1000");
        }
        Ok(Self {
            redis_url: parsed.to_string(),
            prefix: prefix.to_owned(),
            node_timeout: Duration::from_millis(node_timeout_ms),
        })
    }
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The folder a `sqlite://PATH` file lives in, to create it when missing.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Settings> {
        let mut argv = vec!["switchboard"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)?.settings()
    }

    #[test]
    fn refuses_to_start_without_a_secret() {
        let err = parse(&[]).expect_err("must refuse");
        assert!(err.to_string().contains("JWT_SECRET"));
    }

    #[test]
    fn a_short_secret_is_warned_about_outside_dev_mode() {
        let short = parse(&["--jwt-secret", "s"]).expect("starts anyway");
        assert_eq!(short.warnings().len(), 1);
        assert!(short.warnings()[0].contains("JWT_SECRET is 1 bytes"));
        let long = parse(&["--jwt-secret", &"k".repeat(32)]).expect("ok");
        assert!(long.warnings().is_empty());
        let dev = parse(&["--dev", "--jwt-secret", "s"]).expect("ok");
        assert!(dev.warnings().is_empty());
    }

    #[test]
    fn dev_mode_needs_nothing() {
        let s = parse(&["--dev"]).expect("dev starts");
        assert!(s.generated_secret);
        assert_eq!(s.origins, Origins::Any);
        assert!(s.database_url.starts_with("sqlite://"));
    }

    #[test]
    fn origins() {
        let s = parse(&["--jwt-secret", "s", "--allowed-origins", "http://a.test,http://b.test/"]).expect("ok");
        assert!(s.origins.allows(Some("http://b.test")));
        assert!(!s.origins.allows(Some("http://evil.test")));
        assert!(s.origins.allows(None));
        assert!(parse(&["--jwt-secret", "s", "--allowed-origins", "*"]).is_err());
    }

    #[test]
    fn webhook_settings() {
        let base = [
            "--jwt-secret",
            "s",
            "--pusher-app-id",
            "1",
            "--pusher-key",
            "k",
            "--pusher-secret",
            "x",
        ];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        assert!(with(&[]).expect("ok").webhooks.is_none());
        let hooks = with(&[
            "--webhook-url",
            "http://a/hook,https://b/hook",
            "--webhook-events",
            "channel_occupied,member_added",
        ])
        .expect("ok")
        .webhooks
        .expect("on");
        assert_eq!(hooks.urls.len(), 2);
        assert_eq!(hooks.events.len(), 2);
        assert_eq!(hooks.retry_for, Duration::from_secs(300), "five minutes by default");
        assert!(with(&["--webhook-url", "ftp://a"]).is_err());
        assert!(with(&["--webhook-url", "http://a", "--webhook-events", "cache_miss"]).is_err());
        let unsigned = parse(&["--jwt-secret", "s", "--webhook-url", "http://a"]).expect_err("needs keys");
        assert!(unsigned.to_string().contains("PUSHER_SECRET"));
    }

    #[test]
    fn pusher_settings_come_all_or_nothing() {
        let base = ["--jwt-secret", "s"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&[]).expect("ok").pusher.is_none());
        assert!(
            with(&["--pusher-app-id", "1", "--pusher-key", "k", "--pusher-secret", "x"])
                .expect("ok")
                .pusher
                .is_some()
        );
        assert!(with(&["--pusher-app-id", "1"]).is_err());
        assert!(with(&["--pusher-auth-endpoint", "http://localhost:3000/api/pusher/auth"]).is_err());
    }

    #[test]
    fn pusher_migration_settings() {
        let base = ["--jwt-secret", "s"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let s = with(&[]).expect("ok");
        assert_eq!(s.pusher_identity_channel.as_deref(), Some("presence-online"));
        assert_eq!(s.pusher_user_id_type, UserIdType::Auto);
        assert_eq!(s.pusher_stored_events, ["new-message"]);
        let s = with(&[
            "--pusher-identity-channel",
            "",
            "--pusher-user-id-type",
            "string",
            "--pusher-stored-events",
            "",
        ])
        .expect("ok");
        assert_eq!(s.pusher_identity_channel, None, "empty turns it off");
        assert_eq!(s.pusher_user_id_type, UserIdType::String);
        assert!(s.pusher_stored_events.is_empty(), "empty stores nothing");
        let s = with(&["--pusher-stored-events", "new-message, edited ,"]).expect("ok");
        assert_eq!(s.pusher_stored_events, ["new-message", "edited"]);
        assert!(with(&["--pusher-identity-channel", "private-me"]).is_err());
        assert!(with(&["--pusher-user-id-type", "number"]).is_err());
    }

    #[test]
    fn redis_settings() {
        let base = ["--jwt-secret", "s"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&[]).expect("ok").cluster.is_none());
        let c = with(&["--redis-url", "redis://127.0.0.1:6379/2"])
            .expect("ok")
            .cluster
            .expect("cluster");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379/2?protocol=resp3");
        assert_eq!(c.prefix, "switchboard");
        assert_eq!(c.node_timeout, Duration::from_secs(15));
        assert!(with(&["--redis-url", "http://x"]).is_err());
        assert!(with(&["--redis-url", "redis://x", "--node-timeout-ms", "10"]).is_err());
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://./data/x.db"), Some(PathBuf::from("./data/x.db")));
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
