//! `spawn_app` and two minimal Socket.IO clients: `Ws` over a real WebSocket,
//! `Local` attached in-process (no network, so time can be paused).

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::{
    config::Config,
    startup::{Application, NodeIo},
};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub const SECRET: &str = "integration-secret";

pub struct TestApp {
    pub addr: SocketAddr,
    pub io: NodeIo,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The Redis the cluster tests run against (`SB_TEST_REDIS`), or `None` to
/// skip them; with `REQUIRE_REDIS=1` (CI) a missing Redis fails instead.
pub fn test_redis() -> Option<String> {
    match std::env::var("SB_TEST_REDIS") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("REQUIRE_REDIS").as_deref() == Ok("1") => {
            panic!("REQUIRE_REDIS=1 but SB_TEST_REDIS is not set")
        }
        _ => {
            eprintln!("SB_TEST_REDIS not set: cluster test skipped");
            None
        }
    }
}

/// A fresh Redis prefix, so concurrent tests make separate clusters.
pub fn cluster_prefix() -> String {
    format!("sbit{:016x}", rand::random::<u64>())
}

pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite://{}/db.sqlite", dir.path().display());
    let mut args = vec![
        "switchboard",
        "--jwt-secret",
        SECRET,
        "--database-url",
        &db,
        "--allowed-origins",
        "http://app.test",
    ];
    args.extend_from_slice(extra);
    let settings = Config::try_parse_from(args)
        .expect("args")
        .settings()
        .expect("settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = Application::with_listener(settings, listener).await.expect("build");
    let addr = app.local_addr().expect("addr");
    let io = app.io();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        io,
        http: reqwest::Client::new(),
        stop: Some(stop),
        handle: Some(handle),
        _dir: dir,
    }
}

/// The Pusher app the Pusher tests run as.
pub const PUSHER_APP_ID: &str = "42";
pub const PUSHER_KEY: &str = "app-key";
pub const PUSHER_SECRET: &str = "app-secret";

/// A server with the Pusher app's credentials, plus `extra` arguments.
pub async fn spawn_pusher_app(extra: &[&str]) -> TestApp {
    let mut args = vec![
        "--pusher-app-id",
        PUSHER_APP_ID,
        "--pusher-key",
        PUSHER_KEY,
        "--pusher-secret",
        PUSHER_SECRET,
    ];
    args.extend_from_slice(extra);
    spawn_app_with(&args).await
}

/// A Pusher HTTP API URL signed as the official SDKs sign it, with
/// `timestamp` as `auth_timestamp`.
pub fn pusher_signed_url(app: &TestApp, method: &str, path: &str, body: &str, timestamp: &str) -> String {
    use switchboard::pusher::{Credentials, signing};
    let creds = Credentials::new(PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET);
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), PUSHER_KEY.into()),
        ("auth_timestamp".into(), timestamp.into()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), signing::body_md5(body.as_bytes())));
    }
    let signature = creds.sign(&signing::string_to_sign(method, path, &params));
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    app.url(&format!("{path}?{}&auth_signature={signature}", query.join("&")))
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A counter or gauge without labels, read from `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// True while `run` has not returned.
    pub fn running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Triggers graceful shutdown and returns what `run` returned.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.handle.take() {
            Some(h) => h.await.expect("run task"),
            None => Ok(()),
        }
    }
}

pub fn token(claims: Value) -> String {
    switchboard::auth::sign_hs256(SECRET.as_bytes(), &claims).expect("sign")
}

pub fn user(id: Value) -> String {
    token(json!({ "sub": id }))
}

/// A decoded Socket.IO packet (namespace `/`).
#[derive(Debug, Clone)]
pub enum Sio {
    Connect(#[allow(dead_code)] Value),
    ConnectError(Value),
    Event(String, Value),
    Ack(u64, Value),
    Disconnect,
}

pub fn decode(packet: &str) -> Option<Sio> {
    let (kind, rest) = packet.split_at_checked(1)?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let (id, json) = rest.split_at(digits);
    let data: Value = if json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(json).ok()?
    };
    Some(match kind {
        "0" => Sio::Connect(data),
        "1" => Sio::Disconnect,
        "4" => Sio::ConnectError(data),
        "2" => {
            let arr = data.as_array()?;
            Sio::Event(
                arr.first()?.as_str()?.to_owned(),
                arr.get(1).cloned().unwrap_or(Value::Null),
            )
        }
        "3" => Sio::Ack(
            id.parse().ok()?,
            data.as_array()?.first().cloned().unwrap_or(Value::Null),
        ),
        _ => return None,
    })
}

/// What both clients share: emit with an ack, and wait for events.
pub trait Client {
    fn send_raw(&mut self, packet: String) -> impl Future<Output = ()>;
    fn recv(&mut self) -> impl Future<Output = Option<Sio>>;
    fn buffered(&mut self) -> &mut Vec<Sio>;
    fn next_id(&mut self) -> u64;

    async fn emit(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_id();
        self.send_raw(format!("2{id}{}", json!([event, data]))).await;
        let found = self
            .wait(|p| matches!(p, Sio::Ack(got, _) if *got == id))
            .await
            .unwrap_or_else(|| panic!("no ack for {event}"));
        match found {
            Sio::Ack(_, v) => v,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The next `event` (earlier ones first), within two seconds.
    async fn event(&mut self, name: &str) -> Value {
        match self.wait(|p| matches!(p, Sio::Event(n, _) if n == name)).await {
            Some(Sio::Event(_, v)) => v,
            _ => panic!("no {name} event"),
        }
    }

    /// Waits for a packet matching `pred`; others are kept for later.
    async fn wait(&mut self, pred: impl Fn(&Sio) -> bool) -> Option<Sio> {
        if let Some(pos) = self.buffered().iter().position(&pred) {
            return Some(self.buffered().remove(pos));
        }
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                p = self.recv() => match p {
                    Some(p) if pred(&p) => return Some(p),
                    Some(p) => self.buffered().push(p),
                    None => return None,
                },
                () = &mut deadline => return None,
            }
        }
    }

    /// True when no `name` event is pending or arrives within `ms`.
    async fn none(&mut self, name: &str, ms: u64) -> bool {
        if self
            .buffered()
            .iter()
            .any(|p| matches!(p, Sio::Event(n, _) if n == name))
        {
            return false;
        }
        let deadline = tokio::time::sleep(Duration::from_millis(ms));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                p = self.recv() => match p {
                    Some(Sio::Event(n, _)) if n == name => return false,
                    Some(p) => self.buffered().push(p),
                    None => return true,
                },
                () = &mut deadline => return true,
            }
        }
    }
}

/// A Socket.IO client over a real WebSocket (Engine.IO v4).
pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    buf: Vec<Sio>,
    ids: u64,
}

impl Ws {
    /// Opens the transport and sends CONNECT with `auth`; returns the client and
    /// the namespace answer (`Connect` or `ConnectError`).
    pub async fn connect(app: &TestApp, auth: Value) -> (Self, Sio) {
        Self::connect_with_headers(app, auth, &[]).await
    }

    /// Like `connect`, with extra handshake headers (Cookie, Origin, …).
    pub async fn connect_with_headers(app: &TestApp, auth: Value, headers: &[(&str, &str)]) -> (Self, Sio) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
        let mut request = url.into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("ws connect");
        let mut c = Self {
            ws,
            buf: Vec::new(),
            ids: 0,
        };
        c.send_raw(format!("0{auth}")).await;
        let answer = c
            .wait(|p| matches!(p, Sio::Connect(_) | Sio::ConnectError(_)))
            .await
            .expect("namespace answer");
        (c, answer)
    }

    pub async fn connected(app: &TestApp, token: &str) -> Self {
        match Self::connect(app, json!({ "token": token })).await {
            (c, Sio::Connect(_)) => c,
            (_, other) => panic!("refused: {other:?}"),
        }
    }
}

impl Client for Ws {
    async fn send_raw(&mut self, packet: String) {
        self.ws
            .send(Message::text(format!("4{packet}")))
            .await
            .expect("ws send");
    }

    async fn recv(&mut self) -> Option<Sio> {
        loop {
            let msg = self.ws.next().await?.ok()?;
            let Message::Text(text) = msg else { continue };
            let text = text.as_str();
            match text.split_at_checked(1) {
                Some(("2", _)) => {
                    let _ = self.ws.send(Message::text("3")).await;
                }
                Some(("4", sio)) => return decode(sio),
                Some(("1", _)) => return None,
                _ => {}
            }
        }
    }

    fn buffered(&mut self) -> &mut Vec<Sio> {
        &mut self.buf
    }

    fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }
}

/// A socket attached in-process: packets go through channels, no network, so
/// tests can pause time.
pub struct Local {
    tx: tokio::sync::mpsc::Sender<engineioxide::Packet>,
    rx: tokio::sync::mpsc::Receiver<engineioxide::Packet>,
    buf: Vec<Sio>,
    ids: u64,
}

impl Local {
    pub async fn connected(app: &TestApp, token: &str) -> Self {
        let auth = json!({ "token": token });
        let (tx, rx) = match &app.io {
            NodeIo::Single(io) => io.new_dummy_sock("/", auth).await,
            NodeIo::Cluster(io) => io.new_dummy_sock("/", auth).await,
        };
        let mut c = Self {
            tx,
            rx,
            buf: Vec::new(),
            ids: 0,
        };
        match c.wait(|p| matches!(p, Sio::Connect(_) | Sio::ConnectError(_))).await {
            Some(Sio::Connect(_)) => c,
            other => panic!("refused: {other:?}"),
        }
    }

    pub async fn close(self) {
        let _ = self.tx.send(engineioxide::Packet::Close).await;
    }
}

impl Client for Local {
    async fn send_raw(&mut self, packet: String) {
        let _ = self.tx.send(engineioxide::Packet::Message(packet.into())).await;
    }

    async fn recv(&mut self) -> Option<Sio> {
        loop {
            match self.rx.recv().await? {
                engineioxide::Packet::Message(s) => return decode(s.as_str()),
                engineioxide::Packet::Close => return None,
                _ => {}
            }
        }
    }

    fn buffered(&mut self) -> &mut Vec<Sio> {
        &mut self.buf
    }

    fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }
}
