//! Who may connect: close codes 4004, 4001 and 4003, auto-create settings,
//! JWT (HS256 and RS256) from query, header or cookie, the `rooms` claim,
//! and the Origin check.

use roomcast_tests::{Client, Closed, Edge, fixture, hs256, now, rs256};
use serde_json::json;

async fn refused(url: &str, headers: &[(&str, &str)]) -> Closed {
    let mut c = Client::connect_with(url, headers)
        .await
        .expect("upgrade succeeds");
    c.closed().await
}

#[tokio::test]
async fn unknown_room_or_user_closes_4004_unless_auto_create() {
    let dev = Edge::in_process(&[]).await;
    let (user, room) = (dev.user("u").await, dev.room("r").await);
    assert_eq!(
        refused(&dev.ws_url(&format!("/ws/nope/{user}")), &[])
            .await
            .code(),
        Some(4004)
    );
    assert_eq!(
        refused(&dev.ws_url(&format!("/ws/{room}/nobody")), &[])
            .await
            .code(),
        Some(4004)
    );
    assert_eq!(
        refused(&dev.ws_url(&format!("/ws/{room}/bad:id")), &[])
            .await
            .code(),
        Some(4004)
    );

    // Production defaults: both auto-create on.
    let prod = Edge::in_process(&[
        ("ENVIRONMENT", "production"),
        ("ALLOW_UNAUTHENTICATED", "true"),
    ])
    .await;
    let (_, c, _) = Client::join(&prod.ws_url("/ws/lobby/carol?username=Carol")).await;
    assert_eq!(
        (c["room_id"].as_str(), c["username"].as_str()),
        (Some("lobby"), Some("Carol"))
    );
    assert_eq!(prod.get("/rooms/lobby").await.json()["name"], "lobby");
    assert_eq!(prod.get("/users/carol").await.json()["username"], "Carol");

    // Each flag on its own.
    let rooms_only = Edge::in_process(&[("ALLOW_WEBSOCKET_AUTO_ROOMS", "true")]).await;
    let u = rooms_only.user("u").await;
    Client::join(&rooms_only.ws_url(&format!("/ws/newroom/{u}"))).await;
    assert_eq!(
        refused(&rooms_only.ws_url("/ws/newroom/ghost"), &[])
            .await
            .code(),
        Some(4004)
    );
}

#[tokio::test]
async fn rest_join_auto_create_follows_its_settings() {
    let dev = Edge::in_process(&[]).await;
    let user = dev.user("u").await;
    let r = dev
        .post("/rooms/auto-room/join", &json!({"user_id": user}))
        .await;
    assert_eq!(
        (r.status, r.json()["detail"].as_str()),
        (404, Some("Room not found"))
    );
    let room = dev.room("r").await;
    let r = dev
        .post(&format!("/rooms/{room}/join"), &json!({"user_id": "ghost"}))
        .await;
    assert_eq!(
        (r.status, r.json()["detail"].as_str()),
        (404, Some("User not found"))
    );
    assert_eq!(
        dev.post(&format!("/rooms/{room}/join"), &json!({}))
            .await
            .status,
        422
    );

    let prod = Edge::in_process(&[
        ("ENVIRONMENT", "production"),
        ("ALLOW_UNAUTHENTICATED", "true"),
    ])
    .await;
    let r = prod
        .post(
            "/rooms/auto-room/join",
            &json!({"user_id": "ghost", "username": "Ghost"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(prod.get("/users/ghost").await.json()["username"], "Ghost");
}

#[tokio::test]
async fn hs256_tokens_from_query_header_or_cookie() {
    let secret = "test-secret-test-secret-test-secret";
    let edge = Edge::in_process(&[
        ("JWT_SECRET", secret),
        ("PUBLISH_API_KEY", "server-key-123456"),
    ])
    .await;
    let room = edge.room("r").await;
    let url = |user: &str, q: &str| edge.ws_url(&format!("/ws/{room}/{user}{q}"));
    let good = hs256(secret, "alice", json!({"name": "Alice"}));

    let (_, c, _) = Client::join(&url("alice", &format!("?token={good}"))).await;
    assert_eq!(c["username"], "Alice");
    let bearer = format!("Bearer {good}");
    let mut c = Client::connect_with(&url("alice", ""), &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(c.next_json().await["type"], "connected");
    let cookie = format!("theme=dark; token={good}");
    let mut c = Client::connect_with(&url("alice", ""), &[("cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(c.next_json().await["type"], "connected");

    assert_eq!(
        refused(&url("alice", ""), &[]).await.code(),
        Some(4001),
        "missing"
    );
    assert_eq!(
        refused(&url("alice", "?token=garbage"), &[]).await.code(),
        Some(4001),
        "malformed"
    );
    let wrong_key = hs256("other-secret", "alice", json!({}));
    assert_eq!(
        refused(&url("alice", &format!("?token={wrong_key}")), &[])
            .await
            .code(),
        Some(4001)
    );
    let expired = hs256(secret, "alice", json!({"exp": now() - 3600}));
    assert_eq!(
        refused(&url("alice", &format!("?token={expired}")), &[])
            .await
            .code(),
        Some(4001)
    );
    assert_eq!(
        refused(&url("bob", &format!("?token={good}")), &[])
            .await
            .code(),
        Some(4003),
        "URL user differs from sub"
    );

    // alg: none (header {"alg":"none"}, no signature).
    let b64 = |s: &str| {
        use std::fmt::Write;
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = write!(out, "{}", T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 3600))
    );
    assert_eq!(
        refused(&url("alice", &format!("?token={none}")), &[])
            .await
            .code(),
        Some(4001),
        "alg none"
    );
}

#[tokio::test]
async fn rooms_claim_limits_rooms() {
    let secret = "k-secret-k-secret-k-secret-k-secret";
    let edge = Edge::in_process(&[
        ("JWT_SECRET", secret),
        ("PUBLISH_API_KEY", "server-key-123456"),
    ])
    .await;
    let (allowed, other) = (edge.room("a").await, edge.room("b").await);
    let token = hs256(secret, "alice", json!({"rooms": [allowed]}));
    Client::join(&edge.ws_url(&format!("/ws/{allowed}/alice?token={token}"))).await;
    let closed = refused(
        &edge.ws_url(&format!("/ws/{other}/alice?token={token}")),
        &[],
    )
    .await;
    assert_eq!(closed.code(), Some(4003));
}

#[tokio::test]
async fn rs256_and_algorithm_confusion() {
    let key = fixture("jwt-test-public.pem");
    let edge = Edge::in_process(&[
        ("JWT_PUBLIC_KEY_FILE", key.to_str().unwrap()),
        ("PUBLISH_API_KEY", "server-key-123456"),
    ])
    .await;
    let room = edge.room("r").await;
    let good = rs256("alice", json!({}));
    Client::join(&edge.ws_url(&format!("/ws/{room}/alice?token={good}"))).await;
    // An HS256 token "signed" with the public key as the HMAC secret.
    let public_pem = std::fs::read_to_string(&key).unwrap();
    let confused = hs256(&public_pem, "alice", json!({}));
    let closed = refused(
        &edge.ws_url(&format!("/ws/{room}/alice?token={confused}")),
        &[],
    )
    .await;
    assert_eq!(closed.code(), Some(4001));
}

#[tokio::test]
async fn origin_allow_list_for_sockets_and_cors() {
    let edge = Edge::in_process(&[(
        "FRONTEND_URL",
        "https://chat.example.com, http://localhost:3000/",
    )])
    .await;
    let (user, room) = (edge.user("u").await, edge.room("r").await);
    let url = edge.ws_url(&format!("/ws/{room}/{user}"));
    let mut ok = Client::connect_with(&url, &[("origin", "http://localhost:3000")])
        .await
        .unwrap();
    assert_eq!(ok.next_json().await["type"], "connected");
    assert_eq!(
        refused(&url, &[("origin", "https://evil.example.net")])
            .await
            .code(),
        Some(4003)
    );

    let r = edge
        .request(
            "GET",
            "/rooms",
            &[("origin", "https://chat.example.com")],
            None,
        )
        .await;
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://chat.example.com"
    );
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    let r = edge
        .request(
            "GET",
            "/rooms",
            &[("origin", "https://evil.example.net")],
            None,
        )
        .await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let pre = edge
        .request(
            "OPTIONS",
            "/users",
            &[
                ("origin", "https://chat.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
            None,
        )
        .await;
    assert_eq!(pre.status, 204);
    assert!(
        pre.headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(pre.headers["access-control-allow-headers"], "content-type");
}

#[tokio::test]
async fn an_expired_token_may_receive_but_not_send() {
    let secret = "k-secret-k-secret-k-secret-k-secret";
    let edge = Edge::in_process(&[
        ("JWT_SECRET", secret),
        ("PUBLISH_API_KEY", "server-key-123456"),
    ])
    .await;
    let room = edge.room("r").await;
    let token = hs256(secret, "alice", json!({"exp": now() + 2}));
    let (mut c, _, _) =
        Client::join(&edge.ws_url(&format!("/ws/{room}/alice?token={token}"))).await;
    c.send_json(&json!({"content": "while valid"})).await;
    assert_eq!(c.next_of("ack").await["offset"], 1);
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    c.send_json(&json!({"content": "too late"})).await;
    let err = c.next_of("error").await;
    assert_eq!(err["code"], "forbidden");
    c.send_json(&json!({"type": "ping"})).await;
    assert_eq!(
        c.next_of("pong").await["type"],
        "pong",
        "the connection stays open"
    );
    let body = json!({"content": "server news"}).to_string();
    let r = edge
        .request(
            "POST",
            &format!("/rooms/{room}/messages"),
            &[("authorization", "Bearer server-key-123456")],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        c.next_of("message").await["content"],
        "server news",
        "it still receives"
    );
}
