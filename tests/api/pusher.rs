//! Pusher compatibility: the auth shim against a fake app endpoint, and the
//! HTTP API with requests signed the way the official SDKs sign them.

use std::sync::{Arc, Mutex};

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use serde_json::{Value, json};
use switchboard::pusher::{Credentials, signing};

use crate::helpers::{Client, Sio, TestApp, Ws, spawn_app_with, user};

const APP_ID: &str = "42";
const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

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
    let mut args = vec![
        "--pusher-app-id",
        APP_ID,
        "--pusher-key",
        KEY,
        "--pusher-secret",
        SECRET,
    ];
    args.extend(["--pusher-auth-timeout-ms", "1000"]);
    if let Some(e) = endpoint {
        args.extend(["--pusher-auth-endpoint", e]);
    }
    spawn_app_with(&args).await
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
    assert_eq!(presence["members"], json!([{ "userId": "5", "name": "user 5" }]));

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
    let creds = Credentials::new(APP_ID, KEY, SECRET);
    let now = (switchboard::clock::now_ms() / 1000 - age).to_string();
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), KEY.into()),
        ("auth_timestamp".into(), now),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), signing::body_md5(body.as_bytes())));
    }
    let signature = creds.sign(&signing::string_to_sign(method, path, &params));
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    app.url(&format!("{path}?{}&auth_signature={signature}", query.join("&")))
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
