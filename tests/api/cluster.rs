//! Two nodes sharing one Redis (`SB_TEST_REDIS`; skipped without it): what
//! happens to events that cross from one node to the other.

use serde_json::json;

use crate::helpers::{Client, Local, Ws, cluster_prefix, spawn_app_with, test_redis, user};

#[tokio::test]
async fn a_slow_consumer_is_disconnected_by_its_own_node_when_the_events_come_from_another() {
    let Some(redis) = test_redis() else { return };
    let prefix = cluster_prefix();
    let args = [
        "--redis-url",
        &redis,
        "--redis-prefix",
        &prefix,
        "--socket-buffer-packets",
        "16",
        "--rate-limit-burst",
        "1000",
    ];
    let a = spawn_app_with(&args).await;
    let b = spawn_app_with(&args).await;
    let mut stalled = Local::connected(&b, &user(json!(7))).await;
    let mut sender = Ws::connected(&a, &user(json!(5))).await;
    let mut reader = Ws::connected(&b, &user(json!(12))).await;
    assert_eq!(stalled.emit("join-room", json!("lobby")).await["ok"], json!(true));
    assert_eq!(sender.emit("join-room", json!("lobby")).await["ok"], json!(true));
    assert_eq!(reader.emit("join-room", json!("lobby")).await["ok"], json!(true));

    // Every message is sent on node A and reaches node B through Redis; from
    // here on `stalled` (on B) never reads.
    for i in 0..80 {
        let ack = sender
            .emit("send-message", json!({ "roomId": "lobby", "message": format!("m{i}") }))
            .await;
        assert_eq!(ack["ok"], json!(true), "{ack}");
        assert_eq!(reader.event("new-message").await["message"], json!(format!("m{i}")));
    }
    assert_eq!(
        b.metric("switchboard_slow_consumer_disconnects_total").await,
        Some(1.0),
        "node B cut its slow socket off, once"
    );
    assert_eq!(a.metric("switchboard_slow_consumer_disconnects_total").await, Some(0.0));
    drop(stalled);
}
