//! The cluster registries against a real Redis (`SB_TEST_REDIS=redis://…`;
//! skipped without it). Two handles on one prefix play two nodes; each test
//! has its own prefix.

use std::time::Duration;

use serde_json::json;

use super::{Redis, RedisPresence, SharedLimit};
use crate::{
    chat::presence::{Joined, Left, Presence, RoomStats},
    config::ClusterSettings,
    domain::{Member, RoomId, UserId},
};

fn settings() -> Option<ClusterSettings> {
    let url = std::env::var("SB_TEST_REDIS").ok()?;
    let prefix = format!("sbtest{}", super::new_node_id());
    Some(ClusterSettings {
        redis_url: format!("{url}?protocol=resp3"),
        prefix,
        node_timeout: Duration::from_secs(1),
    })
}

async fn nodes(settings: &ClusterSettings) -> (RedisPresence, RedisPresence) {
    let a = Redis::connect(settings).await.expect("redis a");
    let b = Redis::connect(settings).await.expect("redis b");
    (RedisPresence::new(a), RedisPresence::new(b))
}

fn member(id: i64) -> Member {
    Member {
        user: UserId::from_json(&json!(id)).expect("id"),
        info: json!({ "username": format!("u{id}") })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }
}

fn keys(members: &[Member]) -> Vec<String> {
    members.iter().map(|m| m.key().to_owned()).collect()
}

fn joined(first: bool, occupied: bool) -> Joined {
    Joined { first, occupied }
}

fn left(gone: Option<Member>, vacated: bool) -> Left {
    Left { gone, vacated }
}

#[tokio::test]
async fn first_in_and_last_out_count_every_node() {
    let Some(settings) = settings() else { return };
    let (a, b) = nodes(&settings).await;
    let room = RoomId::parse("lobby").expect("room");
    assert_eq!(a.join(&room, &member(5), "s1").await.expect("join"), joined(true, true));
    assert_eq!(
        b.join(&room, &member(5), "s2").await.expect("join"),
        joined(false, false),
        "second socket, other node"
    );
    assert_eq!(
        a.join(&room, &member(5), "s1").await.expect("join"),
        joined(false, false),
        "same socket twice"
    );
    assert_eq!(
        b.join(&room, &member(7), "s3").await.expect("join"),
        joined(true, false)
    );
    assert_eq!(keys(&b.members(&room).await.expect("members")), ["5", "7"]);
    assert_eq!(a.members(&room).await.expect("members")[0], member(5), "profile kept");
    assert_eq!(a.stats(&room).await.expect("stats"), RoomStats { users: 2, sockets: 3 });
    assert_eq!(
        a.leave(&room, "5", "s1").await.expect("leave"),
        left(None, false),
        "still on node b"
    );
    assert_eq!(
        a.leave(&room, "5", "s1").await.expect("leave"),
        left(None, false),
        "already gone"
    );
    assert_eq!(
        b.leave(&room, "5", "s2").await.expect("leave"),
        left(Some(member(5)), false)
    );
    assert_eq!(a.occupied_rooms(), 0);
    assert_eq!(b.occupied_rooms(), 1);
    let occupied = a.occupied().await.expect("occupied");
    assert_eq!(occupied, vec![(room.clone(), RoomStats { users: 1, sockets: 1 })]);
    assert_eq!(
        b.leave(&room, "7", "s3").await.expect("leave"),
        left(Some(member(7)), true)
    );
    assert!(a.occupied().await.expect("occupied").is_empty(), "no stale room");
    assert_eq!(
        a.join(&room, &member(7), "s4").await.expect("join"),
        joined(true, true),
        "occupied again"
    );
}

#[tokio::test]
async fn evict_takes_the_member_out_on_every_node() {
    let Some(settings) = settings() else { return };
    let (a, b) = nodes(&settings).await;
    let room = RoomId::parse("group-9").expect("room");
    a.join(&room, &member(5), "s1").await.expect("join");
    b.join(&room, &member(5), "s2").await.expect("join");
    b.join(&room, &member(7), "s3").await.expect("join");
    assert_eq!(a.evict(&room, "5").await.expect("evict"), left(Some(member(5)), false));
    assert_eq!(keys(&b.members(&room).await.expect("members")), ["7"]);
    assert_eq!(
        b.leave(&room, "5", "s2").await.expect("leave"),
        left(None, false),
        "evicted socket leaves quietly"
    );
    assert_eq!(a.stats(&room).await.expect("stats"), RoomStats { users: 1, sockets: 1 });
    assert_eq!(b.evict(&room, "7").await.expect("evict"), left(Some(member(7)), true));
}

#[tokio::test]
async fn a_silent_node_is_reaped_once_and_its_users_go_offline() {
    let Some(settings) = settings() else { return };
    let (a, b) = nodes(&settings).await;
    a.tick().await.expect("tick a");
    b.tick().await.expect("tick b");
    let (lobby, other) = (
        RoomId::parse("lobby").expect("room"),
        RoomId::parse("other").expect("room"),
    );
    a.join(&lobby, &member(5), "s1").await.expect("join");
    b.join(&lobby, &member(5), "s2").await.expect("join");
    b.join(&lobby, &member(7), "s3").await.expect("join");
    b.join(&other, &member(7), "s4").await.expect("join");
    // b stops beating: its score is as old as can be.
    b.goodbye().await;
    let tick = a.tick().await.expect("tick");
    assert_eq!(tick.dead_nodes, 1);
    assert_eq!(tick.live_nodes, 2, "counted before the reaping");
    let mut offline: Vec<(String, String)> = tick
        .offline
        .iter()
        .map(|(r, m)| (r.to_string(), m.key().to_owned()))
        .collect();
    offline.sort();
    let expected = [("lobby", "7"), ("other", "7")].map(|(r, u)| (r.to_owned(), u.to_owned()));
    assert_eq!(offline, expected, "user 5 still has a socket on node a");
    let vacated: Vec<String> = tick.vacated.iter().map(ToString::to_string).collect();
    assert_eq!(vacated, ["other"], "lobby still has node a's socket");
    assert_eq!(keys(&a.members(&lobby).await.expect("members")), ["5"]);
    assert_eq!(a.occupied().await.expect("occupied").len(), 1, "no ghost room");
    let again = a.tick().await.expect("tick");
    assert_eq!(
        (again.dead_nodes, again.offline.len(), again.vacated.len()),
        (0, 0, 0),
        "reaped exactly once"
    );
    assert!(!again.forgotten);
    let back = b.tick().await.expect("tick b");
    assert!(back.forgotten, "a reaped node learns it was forgotten");
}

#[tokio::test]
async fn the_rate_budget_is_shared_by_every_node() {
    let Some(settings) = settings() else { return };
    let a = SharedLimit::new(Redis::connect(&settings).await.expect("redis"), 1, 4);
    let b = SharedLimit::new(Redis::connect(&settings).await.expect("redis"), 1, 4);
    let mut allowed = 0;
    for i in 0..8 {
        let limit = if i % 2 == 0 { &a } else { &b };
        if limit.check("5").await.expect("check") {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 4, "the burst, counted across nodes");
    assert!(a.check("7").await.expect("check"), "users have separate budgets");
}

#[tokio::test]
async fn typing_refreshed_on_another_node_defeats_the_first_timer() {
    let Some(settings) = settings() else { return };
    let a = super::SharedTyping::new(Redis::connect(&settings).await.expect("redis"), Duration::from_secs(8));
    let b = super::SharedTyping::new(Redis::connect(&settings).await.expect("redis"), Duration::from_secs(8));
    let room = RoomId::parse("lobby").expect("room");
    let first = a.start(&room, "5").await.expect("start");
    let second = b.start(&room, "5").await.expect("start");
    assert_ne!(first, second);
    assert!(
        !a.expire(&room, "5", &first).await.expect("expire"),
        "refreshed elsewhere"
    );
    assert!(
        a.stop(&room, "5").await.expect("stop"),
        "a stop through any node counts"
    );
    assert!(!b.expire(&room, "5", &second).await.expect("expire"), "already stopped");
    let third = b.start(&room, "5").await.expect("start");
    assert!(b.expire(&room, "5", &third).await.expect("expire"));
}
