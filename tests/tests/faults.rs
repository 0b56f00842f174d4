//! Redis faults must not make the server lie to its clients: a Redis that
//! freezes leaves publishes whose outcome the node cannot know, and retries
//! of them must not store twice; a Redis that restarts must not make live
//! users look gone; a Redis a few milliseconds away works the same, later.

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use roomcast_tests::{Client, Edge, RedisServer, cluster};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Reads everything a client gets for `within`; panics if the socket ends.
async fn drain(c: &mut Client, within: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return got,
            Ok(Some(Ok(Message::Text(t)))) => got.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_through_a_frozen_redis_store_each_message_once() {
    let redis = RedisServer::start_persistent().await;
    let nodes = cluster(&redis, 2, &[]).await;
    let (alice, bob, room) = (
        nodes[0].user("alice").await,
        nodes[0].user("bob").await,
        nodes[0].room("r").await,
    );
    let (mut a, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{alice}"))).await;
    let (mut b, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{bob}"))).await;
    a.next_of("user_joined").await;

    // Alice sends 10 messages a second; a second in, Redis freezes for 6 s.
    let freeze = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.signal("STOP");
        tokio::time::sleep(Duration::from_secs(6)).await;
        redis.signal("CONT");
    };
    let n = 60;
    let ((acks, errors), ()) = tokio::join!(
        Client::send_until_acked(
            &mut a,
            0..n,
            Duration::from_millis(100),
            Duration::from_secs(4)
        ),
        freeze
    );

    // Publishes that timed out were reported as of unknown outcome, not as
    // "nothing stored" (`unavailable` is right only where nothing was sent:
    // no connection to send on).
    let codes: Vec<&str> = errors.iter().filter_map(|e| e["code"].as_str()).collect();
    assert!(codes.contains(&"outcome_unknown"), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(*c, "outcome_unknown" | "unavailable")),
        "{codes:?}"
    );
    // And counted, by outcome, on the node that refused them.
    for outcome in ["outcome_unknown", "unavailable"] {
        let sample = format!("roomcast_messages_not_published_total{{outcome=\"{outcome}\"}}");
        let told = codes.iter().filter(|c| **c == outcome).count() as f64;
        assert_eq!(nodes[0].metric(&sample).await, told, "{sample}");
    }
    // Every message is in history exactly once, at the offset its ack gave.
    let history = nodes[1]
        .get(&format!("/rooms/{room}/messages?limit=1000"))
        .await
        .json();
    let history = history.as_array().unwrap();
    let by_content: HashMap<&str, u64> = history
        .iter()
        .map(|m| {
            (
                m["content"].as_str().unwrap(),
                m["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(history.len(), n, "no message stored twice: {history:?}");
    assert_eq!(by_content.len(), n);
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(
            by_content[format!("msg {i}").as_str()],
            ack["offset"].as_u64().unwrap(),
            "the ack of a retry is the first result"
        );
    }
    // Bob, on the other node, got each message once, in order.
    let mut offsets = Vec::new();
    for f in drain(&mut b, Duration::from_secs(3)).await {
        if f["type"] == "message" {
            offsets.push(f["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(offsets, (1..=n as u64).collect::<Vec<_>>());
    assert!(
        nodes[0]
            .metric("roomcast_messages_deduplicated_total")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_makes_no_live_user_look_gone() {
    let mut redis = RedisServer::start_persistent().await;
    let nodes = cluster(&redis, 3, &[]).await;
    let room = nodes[0].room("r").await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let u = node.user(&format!("u{i}")).await;
        let (c, _, _) = Client::join(&node.ws_url(&format!("/ws/{room}/{u}"))).await;
        clients.push(c);
    }
    // Everyone has seen everyone join.
    for c in &mut clients {
        drain(c, Duration::from_millis(500)).await;
    }

    // Down for longer than the lease TTL (3 s): every lease lapses, as it
    // does when Redis restarts with its data.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    redis.restart().await;
    for node in &nodes {
        node.wait_ready_status(200, Duration::from_secs(20)).await;
    }
    // A sweep would come within a TTL and a sweep interval of the restart.
    for c in &mut clients {
        for f in drain(c, Duration::from_secs(2)).await {
            assert!(
                !matches!(f["type"].as_str(), Some("user_left" | "user_joined")),
                "presence flickered: {f}"
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let presence = nodes[2]
        .get(&format!("/rooms/{room}/presence"))
        .await
        .json();
    assert_eq!(presence["users"].as_array().unwrap().len(), 3, "{presence}");
    // The same sockets still chat.
    clients[0]
        .send_json(&json!({"content": "still here"}))
        .await;
    for c in &mut clients {
        let got = drain(c, Duration::from_secs(2)).await;
        assert!(
            !got.iter().any(|f| f["type"] == "user_left"),
            "presence flickered: {got:?}"
        );
        assert!(got.iter().any(|f| f["content"] == "still here"), "{got:?}");
    }
}

/// The presence service reads the key prefix under the edge's name: a
/// deployment that sets `ROOMCAST__REDIS__KEY_PREFIX` once, for both, has
/// its dead nodes swept.
#[tokio::test]
async fn the_presence_service_shares_the_edges_settings() {
    let redis = RedisServer::start().await;
    let prefix = [
        ("ROOMCAST__REDIS__KEY_PREFIX", "team-a"),
        ("ROOMCAST__PRESENCE__SWEEPER", "false"),
    ];
    let mut nodes = cluster(&redis, 2, &prefix).await;
    let url = redis.url();
    // As in Kubernetes: the edges' ConfigMap, production included.
    let presence = Edge::start_bin(
        "roomcast-presence",
        &[
            ("REDIS_URL", url.as_str()),
            prefix[0],
            ("ENVIRONMENT", "production"),
            ("METRICS_PORT", "9100"),
        ],
    )
    .await;
    presence.wait_ready().await;
    let (w, d, room) = (
        nodes[0].user("w").await,
        nodes[0].user("d").await,
        nodes[0].room("r").await,
    );
    let (mut watcher, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{w}"))).await;
    let (_doomed, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{d}"))).await;
    watcher.next_of("user_joined").await;
    nodes[1].kill9();
    let left = tokio::time::timeout(Duration::from_secs(15), watcher.next_of("user_left"))
        .await
        .expect("the presence service swept the dead node");
    assert_eq!(left["user_id"], d.as_str());
    assert!(presence.metric("roomcast_presence_swept_users_total").await >= 1.0);
    // A bad prefix stops it at start-up, naming the setting.
    let out = std::process::Command::new(roomcast_tests::binary("roomcast-presence"))
        .env_clear()
        .env("REDIS_URL", &url)
        .env("ROOMCAST__REDIS__KEY_PREFIX", "bad prefix")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis.key_prefix"));
}

/// Redis a set time away (a delaying proxy in front of it: no `tc netem`
/// here): a two-node cluster works the same, only later. Every message
/// reaches the other node once, in order; a publish costs at least the
/// round trip (a lower bound, so machine noise cannot fail it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_redis_five_milliseconds_away() {
    let redis = RedisServer::start().await;
    let delay = Duration::from_millis(5);
    let proxy = roomcast_tests::DelayProxy::start(redis.port, delay).await;
    let url = proxy.redis_url();
    let mut nodes = Vec::new();
    for id in ["far-0", "far-1"] {
        let e = Edge::start(&[("REDIS_URL", url.as_str()), ("NODE_ID", id)]).await;
        e.wait_ready().await;
        nodes.push(e);
    }
    // The proxy adds the delay both ways.
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    assert!(started.elapsed() >= delay * 2, "{:?}", started.elapsed());

    let room = nodes[0].room("far").await;
    let (a_id, b_id) = (nodes[0].user("a").await, nodes[1].user("b").await);
    let (mut a, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{a_id}"))).await;
    let (mut b, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{b_id}"))).await;
    a.next_of("user_joined").await;
    let mut slowest = Duration::ZERO;
    let mut fastest = Duration::MAX;
    for i in 0..20 {
        let sent = Instant::now();
        a.send_json(&json!({"content": format!("m{i}"), "client_id": i.to_string()}))
            .await;
        let ack = a.next_of("ack").await;
        let took = sent.elapsed();
        assert_eq!(ack["offset"], i + 1);
        (slowest, fastest) = (slowest.max(took), fastest.min(took));
    }
    assert!(
        fastest >= delay * 2,
        "a publish is a Redis round trip: {fastest:?}"
    );
    let mut got = Vec::new();
    while got.len() < 20 {
        let f = b.next_of("message").await;
        got.push(f["offset"].as_u64().unwrap());
    }
    assert_eq!(got, (1..=20).collect::<Vec<_>>());
    println!("redis {delay:?} away each way: publish ack {fastest:?} .. {slowest:?}");
}

/// One room whose stream cannot be read (its key holds the wrong type, as a
/// stand-in for any per-room failure) is refused alone: the node's pub/sub
/// session is not started over, and another room on the node chats on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rooms_broken_stream_does_not_reset_the_others() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 1, &[]).await;
    let node = &nodes[0];
    let (good, bad) = (node.room("good").await, node.room("bad").await);
    let (u1, u2, u3) = (
        node.user("u1").await,
        node.user("u2").await,
        node.user("u3").await,
    );
    let (mut a, _, _) = Client::join(&node.ws_url(&format!("/ws/{good}/{u1}"))).await;
    let (mut b, _, _) = Client::join(&node.ws_url(&format!("/ws/{good}/{u2}"))).await;
    a.next_of("user_joined").await;
    assert_eq!(
        redis.cli(&["SET", &format!("roomcast:log:{bad}"), "not a stream"]),
        "OK"
    );
    // Joining the broken room fails, for that socket only.
    let mut c = Client::connect(&node.ws_url(&format!("/ws/{bad}/{u3}"))).await;
    let closed = c.closed().await;
    assert_eq!(closed.code(), Some(1011), "{closed:?}");
    // The good room never noticed: same sockets, messages flow, no reconnect.
    for i in 0..5 {
        a.send_json(&json!({"content": format!("still {i}")})).await;
        assert_eq!(b.next_of("message").await["content"], format!("still {i}"));
    }
    assert_eq!(node.metric("roomcast_broker_reconnects_total").await, 0.0);
    assert_eq!(node.try_status("/ready").await, Some(200));
    assert_eq!(
        node.metric("roomcast_broker_room_read_failures_total")
            .await,
        6.0,
        "every read was tried before the room was refused"
    );
}

/// A room whose stream fails to read for a moment (here: its key holds the
/// wrong type until the test deletes it, once the node has seen a failure)
/// is retried alone: its joiner gets in, nobody else noticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_stream_failing_for_a_moment_is_retried_and_its_joiner_gets_in() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 1, &[]).await;
    let node = &nodes[0];
    let (room, user) = (node.room("flaky").await, node.user("u").await);
    let log = format!("roomcast:log:{room}");
    assert_eq!(redis.cli(&["SET", &log, "not a stream"]), "OK");
    let mut c = Client::connect(&node.ws_url(&format!("/ws/{room}/{user}"))).await;
    let failures = "roomcast_broker_room_read_failures_total";
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric(failures).await < 1.0 {
        assert!(Instant::now() < deadline, "the node never read the room");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(redis.cli(&["DEL", &log]), "1");
    let connected = c.next_json().await;
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(c.next_json().await["type"], "presence");
    assert!(
        node.metric(failures).await < 6.0,
        "it got in before giving up"
    );
    assert_eq!(node.metric("roomcast_broker_reconnects_total").await, 0.0);
}

/// A room whose stream read is slow (here: held in a proxy in front of
/// Redis until the test lets it go) holds up that room alone. While node A
/// waits for the slow room's first read, another room on A keeps getting
/// messages published on node B; the slow room's own message, published
/// meanwhile, waits for its read and arrives after it, once, in order.
/// Were the node's pub/sub session to await the read in its loop, the fast
/// room would get nothing until the release and this test would time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_in_one_room_does_not_hold_up_another() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 1, &[]).await;
    let b = &nodes[0];
    let (fast, slow) = (b.room("fast").await, b.room("slow").await);
    let mut users = Vec::new();
    for name in ["fa", "fb", "sa", "sb"] {
        users.push(b.user(name).await);
    }
    // Node A reaches Redis through a proxy that holds every request naming
    // the slow room's stream.
    let mut proxy =
        roomcast_tests::DelayProxy::holding(redis.port, &format!("roomcast:log:{slow}")).await;
    let url = proxy.redis_url();
    let a = Edge::start(&[("REDIS_URL", url.as_str()), ("NODE_ID", "held")]).await;
    a.wait_ready().await;

    let (mut fa, _, _) = Client::join(&a.ws_url(&format!("/ws/{fast}/{}", users[0]))).await;
    let (mut fb, _, _) = Client::join(&b.ws_url(&format!("/ws/{fast}/{}", users[1]))).await;
    let (mut sb, _, _) = Client::join(&b.ws_url(&format!("/ws/{slow}/{}", users[3]))).await;
    fa.next_of("user_joined").await;

    // A's first read of the slow room is held.
    let sa_url = a.ws_url(&format!("/ws/{slow}/{}?since=0", users[2]));
    let joining = tokio::spawn(async move { Client::join(&sa_url).await });
    proxy.wait_held().await;
    sb.send_json(&json!({"content": "slow 1"})).await;
    assert_eq!(sb.next_of("ack").await["offset"], 1);
    for i in 1..=5 {
        fb.send_json(&json!({"content": format!("fast {i}")})).await;
        let m = fa.next_of("message").await;
        assert_eq!(m["content"], format!("fast {i}"));
        assert_eq!(m["offset"], i);
    }
    assert!(!joining.is_finished(), "the slow room's read was held");

    proxy.release();
    let (mut sa, connected, _) = joining.await.unwrap();
    assert_eq!(connected["recovered"], true, "{connected}");
    // The message published while the read was held comes once, in order
    // (by the held live path or by recovery, never both), then the next.
    sb.send_json(&json!({"content": "slow 2"})).await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("slow 2") {
        let m = sa.next_of("message").await;
        got.push(m["content"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ["slow 1", "slow 2"]);
    assert_eq!(a.metric("roomcast_broker_reconnects_total").await, 0.0);
}
