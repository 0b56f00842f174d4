//! Bad input and abusive clients: every error code keeps the connection
//! open, every limit has its close code, and a well-behaved client in the
//! same room keeps receiving meanwhile. Also the drain on SIGTERM.

use std::time::Duration;

use futures_util::SinkExt;
use roomcast_tests::{Client, Closed, Edge};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn room_with_two(edge: &Edge) -> (String, Client, Client) {
    let (a, b, room) = (
        edge.user("a").await,
        edge.user("b").await,
        edge.room("r").await,
    );
    let (ca, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{a}"))).await;
    let (cb, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{b}"))).await;
    (room, ca, cb)
}

/// Sends a message from `c` and checks it arrives at `watcher`.
async fn still_chatting(c: &mut Client, watcher: &mut Client, text: &str) {
    c.send_json(&json!({"content": text})).await;
    let m = watcher.next_of("message").await;
    assert_eq!(m["content"], text);
}

#[tokio::test]
async fn every_error_code_keeps_the_connection_open() {
    let edge = Edge::start(&[("ROOMCAST__WEBSOCKET__MAX_CONTENT_BYTES", "100")]).await;
    let (_, mut a, mut b) = room_with_two(&edge).await;
    a.next_of("user_joined").await;
    let cases: [(&str, &str); 7] = [
        ("{not json", "invalid_json"),
        ("[1,2,3]", "invalid_json"),
        (r#"{"content": 42}"#, "invalid_json"),
        (r#"{"type": "dance"}"#, "unknown_type"),
        (r#"{"content": "   "}"#, "empty_content"),
        (r#"{"type": "message"}"#, "empty_content"),
        (
            &format!(r#"{{"content": "{}"}}"#, "x".repeat(101)),
            "too_large",
        ),
    ];
    for (frame, code) in cases {
        a.send_text(frame).await;
        let err = a.next_json().await;
        assert_eq!(
            (err["type"].as_str(), err["code"].as_str()),
            (Some("error"), Some(code)),
            "{frame}"
        );
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    a.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(a.next_json().await["code"], "invalid_json", "binary frames");
    b.expect_silence(Duration::from_millis(200)).await;
    still_chatting(&mut a, &mut b, "still here").await;
    assert!(
        edge.metric("roomcast_messages_received_total{type=\"invalid\"}")
            .await
            >= 7.0
    );
}

#[tokio::test]
async fn frame_over_the_transport_limit_closes_1009() {
    let edge = Edge::start(&[
        ("ROOMCAST__WEBSOCKET__MAX_FRAME_BYTES", "20000"),
        ("ROOMCAST__WEBSOCKET__MAX_CONTENT_BYTES", "10000"),
    ])
    .await;
    let (_, mut a, mut b) = room_with_two(&edge).await;
    let content = "y".repeat(15_000);
    a.send_json(&json!({"content": content})).await;
    assert_eq!(
        a.next_of("error").await["code"],
        "too_large",
        "over content, under transport"
    );
    let _ = a.ws.send(Message::Text("z".repeat(30_000).into())).await;
    assert_eq!(a.closed().await.code(), Some(1009));
    b.next_of("user_left").await;
}

#[tokio::test]
async fn rate_limit_then_flood_close_while_others_keep_chatting() {
    let edge = Edge::start(&[
        ("ROOMCAST__WEBSOCKET__RATE_PER_SEC", "5"),
        ("ROOMCAST__WEBSOCKET__RATE_BURST", "5"),
        ("ROOMCAST__WEBSOCKET__FLOOD_CLOSE_AFTER", "20"),
    ])
    .await;
    let (_, mut flooder, mut good) = room_with_two(&edge).await;
    flooder.next_of("user_joined").await;
    for i in 0..8 {
        flooder.send_json(&json!({"type": "ping", "n": i})).await;
    }
    let mut codes = Vec::new();
    for _ in 0..8 {
        let f = flooder.next_json().await;
        codes.push(
            f["code"]
                .as_str()
                .unwrap_or(f["type"].as_str().unwrap())
                .to_owned(),
        );
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "pong").count(),
        5,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "rate_limited").count(),
        3,
        "{codes:?}"
    );
    // Keep flooding: closed 1008.
    for _ in 0..40 {
        if flooder
            .ws
            .send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    match flooder.closed().await {
        Closed::Code(code, reason) => assert_eq!((code, reason.as_str()), (1008, "rate_limited")),
        other => panic!("expected 1008, got {other:?}"),
    }
    let left = good.next_of("user_left").await;
    assert_eq!(left["type"], "user_left");
    good.send_json(&json!({"content": "unaffected"})).await;
    assert_eq!(good.next_of("message").await["content"], "unaffected");
    assert_eq!(
        edge.metric("roomcast_connections_closed_total{reason=\"rate_limited\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_slow_consumer() {
    let edge = Edge::start(&[
        ("ROOMCAST__WEBSOCKET__OUTBOUND_QUEUE", "16"),
        ("ROOMCAST__WEBSOCKET__WRITE_TIMEOUT_MS", "2000"),
        ("ROOMCAST__WEBSOCKET__RATE_PER_SEC", "100000"),
        ("ROOMCAST__WEBSOCKET__RATE_BURST", "100000"),
        ("ROOMCAST__LIMITS__USER_FRAME_RATE_PER_SEC", "100000"),
        ("ROOMCAST__LIMITS__USER_FRAME_BURST", "100000"),
    ])
    .await;
    let (room, mut sender, mut stalled) = room_with_two(&edge).await;
    let watcher_id = edge.user("w").await;
    let (mut watcher, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{watcher_id}"))).await;
    // `stalled` reads nothing from here on. 400 × 50 KB overflows its socket
    // buffers and then its queue.
    let content = "m".repeat(50_000);
    let total = 400;
    let chat = tokio::spawn(async move {
        for i in 0..total {
            sender
                .send_json(&json!({"content": content, "client_id": i.to_string()}))
                .await;
            // The watcher keeps up and gets every message, in order.
            let m = watcher.next_of("message").await;
            assert_eq!(m["client_id"], i.to_string());
            // The sender reads too (its ack; its own echo is skipped next time).
            sender.next_of("ack").await;
        }
        total
    });
    // Once the node has given up on it, the stalled client reads again: what
    // it was sent (a prefix), then a 1008. (The node waits a write timeout
    // for the close frame to go out: the client must read for it to.)
    let gave_up = async {
        while edge
            .metric("roomcast_connections_closed_total{reason=\"slow_consumer\"}")
            .await
            < 1.0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), gave_up)
        .await
        .expect("the stalled client is closed as a slow consumer");
    let mut saw = 0;
    let closed = loop {
        match tokio::time::timeout(
            Duration::from_secs(15),
            futures_util::StreamExt::next(&mut stalled.ws),
        )
        .await
        {
            Ok(Some(Ok(Message::Text(_)))) => saw += 1,
            Ok(Some(Ok(Message::Close(f)))) => {
                break f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a close frame after {saw} frames, got {other:?}"),
        }
    };
    assert_eq!(
        closed,
        Some((1008, "slow_consumer".to_owned())),
        "after {saw} frames"
    );
    assert_eq!(chat.await.expect("the others chat on"), total);
    assert!(
        saw < total,
        "the stalled client cannot have got everything ({saw})"
    );
    assert_eq!(
        edge.metric("roomcast_connections_closed_total{reason=\"slow_consumer\"}")
            .await,
        1.0
    );
    assert!(
        edge.metric("roomcast_messages_dropped_total{reason=\"slow_consumer\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn over_max_connections_is_503_before_the_upgrade() {
    let edge = Edge::start(&[("ROOMCAST__SERVER__MAX_CONNECTIONS", "2")]).await;
    let (_room, _a, _b) = room_with_two(&edge).await;
    let u = edge.user("c").await;
    let r = edge.room("r2").await;
    let err = Client::connect_with(&edge.ws_url(&format!("/ws/{r}/{u}")), &[])
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other}"),
    }
    assert_eq!(
        edge.metric("roomcast_handshakes_refused_total{reason=\"capacity\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_heartbeat() {
    let edge = Edge::start(&[
        ("ROOMCAST__WEBSOCKET__HEARTBEAT_INTERVAL_MS", "200"),
        ("ROOMCAST__WEBSOCKET__HEARTBEAT_TIMEOUT_MS", "700"),
    ])
    .await;
    let (_, mut silent, mut watcher) = room_with_two(&edge).await;
    // A peer that reads answers pings (tungstenite does), so it stays.
    watcher.expect_silence(Duration::from_millis(1500)).await;
    // The silent one read nothing, so it never ponged: closed 1001.
    match silent.closed().await {
        Closed::Code(code, reason) => {
            assert_eq!((code, reason.as_str()), (1001, "heartbeat timeout"))
        }
        other => panic!("expected 1001, got {other:?}"),
    }
    assert_eq!(watcher.next_of("user_left").await["type"], "user_left");
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_exits() {
    let mut edge = Edge::start(&[("ROOMCAST__SERVER__SHUTDOWN_GRACE_MS", "5000")]).await;
    let (_, mut a, mut b) = room_with_two(&edge).await;
    edge.sigterm();
    for c in [&mut a, &mut b] {
        match c.closed().await {
            Closed::Code(code, _) => assert_eq!(code, 1012),
            other => panic!("expected 1012, got {other:?}"),
        }
    }
    let status = edge.wait_exit(Duration::from_secs(6)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_trickled_handshake_is_cut_at_the_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = Edge::start(&[("ROOMCAST__SERVER__HANDSHAKE_TIMEOUT_MS", "500")]).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", edge.port))
        .await
        .unwrap();
    s.write_all(b"GET /ws/r/u HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection (possibly after a 408) instead of
    // waiting for the rest of the head forever.
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // Meanwhile the node serves others.
    assert_eq!(edge.get("/health").await.status, 200);
}
