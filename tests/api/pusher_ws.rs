//! Pusher's WebSocket protocol at `/app/{key}`, spoken in raw frames, and
//! meeting Socket.IO clients in the same rooms.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::pusher::{Credentials, signing};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::helpers::{Client, TestApp, Ws, user};

use crate::helpers::{PUSHER_APP_ID as APP_ID, PUSHER_KEY as KEY, PUSHER_SECRET as SECRET, spawn_pusher_app as spawn};

fn creds() -> Credentials {
    Credentials::new(APP_ID, KEY, SECRET)
}

/// A pusher-js stand-in: raw Pusher frames over a WebSocket.
struct Pc {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    socket_id: String,
    buf: Vec<Value>,
}

/// Where the server answered with a close frame: its code.
enum Next {
    Frame(Value),
    Closed(Option<u16>),
}

impl Pc {
    async fn open(app: &TestApp, key: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        let url = format!(
            "ws://{}/app/{key}?protocol=7&client=js&version=8.6.0&flash=false",
            app.addr
        );
        tokio_tungstenite::connect_async(url).await.expect("ws connect").0
    }

    async fn connect(app: &TestApp) -> Self {
        let mut c = Self {
            ws: Self::open(app, KEY).await,
            socket_id: String::new(),
            buf: Vec::new(),
        };
        let hello = c.wait("pusher:connection_established").await;
        let data: Value = serde_json::from_str(hello["data"].as_str().expect("data is a string")).expect("json");
        assert_eq!(data["activity_timeout"], json!(120));
        c.socket_id = data["socket_id"].as_str().expect("socket_id").to_owned();
        c
    }

    async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.expect("send");
    }

    async fn next(&mut self, within: Duration) -> Option<Next> {
        let read = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Next::Frame(serde_json::from_str(t.as_str()).expect("frames are JSON"));
                    }
                    Some(Ok(Message::Close(frame))) => return Next::Closed(frame.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Next::Closed(None),
                }
            }
        };
        tokio::time::timeout(within, read).await.ok()
    }

    /// The next frame named `event` (earlier ones kept), within two seconds.
    async fn wait(&mut self, event: &str) -> Value {
        if let Some(pos) = self.buf.iter().position(|f| f["event"] == event) {
            return self.buf.remove(pos);
        }
        loop {
            match self.next(Duration::from_secs(2)).await {
                Some(Next::Frame(f)) if f["event"] == event => return f,
                Some(Next::Frame(f)) => self.buf.push(f),
                Some(Next::Closed(code)) => panic!("closed ({code:?}) waiting for {event}"),
                None => panic!("no {event}"),
            }
        }
    }

    /// True when no `event` is pending or arrives within `ms`.
    async fn none(&mut self, event: &str, ms: u64) -> bool {
        if self.buf.iter().any(|f| f["event"] == event) {
            return false;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Next::Frame(f)) if f["event"] == event => return false,
                Some(Next::Frame(f)) => self.buf.push(f),
                Some(Next::Closed(_)) | None => return true,
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, channel_data: Option<Value>) -> Value {
        let data = channel_data.map(|d| d.to_string());
        let mut sub = json!({ "channel": channel });
        if channel.starts_with("private-") || channel.starts_with("presence-") {
            sub["auth"] = json!(creds().channel_auth(&self.socket_id, channel, data.as_deref()));
        }
        if let Some(d) = data {
            sub["channel_data"] = json!(d);
        }
        self.send(json!({ "event": "pusher:subscribe", "data": sub })).await;
        loop {
            let f = self
                .wait_any(&["pusher_internal:subscription_succeeded", "pusher:subscription_error"])
                .await;
            if f["channel"] == channel {
                return f;
            }
        }
    }

    async fn wait_any(&mut self, events: &[&str]) -> Value {
        if let Some(pos) = self.buf.iter().position(|f| events.iter().any(|e| f["event"] == *e)) {
            return self.buf.remove(pos);
        }
        loop {
            match self.next(Duration::from_secs(2)).await {
                Some(Next::Frame(f)) if events.iter().any(|e| f["event"] == *e) => return f,
                Some(Next::Frame(f)) => self.buf.push(f),
                other => panic!("no {events:?}: {}", matches!(other, Some(Next::Closed(_)))),
            }
        }
    }
}

/// `data` of a frame: Pusher sends it as a JSON string.
fn data(frame: &Value) -> Value {
    serde_json::from_str(frame["data"].as_str().expect("data is a string")).expect("json")
}

#[tokio::test]
async fn an_unknown_key_is_told_4001_and_closed_with_4001() {
    let app = spawn(&[]).await;
    let mut c = Pc {
        ws: Pc::open(&app, "not-the-key").await,
        socket_id: String::new(),
        buf: Vec::new(),
    };
    let Some(Next::Frame(error)) = c.next(Duration::from_secs(2)).await else {
        panic!("no error frame")
    };
    assert_eq!(error["event"], "pusher:error");
    assert_eq!(error["data"]["code"], json!(4001));
    assert!(matches!(
        c.next(Duration::from_secs(2)).await,
        Some(Next::Closed(Some(4001)))
    ));
}

#[tokio::test]
async fn a_plain_get_is_told_to_upgrade() {
    let app = spawn(&[]).await;
    let answer = app.http.get(app.url(&format!("/app/{KEY}"))).send().await.expect("get");
    assert_eq!(answer.status(), 400);
}

#[tokio::test]
async fn ping_pong_and_bad_frames_keep_the_connection() {
    let app = spawn(&[]).await;
    let mut c = Pc::connect(&app).await;
    c.send(json!({ "event": "pusher:ping", "data": {} })).await;
    c.wait("pusher:pong").await;
    c.ws.send(Message::text("{not json")).await.expect("send");
    let error = c.wait("pusher:error").await;
    assert_eq!(error["data"]["code"], json!(4200));
    c.send(json!({ "event": "pusher:subscribe", "data": {} })).await;
    c.wait("pusher:error").await;
    c.send(json!({ "event": "pusher:ping", "data": {} })).await;
    c.wait("pusher:pong").await;
    let public = c.subscribe("lobby", None).await;
    assert_eq!(public["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(data(&public), json!({}));
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_with_4201() {
    let app = spawn(&["--pusher-activity-timeout-secs", "1", "--pusher-pong-timeout-secs", "1"]).await;
    let url = format!("ws://{}/app/{KEY}?protocol=7", app.addr);
    let mut c = Pc {
        ws: tokio_tungstenite::connect_async(url).await.expect("connect").0,
        socket_id: String::new(),
        buf: Vec::new(),
    };
    c.wait("pusher:connection_established").await;
    let ping = c.next(Duration::from_secs(3)).await;
    assert!(matches!(ping, Some(Next::Frame(f)) if f["event"] == "pusher:ping"));
    let error = c.next(Duration::from_secs(3)).await;
    assert!(matches!(error, Some(Next::Frame(f)) if f["data"]["code"] == json!(4201)));
    assert!(matches!(
        c.next(Duration::from_secs(2)).await,
        Some(Next::Closed(Some(4201)))
    ));
}

#[tokio::test]
async fn private_channels_need_a_valid_signature() {
    let app = spawn(&[]).await;
    let mut c = Pc::connect(&app).await;
    c.send(json!({ "event": "pusher:subscribe", "data": { "channel": "private-x", "auth": format!("{KEY}:00") } }))
        .await;
    let refused = c.wait("pusher:subscription_error").await;
    assert_eq!(refused["channel"], "private-x");
    assert_eq!(refused["data"]["status"], json!(401));
    c.send(json!({ "event": "pusher:subscribe", "data": { "channel": "private-y" } }))
        .await;
    assert_eq!(c.wait("pusher:subscription_error").await["data"]["type"], "AuthError");
    let ok = c.subscribe("private-x", None).await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
}

/// A socket.io client of user `id` joined to `room` with an auth answer it
/// presents (as a cross-site browser would).
async fn sio_joined(app: &TestApp, id: i64, room: &str, info: Value) -> (Ws, Value) {
    let mut s = Ws::connected(app, &user(json!(id))).await;
    let socket_id = s.event("session").await["socketId"].as_str().expect("id").to_owned();
    let channel_data = room
        .starts_with("presence-")
        .then(|| json!({ "user_id": id.to_string(), "user_info": info }).to_string());
    let auth = creds().channel_auth(&socket_id, room, channel_data.as_deref());
    let mut join = json!({ "roomId": room, "auth": auth });
    if let Some(d) = channel_data {
        join["channel_data"] = json!(d);
    }
    let ack = s.emit("join-room", join).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    (s, ack)
}

#[tokio::test]
async fn socket_io_and_pusher_clients_meet_in_one_room() {
    let app = spawn(&[]).await;
    let room = "private-chat-5-12";
    let mut pusher = Pc::connect(&app).await;
    pusher.subscribe(room, None).await;
    let (mut sio, _) = sio_joined(&app, 5, room, json!({})).await;

    // socket.io → pusher: the stored message, data as a JSON string.
    let ack = sio
        .emit(
            "send-message",
            json!({ "roomId": room, "message": "hi from socket.io", "clientId": "c1" }),
        )
        .await;
    let stored = ack["message"].clone();
    let got = pusher.wait("new-message").await;
    assert_eq!(got["channel"], room);
    assert_eq!(data(&got), stored);

    // pusher → socket.io: a client event, not echoed to its sender.
    pusher
        .send(json!({ "event": "client-typing", "channel": room, "data": { "isTyping": true } }))
        .await;
    assert_eq!(sio.event("client-typing").await, json!({ "isTyping": true }));
    assert!(pusher.none("client-typing", 300).await, "not echoed");

    // An HTTP API trigger reaches both, minus the socket_id it excludes.
    let trigger = |socket_id: Option<&str>| {
        let mut body = json!({ "name": "ping", "channel": room, "data": "{\"n\":1}" });
        if let Some(id) = socket_id {
            body["socket_id"] = json!(id);
        }
        body
    };
    let events = format!("/apps/{APP_ID}/events");
    assert_eq!(post_signed(&app, &events, &trigger(None)).await, 200);
    assert_eq!(data(&pusher.wait("ping").await), json!({ "n": 1 }));
    assert_eq!(sio.event("ping").await, json!({ "n": 1 }));
    let excluded = trigger(Some(&pusher.socket_id));
    assert_eq!(post_signed(&app, &events, &excluded).await, 200);
    assert_eq!(sio.event("ping").await, json!({ "n": 1 }));
    assert!(
        pusher.none("ping", 300).await,
        "socket_id excludes the Pusher connection"
    );
}

/// Posts to the Pusher HTTP API, signed as the SDKs sign; the status.
async fn post_signed(app: &TestApp, path: &str, body: &Value) -> u16 {
    let body = body.to_string();
    let params = [
        ("auth_key".to_owned(), KEY.to_owned()),
        (
            "auth_timestamp".to_owned(),
            (switchboard::clock::now_ms() / 1000).to_string(),
        ),
        ("auth_version".to_owned(), "1.0".to_owned()),
        ("body_md5".to_owned(), signing::body_md5(body.as_bytes())),
    ];
    let signature = creds().sign(&signing::string_to_sign("POST", path, &params));
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let url = app.url(&format!("{path}?{}&auth_signature={signature}", query.join("&")));
    let answer = app
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    answer.status().as_u16()
}

#[tokio::test]
async fn presence_counts_both_kinds_and_announces_first_in_last_out() {
    let app = spawn(&[]).await;
    let room = "presence-online";
    let mut watcher = Pc::connect(&app).await;
    let me = json!({ "user_id": "99", "user_info": { "name": "Watcher" } });
    let first = watcher.subscribe(room, Some(me)).await;
    assert_eq!(data(&first)["presence"]["count"], json!(1));

    let (mut sio, ack) = sio_joined(&app, 12, room, json!({ "name": "Bob" })).await;
    assert_eq!(ack["presence"]["count"], json!(2));
    let added = watcher.wait("pusher_internal:member_added").await;
    assert_eq!(data(&added), json!({ "user_id": "12", "user_info": { "name": "Bob" } }));

    // Two Pusher tabs of user 5: one member_added, one member_removed.
    let five = json!({ "user_id": "5", "user_info": { "name": "Ann" } });
    let mut tab1 = Pc::connect(&app).await;
    let joined = tab1.subscribe(room, Some(five.clone())).await;
    let presence = &data(&joined)["presence"];
    assert_eq!(presence["count"], json!(3));
    assert_eq!(presence["hash"]["12"], json!({ "name": "Bob" }));
    assert_eq!(sio.event("pusher:member_added").await["id"], json!("5"));
    assert_eq!(
        data(&watcher.wait("pusher_internal:member_added").await)["user_id"],
        "5"
    );
    let mut tab2 = Pc::connect(&app).await;
    tab2.subscribe(room, Some(five)).await;
    assert!(
        watcher.none("pusher_internal:member_added", 300).await,
        "second tab: no new member"
    );

    tab1.ws.close(None).await.expect("close");
    assert!(
        watcher.none("pusher_internal:member_removed", 300).await,
        "a tab is left"
    );
    tab2.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": room } }))
        .await;
    assert_eq!(
        data(&watcher.wait("pusher_internal:member_removed").await),
        json!({ "user_id": "5" })
    );
    assert_eq!(sio.event("pusher:member_removed").await["id"], json!("5"));

    // Client events on presence carry the sender's user_id.
    watcher
        .send(json!({ "event": "client-wave", "channel": room, "data": { "hi": 1 } }))
        .await;
    let wave = tab2.none("client-wave", 200).await;
    assert!(wave, "unsubscribed tabs get nothing");
    let (mut sio_b, _) = sio_joined(&app, 5, room, json!({})).await;
    watcher
        .send(json!({ "event": "client-wave", "channel": room, "data": { "hi": 2 } }))
        .await;
    assert_eq!(sio_b.event("client-wave").await, json!({ "hi": 2 }));
    let mut tab3 = Pc::connect(&app).await;
    tab3.subscribe(room, Some(json!({ "user_id": "7", "user_info": {} })))
        .await;
    watcher
        .send(json!({ "event": "client-wave", "channel": room, "data": { "hi": 3 } }))
        .await;
    assert_eq!(tab3.wait("client-wave").await["user_id"], "99");
}

#[tokio::test]
async fn client_events_are_refused_where_pusher_refuses_them_and_rate_limited() {
    let app = spawn(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "4"]).await;
    let mut c = Pc::connect(&app).await;
    c.subscribe("lobby", None).await;
    c.send(json!({ "event": "client-x", "channel": "lobby", "data": {} }))
        .await;
    assert!(
        c.wait("pusher:error").await["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("private"))
    );
    c.send(json!({ "event": "client-x", "channel": "private-nope", "data": {} }))
        .await;
    assert!(
        c.wait("pusher:error").await["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not subscribed"))
    );
    c.subscribe("private-a", None).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        c.send(json!({ "event": "client-x", "channel": "private-a", "data": {} }))
            .await;
    }
    while let Some(Next::Frame(f)) = c.next(Duration::from_millis(300)).await {
        if f["event"] == "pusher:error" {
            codes.push(f["data"]["code"].clone());
        }
    }
    assert!(codes.contains(&json!(4301)), "{codes:?}");
    c.send(json!({ "event": "pusher:ping", "data": {} })).await;
    c.wait("pusher:pong").await;
}

#[tokio::test]
async fn terminate_connections_closes_the_users_pusher_connections() {
    let app = spawn(&[]).await;
    let mut c = Pc::connect(&app).await;
    c.subscribe("presence-online", Some(json!({ "user_id": "5", "user_info": {} })))
        .await;
    let path = format!("/apps/{APP_ID}/users/5/terminate_connections");
    assert_eq!(post_signed(&app, &path, &json!({})).await, 200);
    let closed = loop {
        match c.next(Duration::from_secs(2)).await {
            Some(Next::Closed(code)) => break code,
            Some(Next::Frame(_)) => continue,
            None => panic!("not closed"),
        }
    };
    assert_eq!(closed, Some(4009));
}

/// What the `pusher` SDK's `authenticateUser` returns for this socket and user data.
fn user_auth(socket_id: &str, user_data: &str) -> String {
    format!("{KEY}:{}", creds().sign(&format!("{socket_id}::user::{user_data}")))
}

#[tokio::test]
async fn signin_answers_success_and_terminate_connections_reaches_a_signed_in_connection() {
    let app = spawn(&[]).await;
    let mut c = Pc::connect(&app).await;
    let user_data = json!({ "id": "77", "user_info": { "name": "Ann" } }).to_string();
    let auth = user_auth(&c.socket_id, &user_data);
    c.send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } }))
        .await;
    let ok = c.wait("pusher:signin_success").await;
    assert_eq!(ok["data"]["user_data"], json!(user_data));
    // pusher-js then subscribes to the user's own channel; someone else's is refused.
    let own = c.subscribe("#server-to-user-77", None).await;
    assert_eq!(own["event"], "pusher_internal:subscription_succeeded");
    let other = c.subscribe("#server-to-user-78", None).await;
    assert_eq!(other["event"], "pusher:subscription_error");

    // In no room at all, the connection is still the user's.
    let mut bystander = Pc::connect(&app).await;
    let path = format!("/apps/{APP_ID}/users/77/terminate_connections");
    assert_eq!(post_signed(&app, &path, &json!({})).await, 200);
    let closed = loop {
        match c.next(Duration::from_secs(2)).await {
            Some(Next::Closed(code)) => break code,
            Some(Next::Frame(_)) => continue,
            None => panic!("not closed"),
        }
    };
    assert_eq!(closed, Some(4009));
    bystander.send(json!({ "event": "pusher:ping", "data": {} })).await;
    bystander.wait("pusher:pong").await;
}

#[tokio::test]
async fn a_bad_signin_is_told_4009_and_closed_and_a_malformed_one_only_gets_an_error() {
    let app = spawn(&[]).await;
    // Malformed (no user_data): an error, the connection stays.
    let mut c = Pc::connect(&app).await;
    c.send(json!({ "event": "pusher:signin", "data": { "auth": "x" } }))
        .await;
    let error = c.wait("pusher:error").await;
    assert_eq!(error["data"]["code"], json!(4200));
    c.send(json!({ "event": "pusher:ping", "data": {} })).await;
    c.wait("pusher:pong").await;

    // Signed for another socket: 4009, then closed with 4009.
    let user_data = json!({ "id": "77" }).to_string();
    let auth = user_auth("1.2", &user_data);
    c.send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } }))
        .await;
    let error = c.wait("pusher:error").await;
    assert_eq!(error["data"]["code"], json!(4009));
    assert!(matches!(
        c.next(Duration::from_secs(2)).await,
        Some(Next::Closed(Some(4009)))
    ));

    // Validly signed, but user_data has no string id.
    let mut c = Pc::connect(&app).await;
    let user_data = json!({ "id": 77 }).to_string();
    let auth = user_auth(&c.socket_id, &user_data);
    c.send(json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } }))
        .await;
    let error = c.wait("pusher:error").await;
    assert_eq!(error["data"]["code"], json!(4009));
    assert!(c.none("pusher:signin_success", 200).await);
}
