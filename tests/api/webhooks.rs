//! Webhooks against a tiny receiver on port 0: Pusher's body and signature,
//! events from Socket.IO and Pusher-protocol connections in order, batching,
//! and a retry after the receiver answered 500.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::pusher::Credentials;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::helpers::{Client, PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET, TestApp, Ws, spawn_pusher_app, user};

fn creds() -> Credentials {
    Credentials::new(PUSHER_APP_ID, PUSHER_KEY, PUSHER_SECRET)
}

/// One request the receiver got.
struct Hook {
    key: Option<String>,
    signature: Option<String>,
    body: String,
}

impl Hook {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("body is JSON")
    }

    /// The events, checked to be signed with the app secret.
    fn events(&self) -> Vec<Value> {
        assert_eq!(self.key.as_deref(), Some(PUSHER_KEY));
        let signature = self.signature.as_deref().expect("signed");
        assert!(creds().verify(&self.body, signature), "signature over the raw body");
        let body = self.json();
        assert!(
            body["time_ms"].as_i64().is_some_and(|t| t > 1_600_000_000_000),
            "{body}"
        );
        body["events"].as_array().expect("events").clone()
    }
}

struct Receiver {
    url: String,
    hooks: mpsc::UnboundedReceiver<Hook>,
}

#[derive(Clone)]
struct Recv {
    tx: mpsc::UnboundedSender<Hook>,
    /// Requests still to answer with 500.
    fail: Arc<AtomicUsize>,
}

async fn hook(State(r): State<Recv>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let _ = r.tx.send(Hook {
        key: header("x-pusher-key"),
        signature: header("x-pusher-signature"),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let failing = r
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// A receiver answering 500 to its first `fail` requests, 200 after.
async fn receiver(fail: usize) -> Receiver {
    let (tx, hooks) = mpsc::unbounded_channel();
    let state = Recv {
        tx,
        fail: Arc::new(AtomicUsize::new(fail)),
    };
    let router = Router::new().route("/hook", post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    Receiver {
        url: format!("http://{addr}/hook"),
        hooks,
    }
}

impl Receiver {
    async fn next(&mut self) -> Hook {
        tokio::time::timeout(Duration::from_secs(5), self.hooks.recv())
            .await
            .expect("a webhook within 5 s")
            .expect("receiver running")
    }

    /// The next `n` events, over however many requests they came in.
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < n {
            events.extend(self.next().await.events());
        }
        assert_eq!(events.len(), n, "{events:?}");
        events
    }

    async fn quiet(&mut self, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), self.hooks.recv())
            .await
            .is_err()
    }
}

/// A Pusher-protocol connection, raw frames.
struct Pc {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    socket_id: String,
}

impl Pc {
    async fn connect(app: &TestApp) -> Self {
        let url = format!("ws://{}/app/{PUSHER_KEY}?protocol=7", app.addr);
        let ws = tokio_tungstenite::connect_async(url).await.expect("connect").0;
        let mut c = Self {
            ws,
            socket_id: String::new(),
        };
        let hello = c.wait("pusher:connection_established").await;
        let data: Value = serde_json::from_str(hello["data"].as_str().expect("data")).expect("json");
        c.socket_id = data["socket_id"].as_str().expect("socket_id").to_owned();
        c
    }

    async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.expect("send");
    }

    async fn wait(&mut self, event: &str) -> Value {
        let read = async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if let Message::Text(t) = msg {
                    let f: Value = serde_json::from_str(t.as_str()).expect("json frame");
                    if f["event"] == event {
                        return f;
                    }
                }
            }
            panic!("closed waiting for {event}")
        };
        tokio::time::timeout(Duration::from_secs(5), read).await.expect(event)
    }

    async fn subscribe_presence(&mut self, channel: &str, user_id: &str) {
        let data = json!({ "user_id": user_id, "user_info": {} }).to_string();
        let auth = creds().channel_auth(&self.socket_id, channel, Some(&data));
        self.send(json!({
            "event": "pusher:subscribe",
            "data": { "channel": channel, "auth": auth, "channel_data": data },
        }))
        .await;
        self.wait("pusher_internal:subscription_succeeded").await;
    }
}

/// A socket.io client of user `id` in presence `room`, admitted by an auth answer it presents.
async fn sio_joined(app: &TestApp, id: i64, room: &str) -> Ws {
    let mut s = Ws::connected(app, &user(json!(id))).await;
    let socket_id = s.event("session").await["socketId"].as_str().expect("id").to_owned();
    let data = json!({ "user_id": id.to_string(), "user_info": {} }).to_string();
    let auth = creds().channel_auth(&socket_id, room, Some(&data));
    let ack = s
        .emit(
            "join-room",
            json!({ "roomId": room, "auth": auth, "channel_data": data }),
        )
        .await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    s
}

/// Waits (up to 2 s) for a metric to reach `value`: it is counted once the answer is read.
async fn metric_reaches(app: &TestApp, name: &str, value: f64) {
    for _ in 0..40 {
        if app.metric(name).await == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} is {:?}, not {value}", app.metric(name).await);
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["user_id"].as_str() {
            Some(u) => format!("{}:{u}", e["name"].as_str().unwrap_or("?")),
            None => e["name"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

#[tokio::test]
async fn both_protocols_report_occupied_members_client_events_and_vacated_in_order() {
    let mut hooks = receiver(0).await;
    let app = spawn_pusher_app(&["--webhook-url", &hooks.url]).await;
    let room = "presence-room-1";

    let mut sio = sio_joined(&app, 5, room).await;
    let events = hooks.events(2).await;
    assert_eq!(names(&events), ["channel_occupied", "member_added:5"]);
    assert_eq!(events[0], json!({ "name": "channel_occupied", "channel": room }));

    let mut pc = Pc::connect(&app).await;
    pc.subscribe_presence(room, "7").await;
    assert_eq!(names(&hooks.events(1).await), ["member_added:7"], "no second occupied");
    let mut tab = Pc::connect(&app).await;
    tab.subscribe_presence(room, "7").await;

    pc.send(json!({ "event": "client-typing", "channel": room, "data": { "typing": true } }))
        .await;
    let client = hooks.events(1).await;
    assert_eq!(
        client[0],
        json!({
            "name": "client_event",
            "channel": room,
            "event": "client-typing",
            "data": "{\"typing\":true}",
            "socket_id": pc.socket_id,
            "user_id": "7",
        })
    );

    pc.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": room } }))
        .await;
    assert!(hooks.quiet(300).await, "user 7 still has a tab there");
    tab.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": room } }))
        .await;
    assert_eq!(names(&hooks.events(1).await), ["member_removed:7"]);

    let ack = sio.emit("leave-room", json!({ "roomId": room })).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    assert_eq!(names(&hooks.events(2).await), ["member_removed:5", "channel_vacated"]);
    assert!(hooks.quiet(300).await);
    metric_reaches(&app, "switchboard_webhooks_sent_total", 7.0).await;
}

#[tokio::test]
async fn batching_gathers_events_into_one_request_and_the_filter_applies() {
    let mut hooks = receiver(0).await;
    let app = spawn_pusher_app(&[
        "--webhook-url",
        &hooks.url,
        "--webhook-batch-ms",
        "300",
        "--webhook-events",
        "channel_occupied,channel_vacated,member_added",
    ])
    .await;
    let room = "presence-room-2";
    let mut sio = sio_joined(&app, 5, room).await;
    let _other = sio_joined(&app, 6, room).await;
    let batch = hooks.next().await.events();
    assert_eq!(names(&batch), ["channel_occupied", "member_added:5", "member_added:6"]);
    let ack = sio.emit("leave-room", json!({ "roomId": room })).await;
    assert_eq!(ack["ok"], json!(true));
    assert!(hooks.quiet(600).await, "member_removed is filtered out");
}

#[tokio::test]
async fn a_failed_request_is_retried_with_the_same_signed_body() {
    let mut hooks = receiver(1).await;
    let app = spawn_pusher_app(&["--webhook-url", &hooks.url]).await;
    let room = "presence-room-3";
    let _sio = sio_joined(&app, 5, room).await;
    let failed = hooks.next().await;
    let failed_events = failed.events();
    assert_eq!(names(&failed_events), ["channel_occupied"]);
    // The request behind it is not held up by the retry.
    let second = hooks.next().await;
    assert_eq!(names(&second.events()), ["member_added:5"]);
    let retried = hooks.next().await;
    assert_eq!(retried.body, failed.body, "same body, same time_ms");
    assert_eq!(retried.signature, failed.signature);
    metric_reaches(&app, "switchboard_webhooks_retried_total", 1.0).await;
    metric_reaches(&app, "switchboard_webhooks_sent_total", 2.0).await;
}
