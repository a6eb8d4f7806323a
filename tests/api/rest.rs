//! `GET`/`POST /api/rooms/{roomId}/messages`.

use serde_json::{Value, json};

use crate::helpers::{Client, TestApp, Ws, spawn_app, user};

async fn post(app: &TestApp, token: &str, room: &str, body: Value) -> (u16, Value) {
    let res = app
        .http
        .post(app.url(&format!("/api/rooms/{room}/messages")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    (res.status().as_u16(), res.json().await.expect("json body"))
}

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let res = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    (res.status().as_u16(), res.json().await.expect("json body"))
}

#[tokio::test]
async fn post_stores_broadcasts_and_is_idempotent() {
    let app = spawn_app().await;
    let mut carol = Ws::connected(&app, &user(json!(12))).await;
    carol.emit("join-room", json!("chat-5-12")).await;

    let alice = user(json!(5));
    let (status, body) = post(
        &app,
        &alice,
        "chat-5-12",
        json!({ "clientId": "r1", "message": "over http" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(carol.event("new-message").await, body["message"]);

    let (status, again) = post(
        &app,
        &alice,
        "chat-5-12",
        json!({ "clientId": "r1", "message": "edited" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["message"], body["message"]);
    assert!(carol.none("new-message", 200).await);
}

#[tokio::test]
async fn get_pages_oldest_first() {
    let app = spawn_app().await;
    let alice = user(json!(5));
    let mut ids = Vec::new();
    for i in 0..7 {
        let (_, body) = post(&app, &alice, "lobby", json!({ "message": format!("m{i}") })).await;
        ids.push(body["message"]["id"].as_str().expect("id").to_owned());
    }
    let texts = |v: &Value| {
        v["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["message"].as_str().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let (_, latest) = get(&app, &alice, "/api/rooms/lobby/messages?limit=3").await;
    assert_eq!(
        (texts(&latest), &latest["hasMore"]),
        (vec!["m4".into(), "m5".into(), "m6".into()], &json!(true))
    );
    let (_, before) = get(
        &app,
        &alice,
        &format!("/api/rooms/lobby/messages?before={}&limit=2", ids[4]),
    )
    .await;
    assert_eq!(texts(&before), ["m2", "m3"]);
    let (_, after) = get(
        &app,
        &alice,
        &format!("/api/rooms/lobby/messages?after={}&limit=10", ids[4]),
    )
    .await;
    assert_eq!(
        (texts(&after), &after["hasMore"]),
        (vec!["m5".into(), "m6".into()], &json!(false))
    );
}

#[tokio::test]
async fn errors_have_the_contract_shape_and_status() {
    let app = spawn_app().await;
    let alice = user(json!(5));
    let no_token = app
        .http
        .get(app.url("/api/rooms/lobby/messages"))
        .send()
        .await
        .expect("request");
    assert_eq!(no_token.status().as_u16(), 401);
    let body: Value = no_token.json().await.expect("json");
    assert_eq!(body["error"]["code"], json!("unauthorized"));

    let cases = [
        ("chat-7-12", json!({ "message": "hi" }), 403, "forbidden"),
        ("chat-12-5", json!({ "message": "hi" }), 400, "invalid_room"),
        ("lobby", json!({ "message": "" }), 400, "invalid_payload"),
        (
            "lobby",
            json!({ "message": "hi", "clientId": "c\u{0}" }),
            400,
            "invalid_payload",
        ),
        ("lobby", json!({ "message": "x".repeat(4001) }), 413, "too_large"),
    ];
    for (room, body, status, code) in cases {
        let (got, answer) = post(&app, &alice, room, body).await;
        assert_eq!(
            (got, &answer["error"]["code"]),
            (status, &json!(code)),
            "{room}: {answer}"
        );
        assert_eq!(answer["ok"], json!(false));
    }
    // Room ids in paths are percent-decoded.
    let (status, _) = post(&app, &alice, "a%3Ab", json!({ "message": "hi" })).await;
    assert_eq!(status, 201);
    let (_, page) = get(&app, &alice, "/api/rooms/a:b/messages").await;
    assert_eq!(page["messages"][0]["roomId"], json!("a:b"));
}
