//! `members` and `user-online`: counted per user, first socket in, last out.

use serde_json::json;

use crate::helpers::{Client, Local, spawn_app, token, user};

#[tokio::test]
async fn first_socket_in_and_last_socket_out_announce_the_user() {
    let app = spawn_app().await;
    let mut carol = Local::connected(&app, &token(json!({ "sub": 12, "username": "carol" }))).await;
    let join = carol.emit("join-room", json!("chat-5-12")).await;
    assert_eq!(join["members"], json!([{ "userId": 12, "username": "carol" }]));

    let mut alice = Local::connected(&app, &user(json!(5))).await;
    let join = alice.emit("join-room", json!({ "roomId": "chat-5-12" })).await;
    assert_eq!(join["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        carol.event("user-online").await,
        json!({ "roomId": "chat-5-12", "userId": 5, "online": true })
    );
    assert!(alice.none("user-online", 50).await, "the joiner learns from members");

    let mut alice_tab = Local::connected(&app, &user(json!("5"))).await;
    let join = alice_tab.emit("join-room", json!("chat-5-12")).await;
    assert_eq!(join["members"].as_array().map(Vec::len), Some(2), "one entry per user");
    assert!(carol.none("user-online", 50).await, "a second tab emits nothing");

    assert_eq!(
        alice.emit("leave-room", json!({ "roomId": "chat-5-12" })).await,
        json!({ "ok": true })
    );
    assert!(carol.none("user-online", 50).await, "another tab is still there");
    alice_tab.close().await;
    assert_eq!(
        carol.event("user-online").await,
        json!({ "roomId": "chat-5-12", "userId": 5, "online": false })
    );
    assert_eq!(
        alice.emit("leave-room", json!("chat-5-12")).await,
        json!({ "ok": true }),
        "leaving twice is fine"
    );
}
