//! What a hostile or clumsy client tries (issue 17): memory amplification
//! through history, a misbehaving auth endpoint, and the edge cases of the
//! contract's error shapes. Each test failed before its fix.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::helpers::{
    Client, PUSHER_APP_ID as APP_ID, Sio, TestApp, Ws, pusher_signed_url, spawn_app_with, spawn_pusher_app, user,
};

const RELAXED: [&str; 4] = ["--rate-limit-per-sec", "100000", "--rate-limit-burst", "100000"];

/// Stores `n` messages of `chars` characters in `room` through REST.
async fn seed(app: &TestApp, room: &str, n: usize, chars: usize) {
    let token = user(json!(1));
    for i in 0..n {
        let res = app
            .http
            .post(app.url(&format!("/api/rooms/{room}/messages")))
            .bearer_auth(&token)
            .json(&json!({ "clientId": format!("seed-{i}"), "message": "m".repeat(chars) }))
            .send()
            .await
            .expect("post");
        assert_eq!(res.status(), 201);
    }
}

fn json_bytes(v: &Value) -> usize {
    v.to_string().len()
}

#[tokio::test]
async fn a_rejoin_sends_no_history_unless_asked() {
    let app = spawn_app_with(&RELAXED).await;
    seed(&app, "lobby", 3, 10).await;
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    let first = alice.emit("join-room", json!({ "roomId": "lobby" })).await;
    assert_eq!(first["history"].as_array().map(Vec::len), Some(3));
    let again = alice.emit("join-room", json!({ "roomId": "lobby" })).await;
    assert_eq!(again["ok"], json!(true));
    assert_eq!(again["history"], json!([]), "{again}");
    let asked = alice
        .emit("join-room", json!({ "roomId": "lobby", "since": "0" }))
        .await;
    assert_eq!(asked["history"].as_array().map(Vec::len), Some(3), "since asks again");
}

#[tokio::test]
async fn a_history_page_is_capped_in_bytes_as_well_as_count() {
    let app = spawn_app_with(&RELAXED).await;
    seed(&app, "big", 120, 4000).await;
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    let ack = alice.emit("join-room", json!({ "roomId": "big", "since": "0" })).await;
    let history = ack["history"].as_array().expect("history");
    assert!(
        json_bytes(&ack["history"]) <= 256 * 1024,
        "{} bytes",
        json_bytes(&ack["history"])
    );
    assert!(history.len() < 120 && !history.is_empty());
    assert_eq!(ack["hasMore"], json!(true));
    assert_eq!(
        history[0]["clientId"],
        json!("seed-0"),
        "paging forward keeps the oldest"
    );

    let res = app
        .http
        .get(app.url("/api/rooms/big/messages?after=0&limit=500"))
        .bearer_auth(user(json!(5)))
        .send()
        .await
        .expect("get");
    let page: Value = res.json().await.expect("json");
    assert!(json_bytes(&page["messages"]) <= 256 * 1024);
    assert_eq!(page["hasMore"], json!(true));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_by_bytes_queued() {
    // Packets alone would allow 4096 acks of 256 KiB each: 1 GiB held for one client.
    let mut args = RELAXED.to_vec();
    args.extend(["--socket-buffer-bytes", "65536"]);
    let app = spawn_app_with(&args).await;
    seed(&app, "big", 60, 4000).await;
    let mut reader = Ws::connected(&app, &user(json!(5))).await;
    let mut stalled = Ws::connected(&app, &user(json!(7))).await;
    // 200 joins × ~240 KiB is far more than the kernel's socket buffers hold.
    for i in 0..200 {
        stalled
            .send_raw(format!(
                "2{i}{}",
                json!(["join-room", { "roomId": "big", "since": "0" }])
            ))
            .await;
    }
    let mut cut = None;
    for _ in 0..100 {
        cut = app.metric("switchboard_slow_consumer_disconnects_total").await;
        if cut >= Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cut, Some(1.0), "the stalled client is cut off once");
    let ack = reader.emit("join-room", json!("lobby")).await;
    assert_eq!(ack["ok"], json!(true), "a client that reads is served on");
}

#[tokio::test]
async fn unknown_events_with_an_ack_are_answered() {
    let app = spawn_app_with(&[]).await;
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    let ack = alice.emit("no-such-event", json!({ "x": 1 })).await;
    assert_eq!(ack["ok"], json!(false));
    assert_eq!(ack["error"]["code"], json!("invalid_payload"));
    assert!(
        ack["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-event"))
    );
}

#[tokio::test]
async fn a_direct_room_has_one_name_per_pair() {
    let app = spawn_app_with(&[]).await;
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    for raw in ["chat-05-5", "chat-5-05", "chat-5-005"] {
        let ack = alice.emit("join-room", json!(raw)).await;
        assert_eq!(ack["error"]["code"], json!("invalid_room"), "{raw}: {ack}");
        assert!(ack["error"]["message"].as_str().is_some_and(|m| m.contains("chat-5-5")));
    }
    assert_eq!(alice.emit("join-room", json!("chat-5-5")).await["ok"], json!(true));
}

#[tokio::test]
async fn a_token_that_is_not_a_string_is_named_as_such() {
    let app = spawn_app_with(&[]).await;
    let (_, answer) = Ws::connect(&app, json!({ "token": { "sub": 5 } })).await;
    match answer {
        Sio::ConnectError(error) => assert_eq!(error["message"], json!("unauthorized: token must be a string")),
        other => panic!("accepted: {other:?}"),
    }
}

#[tokio::test]
async fn an_origin_that_is_not_text_is_refused() {
    let app = spawn_app_with(&[]).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.expect("connect");
    let request = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nOrigin: http://app.test\xff\r\nConnection: close\r\n\r\n".to_vec();
    stream.write_all(&request).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("\"forbidden\""));
}

#[tokio::test]
async fn a_rest_body_over_the_limit_gets_the_contracts_json() {
    let app = spawn_app_with(&["--max-frame-bytes", "100000", "--max-event-bytes", "1000"]).await;
    let res = app
        .http
        .post(app.url("/api/rooms/lobby/messages"))
        .bearer_auth(user(json!(5)))
        .header("content-type", "application/json")
        .body(format!("{{\"message\":\"{}\"}}", "x".repeat(200_000)))
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.expect("a JSON body");
    assert_eq!(body["ok"], json!(false));
    assert_eq!(body["error"]["code"], json!("too_large"));
}

async fn spawn_pusher(endpoint: &str) -> TestApp {
    spawn_pusher_app(&["--pusher-auth-timeout-ms", "800", "--pusher-auth-endpoint", endpoint]).await
}

/// An auth endpoint that answers every request with `head` and then `body`,
/// or never finishes the body when `body` is `None`.
async fn raw_endpoint(head: &'static str, body: Option<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/api/pusher/auth", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(head.as_bytes()).await;
                match body {
                    Some(body) => {
                        let _ = stream.write_all(&body).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_stalled_auth_body_is_internal_not_forbidden() {
    let endpoint = raw_endpoint(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"auth\":",
        None,
    )
    .await;
    let app = spawn_pusher(&endpoint).await;
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    let ack = alice.emit("join-room", json!("private-x")).await;
    assert_eq!(ack["error"]["code"], json!("internal"), "{ack}");
}

#[tokio::test]
async fn an_auth_answer_over_the_cap_is_not_read_whole() {
    // Chunked, so no Content-Length gives it away: it must be cut while reading.
    let chunk = vec![b' '; 32 * 1024];
    let mut body = Vec::new();
    for _ in 0..8 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let endpoint = raw_endpoint(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        Some(body),
    )
    .await;
    let app = spawn_pusher(&endpoint).await;
    let mut alice = Ws::connected(&app, &user(json!(5))).await;
    let ack = alice.emit("join-room", json!("private-x")).await;
    assert_eq!(ack["error"]["code"], json!("internal"), "{ack}");
    assert!(
        ack["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than"))
    );
}

/// A bodiless URL signed like the official SDKs sign, with `ts` as auth_timestamp.
fn signed_url(app: &TestApp, method: &str, path: &str, ts: &str) -> String {
    pusher_signed_url(app, method, path, "", ts)
}

#[tokio::test]
async fn a_timestamp_near_i64_min_does_not_pass_the_window() {
    let app = spawn_pusher("http://127.0.0.1:9/unused").await;
    let now = switchboard::clock::now_ms() / 1000;
    // `now - ts` is i64::MIN for ts = now + i64::MIN, and its `.abs()` wrapped
    // to a negative number in release builds: inside any window.
    let crafted = (-1..=1).map(|skew| (now + skew).wrapping_add(i64::MIN).to_string());
    for ts in crafted.chain([i64::MIN.to_string()]) {
        let url = signed_url(&app, "GET", &format!("/apps/{APP_ID}/channels"), &ts);
        let res = app.http.get(url).send().await.expect("get");
        assert_eq!(res.status(), 401, "auth_timestamp {ts}");
    }
    let url = signed_url(&app, "GET", &format!("/apps/{APP_ID}/channels"), &now.to_string());
    assert_eq!(app.http.get(url).send().await.expect("get").status(), 200);
}

#[tokio::test]
async fn group_member_ids_with_control_characters_are_refused() {
    let app = spawn_pusher("http://127.0.0.1:9/unused").await;
    let now = (switchboard::clock::now_ms() / 1000).to_string();
    for id in ["a%0Ab", "a%00b", "a%0Db", "%09"] {
        let path = format!("/apps/{APP_ID}/groups/7/members/{id}");
        let res = app
            .http
            .put(signed_url(&app, "PUT", &path, &now))
            .send()
            .await
            .expect("put");
        assert_eq!(res.status(), 400, "{id}");
    }
    let path = format!("/apps/{APP_ID}/groups/7/members/alice");
    let res = app
        .http
        .put(signed_url(&app, "PUT", &path, &now))
        .send()
        .await
        .expect("put");
    assert_eq!(res.status(), 200);
}
