//! The same scenarios against every engine: SQLite always, Postgres when
//! `SWITCHBOARD_TEST_POSTGRES` names a server (CI sets it; each test gets a
//! fresh database there).

use serde_json::{Value, json};

use super::*;
use crate::domain::{Profile, UserId};

async fn engines() -> Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/nested/db.sqlite", dir.path().display());
    let mut out: Vec<(Arc<dyn Store>, Option<tempfile::TempDir>)> = vec![(
        Arc::new(SqliteStore::open(&url).await.expect("sqlite opens")),
        Some(dir),
    )];
    if let Some(url) = fresh_postgres().await {
        let store = PostgresStore::open(&url).await.expect("postgres opens");
        out.push((Arc::new(store), None));
    }
    out
}

/// A new, empty database on `SWITCHBOARD_TEST_POSTGRES`, or `None` without it.
pub async fn fresh_postgres() -> Option<String> {
    match std::env::var("SWITCHBOARD_TEST_POSTGRES") {
        Ok(admin) if !admin.is_empty() => {
            let name = format!("sb_test_{}", rand::random::<u32>());
            let pool = sqlx::PgPool::connect(&admin).await.expect("postgres admin connection");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&pool)
                .await
                .expect("create db");
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
            Some(format!("{base}/{name}"))
        }
        _ => {
            eprintln!("SWITCHBOARD_TEST_POSTGRES unset: store tests ran on SQLite only");
            None
        }
    }
}

fn new(room: &str, user: Value, client_id: Option<&str>, text: &str) -> NewMessage {
    NewMessage {
        room: RoomId::parse(room).expect("room"),
        sender: Identity {
            user: UserId::from_json(&user).expect("id"),
            profile: Profile::default(),
            token: "t".into(),
        },
        client_id: client_id.map(str::to_owned),
        text: text.into(),
        kind: MessageKind::Message,
        media: None,
        audio: None,
        timestamp: 1,
    }
}

/// Every message of a room (up to 500), oldest first.
async fn everything(s: &dyn Store, room: &str) -> Page {
    let query = PageQuery {
        after: Some(0),
        before: None,
        limit: 500,
    };
    s.page(&RoomId::parse(room).expect("room"), query).await.expect("page")
}

#[tokio::test]
async fn append_is_idempotent_per_room_sender_and_client_id() {
    for (s, _dir) in engines().await {
        let first = s
            .append(new("lobby", json!(5), Some("c1"), "hi"))
            .await
            .expect("stored");
        assert!(first.created);
        let retry = s
            .append(new("lobby", json!("5"), Some("c1"), "changed"))
            .await
            .expect("stored");
        assert!(!retry.created);
        assert_eq!(retry.message, first.message);
        assert_eq!(retry.message.user_id, json!(5));
        assert!(
            s.append(new("lobby", json!(6), Some("c1"), "hi"))
                .await
                .expect("stored")
                .created
        );
        assert!(
            s.append(new("room2", json!(5), Some("c1"), "hi"))
                .await
                .expect("stored")
                .created
        );
        let a = s.append(new("lobby", json!(5), None, "a")).await.expect("stored");
        let b = s.append(new("lobby", json!(5), None, "a")).await.expect("stored");
        assert!(a.created && b.created);
        assert!(b.message.id > a.message.id);
    }
}

#[tokio::test]
async fn pages() {
    for (s, _dir) in engines().await {
        let room = RoomId::parse("lobby").expect("room");
        let mut ids = Vec::new();
        for i in 0..10 {
            ids.push(
                s.append(new("lobby", json!(1), None, &i.to_string()))
                    .await
                    .expect("stored")
                    .message
                    .id,
            );
            s.append(new("elsewhere", json!(1), None, "x")).await.expect("stored");
        }
        let q = |after, before, limit| PageQuery { after, before, limit };
        let texts = |p: &Page| {
            p.messages
                .iter()
                .map(|m| m.message.clone())
                .collect::<Vec<_>>()
                .join("")
        };
        let cases = [
            (q(None, None, 3), "789", true),
            (q(None, None, 50), "0123456789", false),
            (q(Some(ids[2]), None, 3), "345", true),
            (q(Some(ids[7]), None, 3), "89", false),
            (q(None, Some(ids[5]), 2), "34", true),
            (q(Some(ids[1]), Some(ids[4]), 10), "23", false),
        ];
        for (query, want, more) in cases {
            let page = s.page(&room, query).await.expect("page");
            assert_eq!((texts(&page).as_str(), page.has_more), (want, more), "{query:?}");
        }
    }
}

#[tokio::test]
async fn concurrent_appends_to_one_room_keep_ids_in_commit_order() {
    for (s, _dir) in engines().await {
        let writers = (0..8).map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    s.append(new("busy", json!(w), Some(&format!("{w}-{i}")), "x"))
                        .await
                        .expect("stored");
                }
            })
        });
        for w in writers {
            w.await.expect("writer");
        }
        let page = everything(s.as_ref(), "busy").await;
        assert_eq!(page.messages.len(), 80);
        assert!(page.messages.windows(2).all(|w| w[0].id < w[1].id));
    }
}

/// Many appends land in one batch: retries of one key inside the batch, keys
/// stored by an earlier batch, and messages without a key. Each caller gets
/// back exactly what reading the table gives.
#[tokio::test]
async fn a_batch_with_retries_answers_each_caller_with_the_stored_row() {
    for (s, _dir) in engines().await {
        let first = s
            .append(new("mix", json!(1), Some("old"), "stored before"))
            .await
            .expect("stored");
        let calls = (0..60).map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let (user, key, text) = match i % 4 {
                    0 => (json!(1), Some("old".to_owned()), "retry of an old one".to_owned()),
                    1 => (json!(2), Some("same".to_owned()), format!("retry {i}")),
                    2 => (json!(3), None, format!("keyless {i}")),
                    _ => (json!("u"), Some(format!("k{i}")), format!("fresh {i}")),
                };
                s.append(new("mix", user, key.as_deref(), &text)).await.expect("stored")
            })
        });
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.expect("call"));
        }
        let page = everything(s.as_ref(), "mix").await;
        // 1 old + 1 "same" + 15 keyless + 15 fresh
        assert_eq!(page.messages.len(), 32);
        for r in &results {
            let row = page.messages.iter().find(|m| m.id == r.message.id).expect("row exists");
            assert_eq!(
                serde_json::to_value(row).ok(),
                serde_json::to_value(&r.message).ok(),
                "answer = stored row"
            );
        }
        let olds: Vec<_> = results
            .iter()
            .filter(|r| r.message.client_id.as_deref() == Some("old"))
            .collect();
        assert!(olds.iter().all(|r| !r.created && r.message.id == first.message.id));
        let sames: Vec<_> = results
            .iter()
            .filter(|r| r.message.client_id.as_deref() == Some("same"))
            .collect();
        assert_eq!(sames.iter().filter(|r| r.created).count(), 1, "one retry stored it");
        assert!(sames.iter().all(|r| r.message.id == sames[0].message.id));
    }
}

/// Text that JSON, SQL or a careless encoder could mangle goes in and comes
/// out byte for byte, whether it was stored alone or in a batch.
#[tokio::test]
async fn awkward_text_is_stored_exactly() {
    let texts = [
        "\"quoted\" and 'single' and `back`",
        "back\\slash \\u0041 \\n not escapes",
        "line\nbreak\ttab\r\u{8}\u{c}\u{1f}",
        "emoji 👋🏽 and ünïcödé and 漢字",
        "separators \u{2028} \u{2029} \u{feff}",
        r#"{"roomId":"x","message":"json inside"}"#,
        "null",
        "123",
        "'); DROP TABLE messages; --",
        "",
    ];
    for (s, _dir) in engines().await {
        let calls = texts.iter().enumerate().map(|(i, text)| {
            let s = s.clone();
            let mut m = new(
                "awkward",
                if i % 2 == 0 { json!(i) } else { json!(format!("{i}")) },
                None,
                text,
            );
            m.client_id = Some(format!("0{i}"));
            m.sender.profile = Profile {
                username: Some(format!("ü\"{i}")),
                full_name: (i % 3 == 0).then(|| "Zoë \\ O'Brien".to_owned()),
                avatar: None,
            };
            m.media = text.is_empty().then(|| "https://x.test/a.png?q=\"1\"".to_owned());
            m.timestamp = i64::MAX - i as i64;
            tokio::spawn(async move { (s.append(m.clone()).await.expect("stored"), m) })
        });
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.expect("call"));
        }
        let page = everything(s.as_ref(), "awkward").await;
        assert_eq!(page.messages.len(), texts.len());
        for (appended, sent) in &results {
            assert!(appended.created);
            let row = page
                .messages
                .iter()
                .find(|m| m.id == appended.message.id)
                .expect("row exists");
            assert_eq!(row, &appended.message, "answer = stored row");
            assert_eq!(row.message, sent.text);
            assert_eq!(&row.user_id, sent.sender.user.json(), "id keeps its JSON type");
            assert_eq!(row.client_id, sent.client_id);
            assert_eq!(row.username, sent.sender.profile.username);
            assert_eq!(row.full_name, sent.sender.profile.full_name);
            assert_eq!(row.media, sent.media);
            assert_eq!(row.timestamp, sent.timestamp);
        }
    }
}

#[tokio::test]
async fn group_membership() {
    for (s, _dir) in engines().await {
        assert!(!s.is_group_member("7", "5").await.expect("reads"));
        assert!(s.set_group_member("7", "5", true).await.expect("writes"));
        assert!(!s.set_group_member("7", "5", true).await.expect("writes"));
        assert!(s.is_group_member("7", "5").await.expect("reads"));
        assert!(s.set_group_member("7", "5", false).await.expect("writes"));
        assert!(!s.is_group_member("7", "5").await.expect("reads"));
    }
}

fn identity(user: Value) -> Identity {
    Identity {
        user: UserId::from_json(&user).expect("id"),
        profile: Profile {
            username: Some("ann".into()),
            ..Profile::default()
        },
        token: "t".into(),
    }
}

#[tokio::test]
async fn sessions_keep_rooms_with_members_and_join_marks_until_they_expire() {
    for (s, _dir) in engines().await {
        let ann = identity(json!(5));
        let lobby = RoomId::parse("lobby").expect("room");
        let presence = RoomId::parse("presence-x").expect("room");
        let before = s.append(new("lobby", json!(1), None, "old")).await.expect("stored");
        assert!(s.session("p1", 100).await.expect("reads").is_none(), "unknown pid");

        let member = Member::from_identity(&ann);
        let mut info = serde_json::Map::new();
        info.insert("name".into(), json!("Ann from the app"));
        let shown = Member {
            user: UserId::from_json(&json!("5")).expect("id"),
            info,
        };
        let join = |room, member, expires_at| SessionJoin {
            pid: "p1",
            identity: &ann,
            room,
            member,
            expires_at,
        };
        s.session_join(join(&lobby, &member, 1_000)).await.expect("writes");
        s.session_join(join(&presence, &shown, 1_000)).await.expect("writes");
        // Joining again keeps one row (and the newer member).
        s.session_join(join(&lobby, &member, 1_000)).await.expect("writes");
        let later = s.append(new("lobby", json!(1), None, "new")).await.expect("stored");

        let got = s.session("p1", 999).await.expect("reads").expect("live");
        assert_eq!(got.user_key, "5");
        let want = vec![
            SessionRoom {
                room: lobby.clone(),
                member: member.clone(),
                after: before.message.id,
            },
            SessionRoom {
                room: presence.clone(),
                member: shown.clone(),
                after: 0,
            },
        ];
        assert_eq!(got.rooms, want);
        assert!(later.message.id > got.rooms[0].after);

        s.session_leave("p1", &presence, 2_000).await.expect("writes");
        let got = s.session("p1", 1_500).await.expect("reads").expect("pushed back");
        assert_eq!(got.rooms.len(), 1);

        s.session_join(SessionJoin {
            pid: "p2",
            identity: &ann,
            room: &lobby,
            member: &member,
            expires_at: 500,
        })
        .await
        .expect("writes");
        s.session_touch(&["p2".to_owned(), "nope".to_owned()], 3_000)
            .await
            .expect("writes");
        assert!(s.session("p2", 2_500).await.expect("reads").is_some(), "touched");

        assert!(s.session("p1", 2_000).await.expect("reads").is_none(), "expired");
        assert_eq!(s.expire_sessions(2_000).await.expect("deletes"), 1);
        assert_eq!(s.expire_sessions(2_000).await.expect("deletes"), 0);
        assert!(s.session("p1", 0).await.expect("reads").is_none(), "deleted, rooms too");
        s.session_join(join(&presence, &shown, 5_000)).await.expect("writes");
        let got = s.session("p1", 0).await.expect("reads").expect("new");
        assert_eq!(got.rooms.len(), 1, "the expired session's rooms are gone");
    }
}
