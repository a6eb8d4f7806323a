//! Pusher compatibility: the auth shim against a fake app endpoint, and the
//! HTTP API with requests signed the way the official SDKs sign them.

use std::sync::{Arc, Mutex};

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use serde_json::{Value, json};
use switchboard::pusher::Credentials;

use crate::helpers::{Client, Sio, TestApp, Ws, spawn_app_with, user};

use crate::helpers::{
    PUSHER_APP_ID as APP_ID, PUSHER_KEY as KEY, PUSHER_SECRET as SECRET, pusher_signed_url, spawn_pusher_app,
};

/// How the fake app's `/api/pusher/auth` behaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Signs for `uid` cookie 5 or 12 (and presence with channel_data), else 403.
    Normal,
    WrongSecret,
    ServerError,
    Slow,
}

/// What the fake endpoint received: Cookie, Authorization, form body.
type Seen = (Option<String>, Option<String>, String);

#[derive(Clone)]
struct FakeApp {
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn auth(State(app): State<FakeApp>, headers: HeaderMap, body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    app.seen
        .lock()
        .expect("lock")
        .push((header("cookie"), header("authorization"), body.clone()));
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let (socket_id, channel) = (form["socket_id"].clone(), form["channel_name"].clone());
    let mode = *app.mode.lock().expect("lock");
    match mode {
        Mode::ServerError => return (axum::http::StatusCode::BAD_GATEWAY, "boom").into_response(),
        Mode::Slow => tokio::time::sleep(std::time::Duration::from_secs(3)).await,
        _ => {}
    }
    let uid = header("cookie").and_then(|c| c.strip_prefix("uid=").map(str::to_owned));
    if !matches!(uid.as_deref(), Some("5" | "12")) {
        return (axum::http::StatusCode::FORBIDDEN, "no").into_response();
    }
    let secret = if mode == Mode::WrongSecret { "other" } else { SECRET };
    let creds = Credentials::new(APP_ID, KEY, secret);
    let data = channel.starts_with("presence-").then(|| {
        json!({ "user_id": uid, "user_info": { "name": format!("user {}", uid.clone().unwrap_or_default()) } })
            .to_string()
    });
    let auth = creds.channel_auth(&socket_id, &channel, data.as_deref());
    axum::Json(json!({ "auth": auth, "channel_data": data })).into_response()
}

async fn fake_app() -> (FakeApp, String) {
    let app = FakeApp {
        mode: Arc::new(Mutex::new(Mode::Normal)),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/api/pusher/auth", listener.local_addr().expect("addr"));
    let router = Router::new()
        .route("/api/pusher/auth", post(auth))
        .with_state(app.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (app, url)
}

async fn spawn(endpoint: Option<&str>) -> TestApp {
    let mut args = vec!["--pusher-auth-timeout-ms", "1000"];
    if let Some(e) = endpoint {
        args.extend(["--pusher-auth-endpoint", e]);
    }
    spawn_pusher_app(&args).await
}

#[tokio::test]
async fn the_shim_asks_the_app_endpoint_with_the_clients_cookie() {
    let (fake, endpoint) = fake_app().await;
    let app = spawn(Some(&endpoint)).await;
    let token = user(json!(5));
    let (mut alice, _) = Ws::connect_with_headers(&app, json!({ "token": token }), &[("Cookie", "uid=5")]).await;
    let socket_id = alice.event("session").await["socketId"]
        .as_str()
        .expect("id")
        .to_owned();

    let ack = alice.emit("join-room", json!("private-chat-5-12")).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let seen = fake.seen.lock().expect("lock").clone();
    let (cookie, authorization, body) = &seen[0];
    assert_eq!(cookie.as_deref(), Some("uid=5"));
    assert_eq!(
        authorization.as_deref(),
        Some(format!("Bearer {token}").as_str()),
        "the JWT stands in"
    );
    assert_eq!(body, &format!("socket_id={}&channel_name=private-chat-5-12", socket_id));

    let presence = alice.emit("join-room", json!("presence-online")).await;
    assert_eq!(
        presence["members"],
        json!([{ "userId": 5, "name": "user 5" }]),
        "channel_data's \"5\" is the number 5 (PUSHER_USER_ID_TYPE=auto)"
    );
    assert_eq!(
        presence["presence"],
        json!({ "count": 1, "ids": ["5"], "hash": { "5": { "name": "user 5" } } })
    );

    let (mut bob, _) = Ws::connect_with_headers(&app, json!({ "token": user(json!(7)) }), &[("Cookie", "uid=7")]).await;
    let refused = bob.emit("join-room", json!("private-chat-5-12")).await;
    assert_eq!(refused["error"]["code"], json!("forbidden"));

    *fake.mode.lock().expect("lock") = Mode::WrongSecret;
    let forged = alice.emit("join-room", json!("private-other")).await;
    assert_eq!(forged["error"]["code"], json!("forbidden"));

    *fake.mode.lock().expect("lock") = Mode::ServerError;
    let failed = alice.emit("join-room", json!("private-other")).await;
    assert_eq!(failed["error"]["code"], json!("internal"));
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("auth endpoint failed"))
    );

    *fake.mode.lock().expect("lock") = Mode::Slow;
    let slow = alice.emit("join-room", json!("private-other")).await;
    assert_eq!(slow["error"]["code"], json!("internal"), "bounded by the timeout");
    assert_eq!(
        alice.emit("leave-room", json!("presence-online")).await["ok"],
        json!(true),
        "still served"
    );
}

#[tokio::test]
async fn without_an_endpoint_private_rooms_are_refused() {
    let app = spawn(None).await;
    let mut c = Ws::connected(&app, &user(json!(5))).await;
    let ack = c.emit("join-room", json!("private-chat-5-12")).await;
    assert_eq!(ack["error"]["code"], json!("forbidden"));
}

/// A URL signed like the official SDKs sign, `age` seconds ago.
fn signed_url(app: &TestApp, method: &str, path: &str, body: &str, age: i64) -> String {
    let then = (switchboard::clock::now_ms() / 1000 - age).to_string();
    pusher_signed_url(app, method, path, body, &then)
}

async fn api(app: &TestApp, method: reqwest::Method, path: &str, body: Value) -> (u16, String) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let url = signed_url(app, method.as_str(), path, &body, 0);
    let res = app.http.request(method, url).body(body).send().await.expect("request");
    (res.status().as_u16(), res.text().await.expect("text"))
}

#[tokio::test]
async fn triggers_reach_sockets_in_the_room_named_like_the_channel() {
    let app = spawn(None).await;
    let mut a = Ws::connected(&app, &user(json!(5))).await;
    let mut b = Ws::connected(&app, &user(json!(12))).await;
    let a_socket = a.event("session").await["socketId"].as_str().expect("id").to_owned();
    a.emit("join-room", json!("news")).await;
    b.emit("join-room", json!("news")).await;

    let body = json!({ "name": "breaking", "channels": ["news"], "data": "{\"headline\":\"hi\"}" });
    let (status, text) = api(&app, reqwest::Method::POST, &format!("/apps/{APP_ID}/events"), body).await;
    assert_eq!((status, text.as_str()), (200, "{}"));
    assert_eq!(a.event("breaking").await, json!({ "headline": "hi" }));
    assert_eq!(b.event("breaking").await, json!({ "headline": "hi" }));

    let body = json!({ "name": "note", "channel": "news", "data": "plain text", "socket_id": a_socket });
    api(&app, reqwest::Method::POST, &format!("/apps/{APP_ID}/events"), body).await;
    assert_eq!(b.event("note").await, json!("plain text"));
    assert!(a.none("note", 200).await, "socket_id excludes that socket");

    let (status, text) = api(
        &app,
        reqwest::Method::GET,
        &format!("/apps/{APP_ID}/channels/news"),
        Value::Null,
    )
    .await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&text).ok()),
        (200, Some(json!({ "occupied": true })))
    );
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_wrong_apps_are_refused() {
    let app = spawn(None).await;
    let body = json!({ "name": "e", "channel": "news", "data": "{}" }).to_string();
    let path = format!("/apps/{APP_ID}/events");
    let good = signed_url(&app, "POST", &path, &body, 0);
    let tampered = good.replace("auth_signature=", "auth_signature=00");
    let res = app
        .http
        .post(&tampered)
        .body(body.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 401);
    let res = app
        .http
        .post(&good)
        .body(format!("{body} "))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 401, "body_md5 mismatch");
    let stale = signed_url(&app, "POST", &path, &body, 700);
    let res = app.http.post(&stale).body(body.clone()).send().await.expect("request");
    assert_eq!(res.status().as_u16(), 401);
    let (status, _) = api(
        &app,
        reqwest::Method::POST,
        "/apps/999/events",
        json!({ "name": "e", "channel": "x", "data": "{}" }),
    )
    .await;
    assert_eq!(status, 404);

    let plain = crate::helpers::spawn_app().await;
    let res = plain
        .http
        .post(plain.url(&path))
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 404, "no Pusher credentials: no /apps routes");
}

#[tokio::test]
async fn group_membership_is_written_by_the_backend_and_enforced() {
    let app = spawn(None).await;
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    let mut carol = Ws::connected(&app, &user(json!(12))).await;
    assert_eq!(
        alice.emit("join-room", json!("group-9")).await["error"]["code"],
        json!("forbidden")
    );

    for uid in ["5", "12"] {
        let (status, _) = api(
            &app,
            reqwest::Method::PUT,
            &format!("/apps/{APP_ID}/groups/9/members/{uid}"),
            Value::Null,
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(alice.emit("join-room", json!("group-9")).await["ok"], json!(true));
    assert_eq!(carol.emit("join-room", json!("group-9")).await["ok"], json!(true));
    alice.event("user-online").await;

    let (status, _) = api(
        &app,
        reqwest::Method::DELETE,
        &format!("/apps/{APP_ID}/groups/9/members/12"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        alice.event("user-online").await,
        json!({ "roomId": "group-9", "userId": 12, "online": false })
    );
    let send = carol
        .emit("send-message", json!({ "roomId": "group-9", "message": "still here?" }))
        .await;
    assert_eq!(send["error"]["code"], json!("not_joined"));
    assert_eq!(
        carol.emit("join-room", json!("group-9")).await["error"]["code"],
        json!("forbidden")
    );
    assert!(
        carol.wait(|p| matches!(p, Sio::Disconnect)).await.is_none(),
        "the connection stays"
    );
}

#[tokio::test]
async fn terminate_connections_disconnects_every_socket_of_the_user() {
    let app = spawn(None).await;
    let mut tab1 = Ws::connected(&app, &user(json!(5))).await;
    let mut tab2 = Ws::connected(&app, &user(json!("5"))).await;
    let mut other = Ws::connected(&app, &user(json!(12))).await;
    let (status, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/apps/{APP_ID}/users/5/terminate_connections"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    for tab in [&mut tab1, &mut tab2] {
        assert!(tab.wait(|p| matches!(p, Sio::Disconnect)).await.is_some());
    }
    assert_eq!(other.emit("join-room", json!("lobby")).await["ok"], json!(true));
}

/// The connect answer's error message, or a panic.
fn refusal(answer: Sio) -> String {
    match answer {
        Sio::ConnectError(e) => e["message"].as_str().expect("message").to_owned(),
        other => panic!("expected connect_error, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_token_the_apps_session_cookie_names_the_user() {
    let (fake, endpoint) = fake_app().await;
    let app = spawn(Some(&endpoint)).await;
    let (mut alice, answer) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=5")]).await;
    assert!(matches!(answer, Sio::Connect(_)), "{answer:?}");
    let session = alice.event("session").await;
    assert_eq!(session["userId"], json!(5), "a number, as the legacy app has it");
    let socket_id = session["socketId"].as_str().expect("id").to_owned();
    let seen = fake.seen.lock().expect("lock").clone();
    let (cookie, authorization, body) = &seen[0];
    assert_eq!(cookie.as_deref(), Some("uid=5"));
    assert_eq!(authorization, &None, "no token, so no Bearer stands in");
    assert_eq!(body, &format!("socket_id={socket_id}&channel_name=presence-online"));

    // The connection is user 5 everywhere: in a direct room, and on its messages.
    assert_eq!(alice.emit("join-room", json!("chat-5-12")).await["ok"], json!(true));
    let sent = alice
        .emit("send-message", json!({ "roomId": "chat-5-12", "message": "hi" }))
        .await;
    assert_eq!(sent["message"]["userId"], json!(5));
    assert_eq!(sent["message"]["fullName"], json!("user 5"), "profile from user_info");
    assert_eq!(
        alice.emit("join-room", json!("private-chat-5-12")).await["ok"],
        json!(true),
        "later joins ask with the same cookie"
    );

    // A token wins: the endpoint is not asked at connect time.
    let before = fake.seen.lock().expect("lock").len();
    let (mut carol, _) =
        Ws::connect_with_headers(&app, json!({ "token": user(json!(12)) }), &[("Cookie", "uid=5")]).await;
    assert_eq!(carol.event("session").await["userId"], json!(12));
    assert_eq!(fake.seen.lock().expect("lock").len(), before);

    let (_, refused) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=7")]).await;
    let why = refusal(refused);
    assert!(why.starts_with("unauthorized: ") && why.contains("403"), "{why}");
    let (_, refused) = Ws::connect(&app, json!({})).await;
    assert!(refusal(refused).starts_with("unauthorized: "), "no cookie at all");

    *fake.mode.lock().expect("lock") = Mode::WrongSecret;
    let (_, refused) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=5")]).await;
    assert!(refusal(refused).contains("not validly signed"));

    *fake.mode.lock().expect("lock") = Mode::ServerError;
    let (_, refused) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=5")]).await;
    let why = refusal(refused);
    assert!(why.starts_with("unauthorized: auth endpoint failed"), "{why}");
}

#[tokio::test]
async fn session_identity_is_off_without_an_endpoint_or_an_identity_channel() {
    let plain = spawn(None).await;
    let (_, refused) = Ws::connect_with_headers(&plain, json!({}), &[("Cookie", "uid=5")]).await;
    assert_eq!(refusal(refused), "unauthorized: missing token");

    let (fake, endpoint) = fake_app().await;
    let off = spawn_app_with(&[
        "--pusher-app-id",
        APP_ID,
        "--pusher-key",
        KEY,
        "--pusher-secret",
        SECRET,
        "--pusher-auth-endpoint",
        &endpoint,
        "--pusher-identity-channel",
        "",
    ])
    .await;
    let (_, refused) = Ws::connect_with_headers(&off, json!({}), &[("Cookie", "uid=5")]).await;
    assert_eq!(refusal(refused), "unauthorized: missing token");
    assert!(fake.seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn presence_rooms_announce_members_in_pushers_shape() {
    let (_fake, endpoint) = fake_app().await;
    let app = spawn(Some(&endpoint)).await;
    let mut carol = Ws::connected(&app, &user(json!(12))).await;
    let (mut alice, _) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=5")]).await;
    let (mut carol_tab, _) =
        Ws::connect_with_headers(&app, json!({ "token": user(json!(12)) }), &[("Cookie", "uid=12")]).await;
    assert_eq!(
        carol.emit("join-room", json!("lobby")).await["ok"],
        json!(true),
        "ordinary rooms have no Pusher shape"
    );
    assert!(carol.emit("join-room", json!("lobby")).await.get("presence").is_none());

    let first = carol_tab.emit("join-room", json!("presence-online")).await;
    assert_eq!(
        first["presence"],
        json!({ "count": 1, "ids": ["12"], "hash": { "12": { "name": "user 12" } } })
    );
    let joined = alice.emit("join-room", json!("presence-online")).await;
    assert_eq!(joined["presence"]["count"], json!(2));
    assert_eq!(joined["presence"]["ids"], json!(["12", "5"]));
    assert_eq!(
        carol_tab.event("user-online").await,
        json!({ "roomId": "presence-online", "userId": 5, "online": true })
    );
    assert_eq!(
        carol_tab.event("pusher:member_added").await,
        json!({ "roomId": "presence-online", "id": "5", "info": { "name": "user 5" } })
    );
    assert!(
        alice.none("pusher:member_added", 200).await,
        "not to the member themself"
    );

    assert_eq!(
        alice.emit("leave-room", json!("presence-online")).await["ok"],
        json!(true)
    );
    assert_eq!(
        carol_tab.event("pusher:member_removed").await,
        json!({ "roomId": "presence-online", "id": "5", "info": { "name": "user 5" } })
    );
    // A disconnect counts too.
    alice.emit("join-room", json!("presence-online")).await;
    carol_tab.event("pusher:member_added").await;
    drop(alice);
    assert_eq!(carol_tab.event("pusher:member_removed").await["id"], json!("5"));
    assert!(carol.none("pusher:member_added", 100).await, "not outside the room");
}

/// The legacy `/api/pusher/message` route's trigger body for a DM from user 5.
fn legacy_trigger(temp_id: &str, text: &str, socket_id: Option<&str>) -> Value {
    let data = json!({
        "id": temp_id, "userId": 5, "username": "alice", "fullName": "Alice Martin",
        "message": text, "type": "message", "timestamp": "2024-01-01T00:00:00.000Z",
    });
    let mut body = json!({ "name": "new-message", "channels": ["private-chat-5-12"], "data": data.to_string() });
    if let Some(id) = socket_id {
        body["socket_id"] = json!(id);
    }
    body
}

#[tokio::test]
async fn stored_triggers_are_stored_once_then_sent_to_the_room_but_the_excluded_socket() {
    let (_fake, endpoint) = fake_app().await;
    let app = spawn(Some(&endpoint)).await;
    let (mut alice, _) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=5")]).await;
    let (mut carol, _) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=12")]).await;
    let alice_socket = alice.event("session").await["socketId"]
        .as_str()
        .expect("id")
        .to_owned();
    for c in [&mut alice, &mut carol] {
        assert_eq!(c.emit("join-room", json!("private-chat-5-12")).await["ok"], json!(true));
    }

    let path = format!("/apps/{APP_ID}/events");
    let body = legacy_trigger("temp-1", "hello carol", Some(&alice_socket));
    let (status, text) = api(&app, reqwest::Method::POST, &path, body.clone()).await;
    assert_eq!((status, text.as_str()), (200, "{}"));
    let got = carol.event("new-message").await;
    let id = got["id"].as_str().expect("server id").to_owned();
    assert!(id.parse::<i64>().is_ok(), "the stored id, not the temp id: {got}");
    assert_eq!(got["clientId"], json!("temp-1"));
    assert_eq!(got["roomId"], json!("private-chat-5-12"));
    assert_eq!(got["userId"], json!(5));
    assert_eq!(got["username"], json!("alice"));
    assert_eq!(got["fullName"], json!("Alice Martin"));
    assert_eq!(got["message"], json!("hello carol"));
    assert!(got["timestamp"].is_i64(), "server time: {got}");
    assert!(
        alice.none("new-message", 200).await,
        "socket_id excludes the sender's socket"
    );

    // The backend retries: nothing new is stored or sent.
    let (status, _) = api(&app, reqwest::Method::POST, &path, body).await;
    assert_eq!(status, 200);
    assert!(carol.none("new-message", 300).await, "a retry is not sent again");

    let (mut later, _) = Ws::connect_with_headers(&app, json!({}), &[("Cookie", "uid=12")]).await;
    let joined = later.emit("join-room", json!("private-chat-5-12")).await;
    let history = joined["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "{joined}");
    assert_eq!(history[0]["id"], json!(id));
    let res = app
        .http
        .get(app.url("/api/rooms/private-chat-5-12/messages"))
        .bearer_auth(user(json!(12)))
        .header("Cookie", "uid=12")
        .send()
        .await
        .expect("request");
    let page: Value = res.json().await.expect("json");
    let stored = page["messages"].as_array().expect("messages");
    assert_eq!(stored.len(), 1, "{page}");
    assert_eq!(stored[0]["id"], json!(id));
    assert_eq!(stored[0]["clientId"], json!("temp-1"));

    // Other event names are relayed as they are, and not stored.
    let typing = json!({ "name": "typing", "channel": "private-chat-5-12", "data": { "userId": 5 } });
    api(&app, reqwest::Method::POST, &path, typing).await;
    assert_eq!(carol.event("typing").await, json!({ "userId": 5 }));

    let bad = json!({ "name": "new-message", "channel": "private-chat-5-12", "data": { "id": "t", "message": "x" } });
    let (status, text) = api(&app, reqwest::Method::POST, &path, bad).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("userId"), "{text}");
    let batch = json!({ "batch": [
        legacy_trigger("temp-2", "in a batch", None),
        { "name": "new-message", "channel": "private-chat-5-12", "data": { "id": "t", "userId": 5, "message": "" } },
    ] });
    let (status, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/apps/{APP_ID}/batch_events"),
        batch,
    )
    .await;
    assert_eq!(status, 400, "a bad batch stores nothing");
    assert!(carol.none("new-message", 200).await);
    let batch = json!({ "batch": [legacy_trigger("temp-2", "in a batch", None)] });
    let (status, _) = api(
        &app,
        reqwest::Method::POST,
        &format!("/apps/{APP_ID}/batch_events"),
        batch,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(carol.event("new-message").await["clientId"], json!("temp-2"));
    assert_eq!(
        alice.event("new-message").await["clientId"],
        json!("temp-2"),
        "no socket_id: all"
    );
}

#[tokio::test]
async fn stored_events_can_be_turned_off() {
    let app = spawn_app_with(&[
        "--pusher-app-id",
        APP_ID,
        "--pusher-key",
        KEY,
        "--pusher-secret",
        SECRET,
        "--pusher-stored-events",
        "",
    ])
    .await;
    let mut carol = Ws::connected(&app, &user(json!(12))).await;
    carol.emit("join-room", json!("chat-5-12")).await;
    let body = json!({ "name": "new-message", "channel": "chat-5-12", "data": { "id": "temp-1", "message": "raw" } });
    let (status, _) = api(&app, reqwest::Method::POST, &format!("/apps/{APP_ID}/events"), body).await;
    assert_eq!(status, 200, "not validated as a message either");
    assert_eq!(
        carol.event("new-message").await,
        json!({ "id": "temp-1", "message": "raw" })
    );
    let history = carol
        .emit("join-room", json!({ "roomId": "chat-5-12", "since": 0 }))
        .await;
    assert_eq!(history["history"], json!([]));
}

#[tokio::test]
async fn a_browser_may_present_the_auth_endpoints_answer_itself() {
    // Cross-site: no auth endpoint configured, only the app's Pusher credentials.
    let app = spawn(None).await;
    let creds = Credentials::new(APP_ID, KEY, SECRET);
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    let socket_id = alice.event("session").await["socketId"]
        .as_str()
        .expect("id")
        .to_owned();
    let data = json!({ "user_id": "5", "user_info": { "username": "alice" } }).to_string();
    let auth = creds.channel_auth(&socket_id, "presence-online", Some(&data));
    let joined = alice
        .emit(
            "join-room",
            json!({ "roomId": "presence-online", "auth": auth, "channel_data": data }),
        )
        .await;
    assert_eq!(
        joined["members"],
        json!([{ "userId": 5, "username": "alice" }]),
        "{joined}"
    );
    assert_eq!(joined["presence"]["ids"], json!(["5"]));

    let private = creds.channel_auth(&socket_id, "private-chat-5-12", None);
    let ok = alice
        .emit("join-room", json!({ "roomId": "private-chat-5-12", "auth": private }))
        .await;
    assert_eq!(ok["ok"], json!(true), "{ok}");

    // Signed for another socket, channel or secret: refused.
    let mut bob = Ws::connected(&app, &user(json!(7))).await;
    let stolen = bob
        .emit("join-room", json!({ "roomId": "private-chat-5-12", "auth": private }))
        .await;
    assert_eq!(stolen["error"]["code"], json!("forbidden"), "another socket's auth");
    let other_room = creds.channel_auth(&socket_id, "private-chat-5-7", None);
    let wrong = alice
        .emit(
            "join-room",
            json!({ "roomId": "private-chat-5-12x", "auth": other_room }),
        )
        .await;
    assert_eq!(wrong["error"]["code"], json!("forbidden"));
    let forged = Credentials::new(APP_ID, KEY, "other").channel_auth(&socket_id, "private-x", None);
    let wrong = alice
        .emit("join-room", json!({ "roomId": "private-x", "auth": forged }))
        .await;
    assert_eq!(wrong["error"]["code"], json!("forbidden"));
    let bad = alice
        .emit("join-room", json!({ "roomId": "private-x", "auth": 5 }))
        .await;
    assert_eq!(bad["error"]["code"], json!("invalid_payload"));
    // Without an auth, private rooms still need the endpoint.
    let without = alice.emit("join-room", json!("private-y")).await;
    assert_eq!(without["error"]["code"], json!("forbidden"));

    // No Pusher credentials at all: nothing to check an auth with.
    let plain = crate::helpers::spawn_app().await;
    let mut carol = Ws::connected(&plain, &user(json!(12))).await;
    let sid = carol.event("session").await["socketId"]
        .as_str()
        .expect("id")
        .to_owned();
    let auth = creds.channel_auth(&sid, "private-chat-5-12", None);
    let refused = carol
        .emit("join-room", json!({ "roomId": "private-chat-5-12", "auth": auth }))
        .await;
    assert_eq!(refused["error"]["code"], json!("forbidden"));
}
