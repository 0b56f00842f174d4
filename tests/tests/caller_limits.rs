//! Limits a single caller cannot exceed, against a real node: sockets per
//! user and per client address, REST requests per address and per user,
//! frames per user across all its sockets. Each refusal has its code and
//! its metric, and bystanders go on.

use std::time::Duration;

use roomcast_tests::{Client, Edge, hs256};
use serde_json::json;

const SECRET: &str = "limits-test-secret-limits-test-secret";
const KEY: &str = "limits-test-server-key";

#[tokio::test]
async fn one_token_cannot_take_every_connection_slot() {
    let edge = Edge::in_process(&[
        ("JWT_SECRET", SECRET),
        ("SERVER_API_KEY", KEY),
        ("ROOMCAST__LIMITS__CONNECTIONS_PER_USER", "3"),
    ])
    .await;
    let room = edge.room("r").await;
    let token = hs256(SECRET, "hog", json!({}));
    let url = edge.ws_url(&format!("/ws/{room}/hog?token={token}"));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::join(&url).await.0);
    }
    let mut fourth = Client::connect(&url).await;
    let closed = fourth.closed().await;
    assert_eq!(closed.code(), Some(1008), "{closed:?}");
    // Another user is not affected, and a closed socket frees its place.
    let other = hs256(SECRET, "other", json!({}));
    Client::join(&edge.ws_url(&format!("/ws/{room}/other?token={other}"))).await;
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = Client::connect(&url).await;
        if c.next_json_within(Duration::from_secs(2)).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not freed"
        );
    }
    assert_eq!(
        edge.metric("roomcast_handshakes_refused_total{reason=\"too_many_connections\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let edge = Edge::in_process(&[("ROOMCAST__LIMITS__CONNECTIONS_PER_ADDRESS", "4")]).await;
    let room = edge.room("r").await;
    let mut held = Vec::new();
    for i in 0..4 {
        let u = edge.user(&format!("u{i}")).await;
        held.push(
            Client::join(&edge.ws_url(&format!("/ws/{room}/{u}")))
                .await
                .0,
        );
    }
    let u = edge.user("fifth").await;
    let refused = Client::connect_with(&edge.ws_url(&format!("/ws/{room}/{u}")), &[]).await;
    let err = refused.expect_err("refused before the upgrade").to_string();
    assert!(err.contains("429"), "{err}");
    assert_eq!(
        edge.metric("roomcast_handshakes_refused_total{reason=\"address_limit\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn rest_requests_are_limited_per_address_and_per_user() {
    let edge = Edge::in_process(&[
        ("JWT_SECRET", SECRET),
        ("SERVER_API_KEY", KEY),
        // One token per 100 s: no refill during the test, however slow.
        ("ROOMCAST__LIMITS__REST_RATE_PER_SEC", "0.01"),
        ("ROOMCAST__LIMITS__REST_BURST", "5"),
    ])
    .await;
    let room = edge.room("r").await;
    // Anonymous callers from one address: the burst, then 429 (before the
    // access table even says 401), with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(edge.get("/rooms").await);
    }
    let limited: Vec<_> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(
        limited.len() >= 2,
        "{:?}",
        statuses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(limited[0].headers.contains_key("retry-after"));
    // The application backend is not limited.
    for _ in 0..20 {
        let r = edge
            .request(
                "GET",
                "/rooms",
                &[("authorization", &format!("Bearer {KEY}"))],
                None,
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert!(
        edge.metric("roomcast_requests_refused_total{reason=\"rate_limited\"}")
            .await
            >= 2.0
    );
    let _ = room;
}

#[tokio::test]
async fn a_users_frame_rate_holds_across_its_sockets() {
    let edge = Edge::in_process(&[
        ("JWT_SECRET", SECRET),
        ("SERVER_API_KEY", KEY),
        ("ROOMCAST__WEBSOCKET__RATE_PER_SEC", "1000"),
        ("ROOMCAST__WEBSOCKET__RATE_BURST", "1000"),
        // No refill during the test, however slow: the burst is all there is.
        ("ROOMCAST__LIMITS__USER_FRAME_RATE_PER_SEC", "0.01"),
        ("ROOMCAST__LIMITS__USER_FRAME_BURST", "10"),
    ])
    .await;
    let room = edge.room("r").await;
    let token = hs256(SECRET, "chatty", json!({}));
    let url = edge.ws_url(&format!("/ws/{room}/chatty?token={token}"));
    let mut socks = Vec::new();
    for _ in 0..5 {
        socks.push(Client::join(&url).await.0);
    }
    // Five sockets, four pings each: 20 frames against a user burst of 10.
    for s in socks.iter_mut() {
        for _ in 0..4 {
            s.send_json(&json!({"type": "ping"})).await;
        }
    }
    // Each socket answers each of its four pings: a pong or rate_limited.
    let (mut pongs, mut limited) = (0, 0);
    for s in socks.iter_mut() {
        let mut answers = 0;
        while answers < 4 {
            let f = s.next_json().await;
            match f["type"].as_str() {
                Some("pong") => pongs += 1,
                Some("error") if f["code"] == "rate_limited" => limited += 1,
                _ => continue,
            }
            answers += 1;
        }
    }
    assert_eq!(
        (pongs, limited),
        (10, 10),
        "the user's burst (10) holds across its five sockets"
    );
}

/// A refused socket gives its slot back at once, not after a close
/// handshake its client may never answer: at capacity, two clients with
/// bad tokens that never read do not keep a good one out.
#[tokio::test]
async fn refused_sockets_give_their_slot_back_at_once() {
    let edge = Edge::in_process(&[
        ("JWT_SECRET", SECRET),
        ("SERVER_API_KEY", KEY),
        ("ROOMCAST__SERVER__MAX_CONNECTIONS", "2"),
    ])
    .await;
    let room = edge.room("r").await;
    // Two refused (4001) clients that never read their close frame.
    let mut refused = Vec::new();
    for i in 0..2 {
        let url = edge.ws_url(&format!("/ws/{room}/bad{i}?token=garbage"));
        refused.push(Client::connect(&url).await);
    }
    let token = hs256(SECRET, "good", json!({}));
    let url = edge.ws_url(&format!("/ws/{room}/good?token={token}"));
    let (c, connected, _) = Client::join(&url).await;
    assert_eq!(
        connected["user_id"], "good",
        "admitted while the refused ones linger"
    );
    drop((c, refused));
}
