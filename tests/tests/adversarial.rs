//! Hostile clients against the real binary. Each attack gets its exact
//! outcome (status, close code or error frame), while a well-behaved pair
//! of clients on the same node keeps chatting; the node's RSS is sampled
//! before and after and reported. (Other attacks live with their feature:
//! flooding, never-reading clients, trickled handshakes and connection
//! floods in limits.rs; token and origin attacks in auth.rs.)

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use roomcast_tests::{Client, Closed, Edge, RedisServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

fn rss_kib(edge: &Edge) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", edge.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Two well-behaved clients in their own room.
struct Bystanders {
    talker: Client,
    listener: Client,
    n: u32,
}

impl Bystanders {
    async fn join(edge: &Edge) -> Bystanders {
        let (a, b, room) = (
            edge.user("talker").await,
            edge.user("listener").await,
            edge.room("calm").await,
        );
        let (talker, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{a}"))).await;
        let (mut listener, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{b}"))).await;
        let _ = listener.next_json_within(Duration::from_millis(200)).await;
        Bystanders {
            talker,
            listener,
            n: 0,
        }
    }

    /// A message from one reaches the other.
    async fn still_chatting(&mut self) {
        self.n += 1;
        let text = format!("calm {}", self.n);
        self.talker.send_json(&json!({"content": text})).await;
        assert_eq!(self.listener.next_of("message").await["content"], text);
    }
}

/// Runs `attack` with bystanders chatting before and after; reports RSS.
async fn survive<F, Fut>(name: &str, edge: &Edge, attack: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut calm = Bystanders::join(edge).await;
    calm.still_chatting().await;
    let before = rss_kib(edge);
    attack().await;
    calm.still_chatting().await;
    let after = rss_kib(edge);
    eprintln!("{name}: node RSS {before} KiB -> {after} KiB");
    // A tripwire for unbounded growth, not a performance assertion.
    assert!(
        after < before + 100 * 1024,
        "{name}: RSS grew by {} KiB",
        after - before
    );
}

async fn room_socket(edge: &Edge) -> Client {
    let (u, r) = (edge.user("attacker").await, edge.room("target").await);
    Client::join(&edge.ws_url(&format!("/ws/{r}/{u}"))).await.0
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_1007() {
    let edge = Edge::start(&[]).await;
    survive("non-UTF-8", &edge, || async {
        let mut c = room_socket(&edge).await;
        let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
        c.ws.send(Message::Frame(frame)).await.unwrap();
        assert_eq!(c.closed().await.code(), Some(1007));
    })
    .await;
}

#[tokio::test]
async fn continuation_frames_beyond_the_limit_close_1009() {
    let edge = Edge::start(&[
        ("ROOMCAST__WEBSOCKET__MAX_FRAME_BYTES", "20000"),
        ("ROOMCAST__WEBSOCKET__MAX_CONTENT_BYTES", "10000"),
    ])
    .await;
    survive("fragmented flood", &edge, || async {
        let mut c = room_socket(&edge).await;
        let chunk = vec![b'a'; 1000];
        let mut frames = vec![Frame::message(
            chunk.clone(),
            OpCode::Data(Data::Text),
            false,
        )];
        frames.extend(
            (0..40).map(|_| Frame::message(chunk.clone(), OpCode::Data(Data::Continue), false)),
        );
        for f in frames {
            if c.ws.send(Message::Frame(f)).await.is_err() {
                break;
            }
        }
        assert_eq!(c.closed().await.code(), Some(1009));
    })
    .await;
}

#[tokio::test]
async fn oversized_and_garbage_http_is_refused() {
    let edge = Edge::start(&[]).await;
    survive("bad HTTP", &edge, || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", edge.port))
            .await
            .unwrap();
        let head = format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(40_000)
        );
        let _ = s.write_all(head.as_bytes()).await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"),
            "{}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        );

        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", edge.port))
            .await
            .unwrap();
        s.write_all(b"\x16\x03\x01\x02\x00garbage that is no HTTP\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    })
    .await;
}

#[tokio::test]
async fn binary_and_unknown_frames_get_errors_and_the_socket_lives() {
    let edge = Edge::start(&[]).await;
    survive("binary / unknown", &edge, || async {
        let mut c = room_socket(&edge).await;
        c.ws.send(Message::Binary(vec![0u8; 100].into()))
            .await
            .unwrap();
        assert_eq!(c.next_of("error").await["code"], "invalid_json");
        c.send_text(r#"{"type":"admin","command":"drop table"}"#)
            .await;
        assert_eq!(c.next_of("error").await["code"], "unknown_type");
        c.send_json(&json!({"type": "ping"})).await;
        assert_eq!(c.next_of("pong").await["type"], "pong");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_leaves_nothing_behind() {
    let edge = Edge::start(&[("ROOMCAST__SERVER__MAX_CONNECTIONS", "150")]).await;
    let (u, r) = (edge.user("storm").await, edge.room("storm").await);
    let url = edge.ws_url(&format!("/ws/{r}/{u}"));
    survive("reconnect storm", &edge, || async {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut refused) = (0, 0);
                for _ in 0..15 {
                    match Client::connect_with(&url, &[]).await {
                        Ok(mut c) => {
                            ok += 1;
                            // Half close politely, half just vanish.
                            if ok % 2 == 0 {
                                let _ = c.ws.close(None).await;
                            }
                        }
                        Err(_) => refused += 1,
                    }
                }
                (ok, refused)
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.unwrap().0;
        }
        assert!(ok > 0);
    })
    .await;
    // Every stormed socket is gone again (only the bystanders remain open).
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.metric("roomcast_connections").await > 2.0 {
        assert!(
            Instant::now() < deadline,
            "connections leaked: {}",
            edge.metric("roomcast_connections").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let presence = edge.get(&format!("/rooms/{r}/presence")).await.json();
    assert_eq!(presence["users"], json!([]), "no ghost in presence");
}

#[tokio::test]
async fn crafted_ids_cannot_reach_other_keys() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let edge = Edge::start(&[
        ("REDIS_URL", url.as_str()),
        ("ENVIRONMENT", "production"),
        ("ALLOW_UNAUTHENTICATED", "true"),
    ])
    .await;
    edge.wait_ready().await;
    let victim = edge.room("victim").await;
    let user = edge.user("mallory").await;
    // Ids that would mean something to a key scheme, percent-encoded in the
    // URL (the router decodes them before they are checked).
    let crafted = [
        format!("{victim}%3Aseq"),
        format!("{victim}%7B1%7D"),
        "%2A".to_owned(),
        format!("..%2F{victim}"),
        format!("{victim}%0D%0ADEL%20x"),
        "a%20b".to_owned(),
        "x".repeat(65),
    ];
    for id in &crafted {
        let r = edge.get(&format!("/rooms/{id}/messages")).await;
        assert_eq!(r.status, 404, "{id}");
        let r = edge
            .post(&format!("/rooms/{id}/join"), &json!({"user_id": user}))
            .await;
        assert_eq!(r.status, 404, "{id}");
        let mut c = Client::connect(&edge.ws_url(&format!("/ws/{id}/{user}"))).await;
        assert_eq!(
            c.closed().await,
            Closed::Code(4004, "room not found".into()),
            "{id}"
        );
        let r = edge
            .post("/rooms/victim/join", &json!({"user_id": id}))
            .await;
        assert_eq!(
            r.status, 422,
            "a crafted user id in a body is refused: {id}"
        );
    }
    // Redis holds keys only for ids that passed validation.
    let keys = redis.cli(&["--scan", "--pattern", "*"]);
    for key in keys.lines() {
        let parts: Vec<&str> = key.split(':').collect();
        assert!(parts.len() <= 4, "unexpected key shape {key:?}");
        for p in &parts[1..] {
            assert!(
                p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
                "key part {p:?} of {key:?} escaped validation"
            );
        }
    }
    assert!(
        redis.cli(&["EXISTS", &format!("roomcast:seq:{victim}")]) == "0",
        "nothing was published to the victim room"
    );
}
