//! Connection state recovery over a real WebSocket, as socket.io-client speaks
//! it: a `pid` in the CONNECT answer, `{ pid, offset }` in a reconnect's auth.

use serde_json::{Value, json};

use crate::helpers::{Client, Sio, Ws, spawn_app, spawn_app_with, user};

fn pid_of(answer: &Sio) -> Option<String> {
    match answer {
        Sio::Connect(data) => data.get("pid").and_then(Value::as_str).map(str::to_owned),
        other => panic!("refused: {other:?}"),
    }
}

#[tokio::test]
async fn the_connect_answer_carries_a_private_pid_unless_recovery_is_off() {
    let app = spawn_app().await;
    let (_, answer) = Ws::connect(&app, json!({ "token": user(json!(5)) })).await;
    let pid = pid_of(&answer).expect("pid");
    assert_eq!(pid.len(), 32);
    assert!(pid.chars().all(|c| c.is_ascii_hexdigit()));
    let Sio::Connect(data) = &answer else { unreachable!() };
    assert!(data["sid"].is_string(), "sid stays: {data}");

    let off = spawn_app_with(&["--recovery-window-secs", "0"]).await;
    let (_, answer) = Ws::connect(&off, json!({ "token": user(json!(5)) })).await;
    assert_eq!(pid_of(&answer), None);
}

#[tokio::test]
async fn a_reconnect_with_pid_and_offset_gets_its_rooms_and_missed_messages_back() {
    let app = spawn_app().await;
    let (mut ann, answer) = Ws::connect(&app, json!({ "token": user(json!(5)) })).await;
    let pid = pid_of(&answer).expect("pid");
    assert_eq!(
        ann.emit("join-room", json!({ "roomId": "lobby" })).await["ok"],
        json!(true)
    );
    let mut bob = Ws::connected(&app, &user(json!(7))).await;
    assert_eq!(
        bob.emit("join-room", json!({ "roomId": "lobby" })).await["ok"],
        json!(true)
    );
    let seen = bob
        .emit("send-message", json!({ "roomId": "lobby", "message": "seen" }))
        .await;
    let seen_id = seen["message"]["id"].as_str().expect("id").to_owned();
    assert_eq!(ann.event("new-message").await["id"], json!(seen_id));
    drop(ann);
    let missed = bob
        .emit("send-message", json!({ "roomId": "lobby", "message": "missed" }))
        .await;

    // Another user presenting ann's pid starts afresh.
    let (mut eve, answer) = Ws::connect(&app, json!({ "token": user(json!(9)), "pid": pid, "offset": seen_id })).await;
    assert_ne!(pid_of(&answer).as_deref(), Some(pid.as_str()));
    let refused = eve
        .emit("send-message", json!({ "roomId": "lobby", "message": "x" }))
        .await;
    assert_eq!(refused["error"]["code"], json!("not_joined"));

    let (mut back, answer) = Ws::connect(&app, json!({ "token": user(json!(5)), "pid": pid, "offset": seen_id })).await;
    assert_eq!(pid_of(&answer).as_deref(), Some(pid.as_str()), "same pid: recovered");
    assert_eq!(back.event("new-message").await, missed["message"]);
    assert!(back.none("new-message", 300).await, "each missed message once");
    let sent = back
        .emit("send-message", json!({ "roomId": "lobby", "message": "back" }))
        .await;
    assert_eq!(sent["ok"], json!(true), "{sent}");
}
