//! Assembles the server: binds the listener (port 0 allowed), opens the store
//! and runs migrations, connects to Redis when there are many nodes, builds the
//! Socket.IO layer (in-memory or Redis adapter) and the HTTP router, and runs
//! until the shutdown future resolves, then drains.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Router,
    extract::{OriginalUri, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    serve::ListenerExt,
};
use socketioxide::SocketIo;
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    auth::TokenVerifier,
    broadcast::{Broadcaster, ClusterAdapter},
    chat::{
        Chat, ChatParts,
        presence::{LocalPresence, Presence},
        typing::{LocalTyping, Typing},
    },
    cluster::{self, RedisPresence, SharedLimit, SharedTyping},
    config::{JwtKey, Origins, Settings},
    error::ChatError,
    http,
    metrics::Metrics,
    pusher::{self, AuthShim, ChannelAuth},
    ratelimit::RateLimit,
    socket, store,
};

/// The WebSocket read chunk each connection keeps allocated. Chat frames are
/// small and larger ones are simply read in more chunks; 1 KiB instead of the
/// 4 KiB default measured 33.8 → 30.7 KB of server RSS per idle connection
/// (8,000 connections, bench/loadgen idle).
const WS_READ_CHUNK: usize = 1024;

/// How long connections may take to close once shutdown has disconnected every socket.
const CONNECTION_GRACE: Duration = Duration::from_secs(3);

/// Broadcasts from other nodes queued for this one before the adapter drops
/// them; sized for bursts of fanout, not for a node that stopped reading.
const ADAPTER_STREAM_BUFFER: usize = 65_536;

/// This node's in-process Socket.IO, whichever adapter it runs on (tests
/// attach sockets to it without a network).
#[derive(Clone)]
pub enum NodeIo {
    Single(SocketIo),
    Cluster(SocketIo<ClusterAdapter>),
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    io: NodeIo,
    chat: Arc<Chat>,
    shutdown_timeout: Duration,
}

impl Application {
    /// Binds `settings.addr` and builds everything.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.addr))?;
        Self::with_listener(settings, listener).await
    }

    /// Builds on a listener the caller bound (tests bind port 0).
    pub async fn with_listener(settings: Settings, listener: TcpListener) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let store = store::Metered::wrap(store::open(&settings.database_url).await?, metrics.clone());
        let verifier = match &settings.jwt {
            JwtKey::Hs256(secret) => TokenVerifier::hs256(secret.as_bytes()),
            JwtKey::Rs256Pem(pem) => TokenVerifier::rs256(pem.as_bytes())?,
        };

        let redis = match &settings.cluster {
            Some(cluster) => Some(
                cluster::Redis::connect(cluster)
                    .await
                    .context("cannot reach REDIS_URL")?,
            ),
            None => None,
        };
        let (presence, limiter, typing): (Arc<dyn Presence>, RateLimit, Typing) = match &redis {
            Some(redis) => (
                Arc::new(RedisPresence::new(redis.clone())),
                RateLimit::Shared(Box::new(SharedLimit::new(
                    redis.clone(),
                    settings.rate_limit_per_sec,
                    settings.rate_limit_burst,
                ))),
                Typing::Shared(Box::new(SharedTyping::new(redis.clone(), settings.typing_timeout))),
            ),
            None => (
                Arc::new(LocalPresence::default()),
                RateLimit::local(settings.rate_limit_per_sec, settings.rate_limit_burst),
                Typing::Local(LocalTyping::default()),
            ),
        };
        if let Some(redis) = &redis {
            // Be listed among the live nodes before the first client arrives.
            presence.tick().await.context("cannot register this node in Redis")?;
            metrics.redis_up.set(1);
            tracing::info!(node = redis.node(), prefix = redis.prefix(), "joined the cluster");
        }

        let builder = SocketIo::builder()
            .max_payload(settings.max_frame_bytes as u64)
            .ws_max_message_size(settings.max_frame_bytes)
            .ws_max_frame_size(settings.max_frame_bytes)
            .max_buffer_size(settings.socket_buffer_packets)
            .max_buffer_bytes(settings.socket_buffer_bytes, settings.send_buffer_total_bytes)
            .ws_read_buffer_size(WS_READ_CHUNK);

        let signed = settings
            .pusher
            .clone()
            .map(|credentials| ChannelAuth::new(credentials, settings.pusher_user_id_type));
        let shim = match (&settings.pusher_auth_endpoint, &signed) {
            (Some(endpoint), Some(signed)) => Some(AuthShim::new(
                endpoint.clone(),
                signed.clone(),
                settings.pusher_auth_timeout,
                settings.pusher_auth_max_body_bytes,
            )?),
            _ => None,
        };
        let webhooks = match (&settings.webhooks, &settings.pusher) {
            (Some(hooks), Some(credentials)) => {
                crate::webhooks::Webhooks::start(hooks, credentials.clone(), metrics.clone())
                    .context("cannot set up the webhook client")?
            }
            _ => crate::webhooks::Webhooks::disabled(),
        };
        let parts = |broadcaster: Broadcaster| ChatParts {
            store,
            verifier,
            metrics: metrics.clone(),
            redis: redis.clone(),
            presence,
            broadcaster,
            limiter,
            typing,
            typing_timeout: settings.typing_timeout,
            max_event_bytes: settings.max_event_bytes,
            recovery_window: settings.recovery_window,
            shim,
            signed,
            identity_channel: settings.pusher_identity_channel.clone(),
            webhooks,
        };
        let routes = |chat: &Arc<Chat>| {
            let mut router = http::router(chat.clone(), settings.max_frame_bytes);
            if let Some(credentials) = settings.pusher.clone() {
                router = router.merge(pusher::ws::router(
                    chat.clone(),
                    credentials.clone(),
                    settings.pusher_ws_timing,
                    settings.max_frame_bytes,
                ));
                router = router.merge(pusher::http_api::router(
                    chat.clone(),
                    credentials,
                    settings.pusher_stored_events.clone(),
                ));
            }
            router
        };

        let (chat, router, io) = match &redis {
            None => {
                let (layer, io) = builder.build_layer();
                let chat = Arc::new(Chat::new(parts(Broadcaster::single(io.clone(), metrics.clone()))));
                socket::register(&io, chat.clone());
                let router = routes(&chat).layer(layer);
                (chat, router, NodeIo::Single(io))
            }
            Some(redis) => {
                let config = RedisAdapterConfig::new()
                    .with_prefix(format!("{}:sio", redis.prefix()))
                    .with_stream_buffer(ADAPTER_STREAM_BUFFER);
                let pubsub = cluster::PubSub::connect(redis.client(), metrics.adapter_errors.clone())
                    .await
                    .context("cannot open the Redis pub/sub connection")?;
                let adapter = RedisAdapterCtr::new_with_driver(pubsub.clone(), config);
                let (layer, io) = builder.with_adapter::<ClusterAdapter>(adapter).build_layer();
                let broadcaster =
                    Broadcaster::cluster(io.clone(), pubsub, redis.prefix(), redis.node(), metrics.clone())
                        .await
                        .context("cannot subscribe to the cluster's event channel")?;
                let chat = Arc::new(Chat::new(parts(broadcaster)));
                socket::register(&io, chat.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot subscribe to the cluster's channels: {e}"))?;
                let router = routes(&chat).layer(layer);
                (chat, router, NodeIo::Cluster(io))
            }
        };

        let origins = Arc::new(settings.origins.clone());
        let router = router
            .layer(cors(&settings.origins))
            .layer(middleware::from_fn_with_state(origins, check_origin))
            .layer(tower_http::trace::TraceLayer::new_for_http());

        Ok(Self {
            listener,
            router,
            io,
            chat,
            shutdown_timeout: settings.shutdown_timeout,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// One node's Socket.IO handle, for in-process tests that attach sockets without a network.
    pub fn io(&self) -> NodeIo {
        self.io.clone()
    }

    /// Serves until `shutdown` resolves; then tells clients, finishes writes in
    /// flight and closes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            chat,
            shutdown_timeout,
            ..
        } = self;
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");

        let housekeeping = tokio::spawn(chat.clone().housekeeping());

        // Small frames (acks, typing) must not wait for Nagle's algorithm.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let broadcaster = chat.broadcaster().clone();
        let closing = async move {
            shutdown.await;
            let _ = stopping.send(());
            tracing::info!("shutting down: disconnecting clients");
            broadcaster.close().await;
        };
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(closing)
            .into_future();
        // Graceful shutdown ends once every connection has closed; one that lingers
        // past the grace period must not hold the exit.
        let lingering = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(CONNECTION_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            served = serve => served.map_err(anyhow::Error::from),
            () = lingering => {
                tracing::warn!("shutdown: connections still open after {CONNECTION_GRACE:?}; closing them");
                Ok(())
            }
        };
        housekeeping.abort();
        chat.goodbye().await;
        if !chat.drain_writes(shutdown_timeout).await {
            tracing::warn!("shutdown: some writes did not finish in time");
        }
        chat.store.close().await;
        tracing::info!("stopped");
        result
    }
}

fn cors(origins: &Origins) -> CorsLayer {
    let allow = match origins {
        Origins::Any => AllowOrigin::mirror_request(),
        Origins::List(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_credentials(true)
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::OPTIONS,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

/// Refuses Socket.IO handshakes (WebSocket and polling) from origins not on
/// the list, and detaches the head of the requests that open a session.
async fn check_origin(State(origins): State<Arc<Origins>>, req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/socket.io") {
        return next.run(req).await;
    }
    // An Origin that is not text is refused: only a missing header means a
    // non-browser client.
    let refused = match req.headers().get(header::ORIGIN).map(|o| o.to_str()) {
        None => None,
        Some(Ok(origin)) if origins.allows(Some(origin)) => None,
        Some(Ok(origin)) => Some(format!("origin {origin} is not allowed")),
        Some(Err(_)) => Some("an Origin header that is not valid text is not allowed".to_owned()),
    };
    if let Some(why) = refused {
        let err = ChatError::Forbidden(why);
        return (StatusCode::FORBIDDEN, axum::Json(err.body())).into_response();
    }
    let opens_session = !req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("sid=")));
    let req = if opens_session { detach_head(req) } else { req };
    next.run(req).await
}

/// Socket.IO keeps the request that opened a session for the session's whole
/// life. hyper parses header values and the URI as slices of its read buffer
/// (8–16 KiB per connection), so keeping them would keep that whole buffer;
/// copying the few bytes out lets it go once the connection is upgraded.
fn detach_head(req: Request) -> Request {
    let (mut parts, body) = req.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            headers.append(name.clone(), copy);
        }
    }
    parts.headers = headers;
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
        // The router's copy of the URI shares the same buffer.
        if parts.extensions.get::<OriginalUri>().is_some() {
            parts.extensions.insert(OriginalUri(parts.uri.clone()));
        }
    }
    Request::from_parts(parts, body)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
