//! The handshake and the message path over a real WebSocket.

use serde_json::json;

use crate::helpers::{Client, Sio, Ws, spawn_app, token, user};

#[tokio::test]
async fn refuses_a_handshake_without_a_valid_token() {
    let app = spawn_app().await;
    let expired = token(json!({ "sub": 5, "exp": 1_000_000 }));
    let forged = switchboard::auth::sign_hs256(b"not-the-secret", &json!({ "sub": 5 })).expect("sign");
    for (auth, want) in [
        (json!({}), "unauthorized: missing token"),
        (json!({ "token": "garbage" }), "unauthorized: malformed token"),
        (json!({ "token": forged }), "unauthorized: invalid token signature"),
        (json!({ "token": expired }), "unauthorized: token expired"),
    ] {
        let (_, answer) = Ws::connect(&app, auth).await;
        match answer {
            Sio::ConnectError(e) => assert_eq!(e["message"], json!(want)),
            other => panic!("{want}: got {other:?}"),
        }
    }
}

#[tokio::test]
async fn session_carries_a_pusher_socket_id_and_the_typed_user_id() {
    let app = spawn_app().await;
    let mut numeric = Ws::connected(&app, &user(json!(5))).await;
    let session = numeric.event("session").await;
    assert_eq!(session["userId"], json!(5));
    let sid = session["socketId"].as_str().expect("socketId");
    let (a, b) = sid.split_once('.').expect("dot");
    assert!(!a.is_empty() && a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()));

    let mut stringy = Ws::connected(&app, &token(json!({ "userId": "u-1" }))).await;
    assert_eq!(stringy.event("session").await["userId"], json!("u-1"));
}

#[tokio::test]
async fn a_message_is_stored_acked_and_delivered_to_every_socket_in_the_room() {
    let app = spawn_app().await;
    let mut alice = Ws::connected(&app, &token(json!({ "sub": 5, "username": "alice" }))).await;
    let mut alice_tab = Ws::connected(&app, &user(json!(5))).await;
    let mut carol = Ws::connected(&app, &user(json!(12))).await;
    let mut bob = Ws::connected(&app, &user(json!(7))).await;
    for c in [&mut alice, &mut alice_tab, &mut carol] {
        let ack = c.emit("join-room", json!({ "roomId": "chat-5-12" })).await;
        assert_eq!(ack["ok"], json!(true), "{ack}");
    }
    let refused = bob.emit("join-room", json!("chat-5-12")).await;
    assert_eq!(refused["error"]["code"], json!("forbidden"));

    let ack = alice
        .emit(
            "send-message",
            json!({ "roomId": "chat-5-12", "clientId": "c-1", "message": "hi", "userId": 999, "username": "mallory" }),
        )
        .await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let message = &ack["message"];
    assert_eq!(message["userId"], json!(5));
    assert_eq!(message["username"], json!("alice"));
    assert!(message["id"].as_str().is_some_and(|id| id.parse::<u64>().is_ok()));

    for c in [&mut alice, &mut alice_tab, &mut carol] {
        assert_eq!(&c.event("new-message").await, message);
    }
    assert!(bob.none("new-message", 200).await);

    // A retry with the same clientId returns the original and is not broadcast again.
    let retry = alice
        .emit(
            "send-message",
            json!({ "roomId": "chat-5-12", "clientId": "c-1", "message": "changed" }),
        )
        .await;
    assert_eq!(&retry["message"], message);
    assert!(carol.none("new-message", 200).await);

    // History on a later join, and recovery with `since`.
    let later = carol
        .emit("join-room", json!({ "roomId": "chat-5-12", "since": "0" }))
        .await;
    assert_eq!(later["history"], json!([message]));
    assert_eq!(later["hasMore"], json!(false));
}

#[tokio::test]
async fn bad_input_gets_an_error_ack_and_the_connection_stays() {
    let app = spawn_app().await;
    let mut c = Ws::connected(&app, &user(json!(5))).await;
    let cases = [
        ("join-room", json!(42), "invalid_payload"),
        ("join-room", json!({ "roomId": "chat-12-5" }), "invalid_room"),
        ("join-room", json!({ "roomId": "bad room" }), "invalid_room"),
        (
            "send-message",
            json!({ "roomId": "lobby", "message": "hi" }),
            "not_joined",
        ),
        ("typing", json!({ "roomId": "lobby", "isTyping": true }), "not_joined"),
        ("send-message", json!(null), "invalid_payload"),
        // NUL can't be stored on Postgres: refused alike on every store.
        (
            "send-message",
            json!({ "roomId": "lobby", "message": "a\u{0}b" }),
            "invalid_payload",
        ),
        (
            "send-message",
            json!({ "roomId": "lobby", "message": "x".repeat(4001) }),
            "too_large",
        ),
        (
            "send-message",
            json!({ "roomId": "lobby", "message": "x", "pad": "y".repeat(70_000) }),
            "too_large",
        ),
    ];
    for (event, payload, code) in cases {
        let ack = c.emit(event, payload).await;
        assert_eq!(ack["ok"], json!(false));
        assert_eq!(ack["error"]["code"], json!(code), "{event}: {ack}");
        assert!(ack["error"]["message"].is_string());
    }
    let ack = c.emit("join-room", json!({ "roomId": "lobby" })).await;
    assert_eq!(ack["ok"], json!(true), "still connected and served");
}

#[tokio::test]
async fn a_flood_is_rate_limited_without_closing_the_connection() {
    let app = crate::helpers::spawn_app_with(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "3"]).await;
    let mut c = Ws::connected(&app, &user(json!(5))).await;
    let mut codes = Vec::new();
    for _ in 0..5 {
        let ack = c.emit("join-room", json!("lobby")).await;
        codes.push(ack["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes, ["ok", "ok", "ok", "rate_limited", "rate_limited"]);
}

#[tokio::test]
async fn origins_not_on_the_list_are_refused_at_the_handshake() {
    let app = spawn_app().await;
    let polling = app.url("/socket.io/?EIO=4&transport=polling");
    let status = |origin: Option<&'static str>| {
        let mut req = app.http.get(&polling);
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        async move { req.send().await.expect("request").status().as_u16() }
    };
    assert_eq!(status(Some("http://evil.test")).await, 403);
    assert_eq!(status(Some("http://app.test")).await, 200);
    assert_eq!(status(None).await, 200);
}

#[tokio::test]
async fn shutdown_disconnects_clients_and_returns() {
    let app = spawn_app().await;
    let mut c = Ws::connected(&app, &user(json!(5))).await;
    c.event("session").await;
    let run = tokio::spawn(app.shutdown());
    let disconnected = c.wait(|p| matches!(p, Sio::Disconnect)).await;
    assert!(
        disconnected.is_some() || c.recv().await.is_none(),
        "client saw the disconnect"
    );
    run.await.expect("join").expect("clean exit");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_nobody_else_waits() {
    use crate::helpers::Local;
    let app = crate::helpers::spawn_app_with(&["--socket-buffer-packets", "16", "--rate-limit-burst", "1000"]).await;
    let stalled = Local::connected(&app, &user(json!(7))).await;
    let mut sender = Ws::connected(&app, &user(json!(5))).await;
    let mut reader = Ws::connected(&app, &user(json!(12))).await;
    // The stalled socket joins through the same handler as everyone else.
    let mut stalled = stalled;
    assert_eq!(stalled.emit("join-room", json!("lobby")).await["ok"], json!(true));
    sender.emit("join-room", json!("lobby")).await;
    reader.emit("join-room", json!("lobby")).await;

    // From here on `stalled` never reads: its buffers fill and it must be cut off.
    for i in 0..80 {
        let ack = sender
            .emit("send-message", json!({ "roomId": "lobby", "message": format!("m{i}") }))
            .await;
        assert_eq!(ack["ok"], json!(true), "{ack}");
        assert_eq!(reader.event("new-message").await["message"], json!(format!("m{i}")));
    }
    // Counted once, however many broadcasts found its buffer full afterwards.
    assert_eq!(
        app.metric("switchboard_slow_consumer_disconnects_total").await,
        Some(1.0)
    );
    drop(stalled);
}

#[tokio::test]
async fn the_server_runs_until_told_to_stop() {
    let app = spawn_app().await;
    let first = app.http.get(app.url("/healthz")).send().await.expect("serving");
    assert_eq!(first.status().as_u16(), 200);
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(3600)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::resume();
    assert!(app.running(), "run returned without a shutdown signal");
    let health = app.http.get(app.url("/healthz")).send().await.expect("still serving");
    assert_eq!(health.status().as_u16(), 200);
    app.shutdown().await.expect("clean exit");
}
