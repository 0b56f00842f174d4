//! No caller can exhaust a node with reads. A room of large messages is read
//! by 16 concurrent history readers in a loop and by 16 that send requests
//! and never read the answers, while another room chats on the same node
//! and Redis. What must hold (and is reported): the node's RSS stays under a
//! stated bound, the other room's messages are acknowledged, `/ready` stays
//! 200, Redis keeps answering, and no socket is told to resync (no lease
//! lost). Readers that never read are cut off by the write deadline. The
//! same on the embedded backend, and with sockets replaying the room from
//! `since=0` at the same time.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use roomcast_tests::{Client, Edge, RedisServer, hs256};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "exhaust-test-secret-exhaust-test-secret";
const KEY: &str = "exhaust-test-server-key";
/// What the node may grow by under the attack. Each response is at most one
/// page (`history.max_page_bytes`, 1 MiB): 32 attackers hold at most ~32 MiB
/// of pages, plus their parsing and socket buffers.
const RSS_BOUND_MIB: u64 = 160;
/// Messages the calm room exchanges while the attack runs.
const CALM_MESSAGES: usize = 10;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn read_history(port: u16, path: &str, token: &str) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut body = Vec::new();
    let _ = s.read_to_end(&mut body).await;
    body.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_history_reads_cannot_exhaust_a_node_on_redis() {
    let redis = RedisServer::start().await;
    exhaust(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_history_reads_cannot_exhaust_an_embedded_node() {
    exhaust(None).await;
}

/// Replays a room from the start over a socket, to the end; messages read
/// (counted, not parsed: the attacker should not be the bottleneck).
async fn replay(url: &str) -> usize {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut c, _, _) = Client::join(url).await;
    let mut n = 0;
    while n < 500 {
        match tokio::time::timeout(Duration::from_secs(10), c.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"{"type":"message""#) => n += 1,
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    n
}

async fn replayers_total(tasks: &mut Vec<tokio::task::JoinHandle<usize>>) -> usize {
    let mut n = 0;
    for t in tasks.drain(..) {
        n += t.await.unwrap();
    }
    n
}

async fn exhaust(redis: Option<&RedisServer>) {
    let url = redis.map(RedisServer::url);
    let mut env = vec![
        ("JWT_SECRET", SECRET),
        ("SERVER_API_KEY", KEY),
        ("ROOMCAST__SERVER__WRITE_DEADLINE_MS", "3000"),
        ("ROOMCAST__WEBSOCKET__WRITE_TIMEOUT_MS", "1000"),
        ("ROOMCAST__LIMITS__REST_RATE_PER_SEC", "100000"),
        ("ROOMCAST__LIMITS__REST_BURST", "100000"),
    ];
    if let Some(u) = &url {
        env.push(("REDIS_URL", u.as_str()));
    }
    let edge = Edge::start(&env).await;
    edge.wait_ready().await;
    let big = edge.room("big").await;
    let calm = edge.room("calm").await;
    // 500 messages of 60 KB: 30 MB of history in one room.
    let content = "x".repeat(60_000);
    let auth = format!("Bearer {KEY}");
    for _ in 0..500 {
        let r = edge
            .request(
                "POST",
                &format!("/rooms/{big}/messages"),
                &[("authorization", &auth)],
                Some(&json!({ "content": content }).to_string()),
            )
            .await;
        assert_eq!(r.status, 202);
    }
    // The bystanders: two users chatting in another room.
    let (ta, tb) = (hs256(SECRET, "a", json!({})), hs256(SECRET, "b", json!({})));
    let (mut a, _, _) = Client::join(&edge.ws_url(&format!("/ws/{calm}/a?token={ta}"))).await;
    let (mut b, _, _) = Client::join(&edge.ws_url(&format!("/ws/{calm}/b?token={tb}"))).await;
    a.next_of("user_joined").await;
    let pid = edge.pid();
    let before = rss_kib(pid);

    let reader = hs256(SECRET, "reader", json!({}));
    let path = format!("/rooms/{big}/messages?limit=1000&since=0");
    // A page is one byte bound, not the room: ends early, says where next.
    let page = edge
        .request(
            "GET",
            &path,
            &[("authorization", &format!("Bearer {reader}"))],
            None,
        )
        .await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.len() <= 1024 * 1024 + 70_000,
        "{}",
        page.body.len()
    );
    assert_eq!(page.headers["x-roomcast-truncated"], "1");
    let next: u64 = page.headers["x-roomcast-next-since"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((10..=20).contains(&next), "{next}");

    // The attack runs until the calm room has sent its messages.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = |stop: &std::sync::Arc<std::sync::atomic::AtomicBool>| {
        !stop.load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut attackers = Vec::new();
    for _ in 0..16 {
        let (port, path, token) = (edge.port, path.clone(), reader.clone());
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            let mut read = 0;
            while running(&stop) {
                read += read_history(port, &path, &token).await;
            }
            read
        }));
    }
    // Sockets that replay the whole room (since=0), again and again.
    let mut replayers = Vec::new();
    for i in 0..4 {
        let token = hs256(SECRET, &format!("replayer{i}"), json!({}));
        let url = edge.ws_url(&format!("/ws/{big}/replayer{i}?token={token}&since=0"));
        let stop = stop.clone();
        replayers.push(tokio::spawn(async move {
            let mut frames = 0;
            while running(&stop) {
                let n = replay(&url).await;
                assert_eq!(n, 500, "a replay pages through everything");
                frames += n;
            }
            frames
        }));
    }
    // Readers that ask and never read.
    let mut stuck = Vec::new();
    for _ in 0..16 {
        let mut s = TcpStream::connect(("127.0.0.1", edge.port)).await.unwrap();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        stuck.push(s);
    }
    // Meanwhile: the calm room chats, /ready and Redis are watched.
    let (mut peak, mut worst_ack, mut worst_ping, mut not_ready) =
        (0, Duration::ZERO, Duration::ZERO, 0);
    // Let the attack get going, then chat through it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut sent = 0;
    while sent < CALM_MESSAGES {
        let started = Instant::now();
        a.send_json(
            &json!({"content": format!("still here {sent}"), "client_id": sent.to_string()}),
        )
        .await;
        let ack = tokio::time::timeout(Duration::from_secs(30), a.next_of("ack"))
            .await
            .expect("the calm room's message is acknowledged");
        assert_eq!(ack["client_id"], sent.to_string());
        worst_ack = worst_ack.max(started.elapsed());
        sent += 1;
        if let Some(redis) = redis {
            let ping = Instant::now();
            assert_eq!(redis.cli(&["PING"]), "PONG");
            worst_ping = worst_ping.max(ping.elapsed());
        }
        if edge.try_status("/ready").await != Some(200) {
            not_ready += 1;
        }
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in attackers {
        total += t.await.unwrap();
    }
    let replayed = replayers_total(&mut replayers).await;
    // The stuck readers are cut off by the write deadline (3 s here): each
    // gets at most a page and then the end of its connection (waited for
    // generously: a loaded machine delays it, it must still come).
    let mut cut = 0;
    for mut s in stuck {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    cut += 1;
                    break;
                }
                Ok(Ok(n)) => got += n,
                Err(_) => break,
            }
        }
        assert!(
            got <= 1024 * 1024 + 200_000,
            "a stuck reader got {got} bytes"
        );
    }
    let grew_mib = peak.saturating_sub(before) / 1024;
    println!(
        "exhaustion ({}): {} MiB read by 16 looping readers, {replayed} messages replayed by 4 sockets; RSS {} -> peak {} MiB (+{grew_mib}); \
         calm room {sent} messages, worst ack {worst_ack:?}; worst Redis PING {worst_ping:?}; \
         /ready non-200 {not_ready} times; stuck readers cut off {cut}/16",
        if redis.is_some() { "redis" } else { "embedded" },
        total >> 20,
        before / 1024,
        peak / 1024,
    );
    assert!(grew_mib < RSS_BOUND_MIB, "RSS grew {grew_mib} MiB");
    assert_eq!(not_ready, 0, "/ready stayed 200");
    assert_eq!(
        cut, 16,
        "every stuck reader was cut off by the write deadline"
    );
    // Every calm message reached the other member, and nobody was told to
    // resync.
    let mut got = 0;
    while let Some(f) = b.next_json_within(Duration::from_secs(1)).await {
        if f["type"] == "message" {
            got += 1;
        }
    }
    assert_eq!(got, sent);
}
