//! Typing indicators, with time paused: the 8 s expiry is advanced, not slept.
//! Setup runs in real time (the database pool has its own timeouts); the clock
//! is paused before the first `typing`.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Client, Local, spawn_app, user};

#[tokio::test]
async fn typing_reaches_others_only_and_expires_after_eight_seconds() {
    let app = spawn_app().await;
    let mut alice = Local::connected(&app, &user(json!(5))).await;
    let mut alice_tab = Local::connected(&app, &user(json!(5))).await;
    let mut carol = Local::connected(&app, &user(json!(12))).await;
    for c in [&mut alice, &mut alice_tab, &mut carol] {
        assert_eq!(c.emit("join-room", json!("chat-5-12")).await["ok"], json!(true));
    }

    tokio::time::pause();
    let ack = alice
        .emit("typing", json!({ "roomId": "chat-5-12", "isTyping": true }))
        .await;
    assert_eq!(ack, json!({ "ok": true }));
    assert_eq!(
        carol.event("typing").await,
        json!({ "roomId": "chat-5-12", "userId": 5, "isTyping": true })
    );
    assert!(alice_tab.none("typing", 10).await, "never to the typist's own sockets");

    // A refresh at 6 s pushes the expiry to 14 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    alice
        .emit("typing", json!({ "roomId": "chat-5-12", "isTyping": true }))
        .await;
    assert_eq!(carol.event("typing").await["isTyping"], json!(true));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(carol.none("typing", 10).await, "not expired at 13 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        carol.event("typing").await,
        json!({ "roomId": "chat-5-12", "userId": 5, "isTyping": false })
    );
}

#[tokio::test]
async fn a_typist_who_disconnects_stops_typing() {
    let app = spawn_app().await;
    let mut alice = Local::connected(&app, &user(json!(5))).await;
    let mut carol = Local::connected(&app, &user(json!(12))).await;
    alice.emit("join-room", json!("chat-5-12")).await;
    carol.emit("join-room", json!("chat-5-12")).await;
    tokio::time::pause();
    alice
        .emit("typing", json!({ "roomId": "chat-5-12", "isTyping": true }))
        .await;
    assert_eq!(carol.event("typing").await["isTyping"], json!(true));
    alice.close().await;
    assert_eq!(carol.event("typing").await["isTyping"], json!(false));
    // ...and only once: the expiry timer finds nothing left to clear.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(carol.none("typing", 10).await);
}
