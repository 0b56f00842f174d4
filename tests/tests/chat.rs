//! The chat flow of the contract against an edge node run in-process on
//! port 0 (the `run` the binary calls, with the same settings loader): join, message,
//! ack, presence, joined/left once per user, typing, ping, history and
//! recovery with `since`.

use std::time::Duration;

use roomcast_tests::{Client, Edge};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn seed_frontend_flow_message_fields_and_ack() {
    let edge = Edge::in_process(&[]).await;
    let (alice, bob, room) = (
        edge.user("alice").await,
        edge.user("bob").await,
        edge.room("general").await,
    );
    for u in [&alice, &bob] {
        let r = edge
            .post(&format!("/rooms/{room}/join"), &json!({"user_id": u}))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json(),
            json!({"room_id": room, "user_id": u, "joined": true})
        );
    }

    let (mut a, connected, presence) =
        Client::join(&edge.ws_url(&format!("/ws/{room}/{alice}"))).await;
    assert_eq!(connected["room_id"], room.as_str());
    assert_eq!(connected["user_id"], alice.as_str());
    assert_eq!(connected["username"], "alice");
    assert_eq!(connected["offset"], 0);
    assert!(connected["epoch"].is_string() && connected["node_id"].is_string());
    assert!(connected.get("recovered").is_none(), "only with since");
    assert_eq!(
        presence["users"],
        json!([{"user_id": alice, "username": "alice"}])
    );

    let (mut b, _, presence) = Client::join(&edge.ws_url(&format!("/ws/{room}/{bob}"))).await;
    assert_eq!(presence["users"].as_array().unwrap().len(), 2);
    let joined = a.next_json().await;
    assert_eq!(joined["type"], "user_joined");
    assert_eq!(
        (joined["user_id"].as_str(), joined["username"].as_str()),
        (Some(bob.as_str()), Some("bob"))
    );
    assert!(joined["timestamp"].as_str().unwrap().ends_with('Z'));

    // The seed shape, no type.
    b.send_json(&json!({"content": "hello"})).await;
    let ack = b.next_of("ack").await;
    assert_eq!(ack["offset"], 1);
    assert_eq!(ack["client_id"], serde_json::Value::Null);
    let msg = a.next_json().await;
    let mut keys: Vec<_> = msg.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "content",
            "id",
            "offset",
            "room_id",
            "timestamp",
            "type",
            "user_id",
            "username"
        ]
    );
    assert_eq!(msg["content"], "hello");
    assert_eq!(msg["user_id"], bob.as_str());
    assert_eq!(msg["id"], ack["id"]);
    // The sender gets its own message too.
    let echo = b.next_of("message").await;
    assert_eq!(echo, msg);

    // Typed, with client_id: echoed in ack and message.
    a.send_json(&json!({"type": "message", "content": "hi bob", "client_id": "c-1"}))
        .await;
    let ack = a.next_of("ack").await;
    assert_eq!(
        (ack["offset"].as_u64(), ack["client_id"].as_str()),
        (Some(2), Some("c-1"))
    );
    let got = b.next_json().await;
    assert_eq!(
        (got["client_id"].as_str(), got["offset"].as_u64()),
        (Some("c-1"), Some(2))
    );
}

#[tokio::test]
async fn joined_and_left_once_per_user_across_tabs() {
    let edge = Edge::in_process(&[]).await;
    let (alice, bob, room) = (
        edge.user("alice").await,
        edge.user("bob").await,
        edge.room("r").await,
    );
    let (mut watcher, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{alice}"))).await;
    let url = edge.ws_url(&format!("/ws/{room}/{bob}"));
    let (mut tab1, _, _) = Client::join(&url).await;
    assert_eq!(watcher.next_json().await["type"], "user_joined");
    let (mut tab2, _, presence) = Client::join(&url).await;
    assert_eq!(
        presence["users"].as_array().unwrap().len(),
        2,
        "bob listed once"
    );
    watcher.expect_silence(QUIET).await;
    tab1.ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(
        tab1.closed().await.code(),
        Some(1000),
        "the server answers a client's close"
    );
    watcher.expect_silence(QUIET).await;
    let r = edge.get(&format!("/rooms/{room}/presence")).await.json();
    assert_eq!(
        r["users"].as_array().unwrap().len(),
        2,
        "bob still online in tab 2"
    );
    tab2.ws.close(None).await.unwrap();
    let left = watcher.next_json().await;
    assert_eq!(
        (left["type"].as_str(), left["user_id"].as_str()),
        (Some("user_left"), Some(bob.as_str()))
    );
    watcher.expect_silence(QUIET).await;
    let r = edge.get(&format!("/rooms/{room}/presence")).await.json();
    assert_eq!(
        r,
        json!({"room_id": room, "users": [{"user_id": alice, "username": "alice"}]})
    );
}

#[tokio::test]
async fn typing_goes_to_others_only_and_ping_gets_pong() {
    let edge = Edge::in_process(&[]).await;
    let (alice, bob, room) = (
        edge.user("alice").await,
        edge.user("bob").await,
        edge.room("r").await,
    );
    let (mut a, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{alice}"))).await;
    let (mut b, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{bob}"))).await;
    a.next_of("user_joined").await;
    a.send_json(&json!({"type": "typing", "is_typing": true}))
        .await;
    let t = b.next_json().await;
    assert_eq!(
        t,
        json!({"type": "typing", "room_id": room, "user_id": alice, "username": "alice", "is_typing": true})
    );
    a.send_json(&json!({"type": "ping"})).await;
    assert_eq!(
        a.next_json().await,
        json!({"type": "pong"}),
        "no typing echo before the pong"
    );
    // Typing is never stored.
    assert_eq!(
        edge.get(&format!("/rooms/{room}/messages")).await.json(),
        json!([])
    );
}

#[tokio::test]
async fn history_since_offset_and_timestamp_and_limit() {
    let edge = Edge::in_process(&[]).await;
    let (alice, room) = (edge.user("alice").await, edge.room("r").await);
    let (mut a, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{alice}"))).await;
    let mut stamps = Vec::new();
    for i in 1..=5 {
        a.send_json(&json!({"content": format!("m{i}")})).await;
        a.next_of("ack").await;
        stamps.push(
            a.next_of("message").await["timestamp"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let offsets = |v: serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect()
    };
    let all = edge.get(&format!("/rooms/{room}/messages")).await;
    assert_eq!(all.status, 200);
    let all = all.json();
    assert_eq!(all[0]["type"], "message");
    assert_eq!(offsets(all), [1, 2, 3, 4, 5]);
    assert_eq!(
        offsets(
            edge.get(&format!("/rooms/{room}/messages?limit=2"))
                .await
                .json()
        ),
        [4, 5]
    );
    assert_eq!(
        offsets(
            edge.get(&format!("/rooms/{room}/messages?since=2"))
                .await
                .json()
        ),
        [3, 4, 5]
    );
    assert_eq!(
        offsets(
            edge.get(&format!("/rooms/{room}/messages?since=2&limit=1"))
                .await
                .json()
        ),
        [3]
    );
    let since_ts = edge
        .get(&format!("/rooms/{room}/messages?since={}", stamps[3]))
        .await
        .json();
    assert_eq!(offsets(since_ts), [5], "a timestamp is exclusive");
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?since=yesterday"] {
        let r = edge.get(&format!("/rooms/{room}/messages{bad}")).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert!(r.json()["detail"].is_string());
    }
    assert_eq!(edge.get("/rooms/no-such-room/messages").await.status, 404);
}

async fn send(c: &mut Client, text: String) -> u64 {
    c.send_json(&json!({"content": text})).await;
    c.next_of("ack").await["offset"].as_u64().unwrap()
}

#[tokio::test]
async fn reconnect_with_since_gets_exactly_what_was_missed() {
    let edge = Edge::in_process(&[("ROOMCAST__HISTORY__MAX_LEN", "5")]).await;
    let (alice, bob, room) = (
        edge.user("alice").await,
        edge.user("bob").await,
        edge.room("r").await,
    );
    let (mut a, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{alice}"))).await;
    assert_eq!(send(&mut a, "before".into()).await, 1);
    // Bob saw offset 1, then was away while 2..=4 were sent.
    for i in 2..=4 {
        send(&mut a, format!("missed {i}")).await;
    }
    let url = edge.ws_url(&format!("/ws/{room}/{bob}?since=1"));
    let (mut b, connected, _) = Client::join(&url).await;
    assert_eq!(
        (
            connected["recovered"].as_bool(),
            connected["offset"].as_u64()
        ),
        (Some(true), Some(4))
    );
    for expected in 2..=4 {
        let m = b.next_json().await;
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64()),
            (Some("message"), Some(expected))
        );
    }
    // Live messages follow with no gap and no duplicate.
    send(&mut a, "live".into()).await;
    let live = b.next_of("message").await;
    assert_eq!(live["offset"], 5);
    b.expect_silence(QUIET).await;

    // Too far back: history keeps 5 (offsets 1..=5 → now 2..=6 after one more).
    send(&mut a, "six".into()).await;
    let (mut late, connected, _) =
        Client::join(&edge.ws_url(&format!("/ws/{room}/{bob}?since=0"))).await;
    assert_eq!(
        connected["recovered"], false,
        "offset 1 is no longer retained"
    );
    assert_eq!(
        late.next_json().await["offset"],
        2,
        "what is retained still comes"
    );

    // Up to date: nothing replayed.
    let (mut fresh, connected, _) =
        Client::join(&edge.ws_url(&format!("/ws/{room}/{bob}?since=6"))).await;
    assert_eq!(connected["recovered"], true);
    fresh.expect_silence(QUIET).await;
}

#[tokio::test]
async fn server_side_publish_with_the_api_key() {
    let edge = Edge::in_process(&[("PUBLISH_API_KEY", "server-key-123456")]).await;
    let (alice, room) = (edge.user("alice").await, edge.room("r").await);
    let (mut a, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{alice}"))).await;
    let path = format!("/rooms/{room}/messages");
    let body = json!({"content": "deploy finished"}).to_string();
    for auth in [None, Some("Bearer wrong"), Some("server-key-123456")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = edge.request("POST", &path, &headers, Some(&body)).await;
        assert_eq!(r.status, 401, "{auth:?}");
    }
    let r = edge
        .request(
            "POST",
            &path,
            &[("authorization", "Bearer server-key-123456")],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let stored = r.json();
    assert_eq!(
        (stored["user_id"].as_str(), stored["username"].as_str()),
        (Some("system"), Some("system"))
    );
    assert_eq!(stored["offset"], 1);
    assert_eq!(a.next_json().await, stored);
    let r = edge
        .request(
            "POST",
            "/rooms/nope/messages",
            &[("authorization", "Bearer server-key-123456")],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = edge
        .request(
            "POST",
            &path,
            &[("authorization", "Bearer server-key-123456")],
            Some(r#"{"content":"  "}"#),
        )
        .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn alias_route_identifies_by_token() {
    let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
    let edge = Edge::in_process(&[
        ("JWT_SECRET", secret),
        ("PUBLISH_API_KEY", "server-key-123456"),
    ])
    .await;
    let room = edge.room("r").await;
    let token = roomcast_tests::hs256(secret, "user-42", json!({"name": "Forty Two"}));
    let (_, connected, presence) =
        Client::join(&edge.ws_url(&format!("/api/v1/chats/{room}/ws?token={token}"))).await;
    assert_eq!(
        (
            connected["user_id"].as_str(),
            connected["username"].as_str()
        ),
        (Some("user-42"), Some("Forty Two"))
    );
    assert_eq!(
        presence["users"],
        json!([{"user_id": "user-42", "username": "Forty Two"}])
    );
    // The token's user now exists for REST too: readable by itself (and the
    // backend), not by anyone.
    let bearer = format!("Bearer {token}");
    let me = edge
        .request("GET", "/users/user-42", &[("authorization", &bearer)], None)
        .await;
    assert_eq!(
        (me.status, me.json()["username"].as_str()),
        (200, Some("Forty Two"))
    );
    assert_eq!(edge.get("/users/user-42").await.status, 401);
}
