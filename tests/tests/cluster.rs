//! Several edge processes on one Redis behave as one chat server: delivery
//! across nodes in one offset order, shared users and rooms, presence that
//! is the same everywhere, joined/left once per user across nodes, recovery
//! on another node, a killed node's users announced left, and a Redis
//! restart that the same sockets live through.

use std::time::{Duration, Instant};

use roomcast_tests::{Client, Closed, Edge, RedisServer, cluster};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(400);

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn messages_reach_every_node_in_one_offset_order() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 3, &[]).await;
    // A user made on node 0 and a room made on node 1 are usable on node 2.
    let alice = nodes[0].user("alice").await;
    let room = nodes[1].room("general").await;
    assert_eq!(
        nodes[2].get(&format!("/users/{alice}")).await.json()["username"],
        "alice"
    );
    assert_eq!(nodes[2].get("/rooms").await.json()[0]["id"], room.as_str());
    let r = nodes[2]
        .post(&format!("/rooms/{room}/join"), &json!({"user_id": alice}))
        .await;
    assert_eq!(r.status, 200);

    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let u = node.user(&format!("user{i}")).await;
        let (c, connected, _) = Client::join(&node.ws_url(&format!("/ws/{room}/{u}"))).await;
        assert_eq!(connected["node_id"], format!("node-{i}"));
        clients.push(c);
    }
    // Everyone sends 10 messages at once.
    let per = 10;
    for round in 0..per {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send_json(
                &json!({"content": format!("{i}-{round}"), "client_id": format!("{i}-{round}")}),
            )
            .await;
        }
    }
    let total = per * clients.len();
    let mut orders = Vec::new();
    for c in &mut clients {
        let mut got = Vec::new();
        while got.len() < total {
            let f = c.next_json().await;
            if f["type"] == "message" {
                got.push(f);
            }
        }
        c.expect_silence(QUIET).await;
        orders.push(got);
    }
    let expected: Vec<u64> = (1..=total as u64).collect();
    for got in &orders {
        assert_eq!(
            offsets(got),
            expected,
            "contiguous, in offset order, no duplicate"
        );
        assert_eq!(
            got, &orders[0],
            "every node delivers the same messages in the same order"
        );
    }
    // History agrees on every node.
    for node in &nodes {
        let h = node
            .get(&format!("/rooms/{room}/messages?limit=1000"))
            .await
            .json();
        assert_eq!(h.as_array().unwrap(), &orders[0]);
    }
    // Presence is the same on every node, over REST and in the frame.
    let p0 = nodes[0]
        .get(&format!("/rooms/{room}/presence"))
        .await
        .json();
    assert_eq!(p0["users"].as_array().unwrap().len(), 3);
    for node in &nodes[1..] {
        assert_eq!(
            node.get(&format!("/rooms/{room}/presence")).await.json(),
            p0
        );
    }
    let (_, _, frame) = Client::join(&nodes[2].ws_url(&format!("/ws/{room}/{alice}"))).await;
    assert_eq!(frame["users"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_second_tab_on_another_node_neither_joins_nor_leaves() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 3, &[]).await;
    let (watcher_id, bob, room) = (
        nodes[0].user("w").await,
        nodes[0].user("bob").await,
        nodes[0].room("r").await,
    );
    let (mut watcher, _, _) =
        Client::join(&nodes[2].ws_url(&format!("/ws/{room}/{watcher_id}"))).await;
    let (mut tab_a, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{bob}"))).await;
    let joined = watcher.next_json().await;
    assert_eq!(
        (joined["type"].as_str(), joined["user_id"].as_str()),
        (Some("user_joined"), Some(bob.as_str()))
    );
    let (mut tab_b, _, presence) =
        Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{bob}"))).await;
    assert_eq!(presence["users"].as_array().unwrap().len(), 2);
    watcher.expect_silence(QUIET).await;
    tab_a.ws.close(None).await.unwrap();
    watcher.expect_silence(QUIET).await;
    // The second tab still chats.
    tab_b.send_json(&json!({"content": "still here"})).await;
    assert_eq!(watcher.next_of("message").await["content"], "still here");
    tab_b.ws.close(None).await.unwrap();
    let left = watcher.next_json().await;
    assert_eq!(
        (left["type"].as_str(), left["user_id"].as_str()),
        (Some("user_left"), Some(bob.as_str()))
    );
    watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn recovery_with_since_on_another_node() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2, &[]).await;
    let (alice, bob, room) = (
        nodes[0].user("a").await,
        nodes[0].user("b").await,
        nodes[0].room("r").await,
    );
    let (mut a, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{alice}"))).await;
    for i in 1..=6 {
        a.send_json(&json!({"content": format!("m{i}")})).await;
        assert_eq!(a.next_of("ack").await["offset"], i);
    }
    let (mut b, connected, _) =
        Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{bob}?since=2"))).await;
    assert_eq!(
        (
            connected["recovered"].as_bool(),
            connected["offset"].as_u64()
        ),
        (Some(true), Some(6))
    );
    let mut replayed = Vec::new();
    for _ in 3..=6 {
        replayed.push(b.next_json().await);
    }
    assert_eq!(offsets(&replayed), [3, 4, 5, 6]);
    a.send_json(&json!({"content": "live"})).await;
    assert_eq!(
        b.next_of("message").await["offset"],
        7,
        "no gap, no duplicate at the seam"
    );
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_killed_nodes_users_are_announced_left_by_the_presence_service() {
    let redis = RedisServer::start().await;
    // The edges do not sweep; the presence service does.
    let nodes = cluster(&redis, 2, &[("ROOMCAST__PRESENCE__SWEEPER", "false")]).await;
    let url = redis.url();
    let presence = Edge::start_bin("roomcast-presence", &[("REDIS_URL", url.as_str())]).await;
    presence.wait_ready().await;
    let (watcher_id, doomed_user, room) = (
        nodes[0].user("w").await,
        nodes[0].user("d").await,
        nodes[0].room("r").await,
    );
    let (mut watcher, _, _) =
        Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{watcher_id}"))).await;
    let mut nodes = nodes;
    let (_doomed, _, _) =
        Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{doomed_user}"))).await;
    assert_eq!(watcher.next_json().await["type"], "user_joined");

    let killed_at = Instant::now();
    nodes[1].kill9();
    let left = watcher
        .next_json_within(Duration::from_secs(10))
        .await
        .expect("user_left within 10 s");
    let took = killed_at.elapsed();
    assert_eq!(
        (left["type"].as_str(), left["user_id"].as_str()),
        (Some("user_left"), Some(doomed_user.as_str()))
    );
    eprintln!("ghost cleanup: user_left {took:?} after kill -9");
    assert!(
        took < Duration::from_secs(5),
        "announced within the 5 s bound, took {took:?}"
    );
    let users = nodes[0]
        .get(&format!("/rooms/{room}/presence"))
        .await
        .json()["users"]
        .clone();
    assert_eq!(users, json!([{"user_id": watcher_id, "username": "w"}]));
    watcher.expect_silence(QUIET).await;
    let m = presence.get("/metrics").await.body;
    assert!(m.contains("roomcast_presence_swept_users_total 1"), "{m}");
    assert!(m.contains("roomcast_presence_online_users 1"), "{m}");
}

/// Reads `c` until a frame of type `kind`, recording the offsets of the
/// messages that come before it.
async fn until(c: &mut Client, kind: &str, seen: &mut Vec<u64>) -> Value {
    loop {
        let f = c.next_json().await;
        if f["type"] == "message" {
            seen.push(f["offset"].as_u64().unwrap());
        }
        if f["type"] == kind {
            return f;
        }
    }
}

#[tokio::test]
async fn the_same_sockets_live_through_a_redis_restart() {
    let mut redis = RedisServer::start_persistent().await;
    let nodes = cluster(&redis, 2, &[]).await;
    let (alice, bob, room) = (
        nodes[0].user("a").await,
        nodes[0].user("b").await,
        nodes[0].room("r").await,
    );
    let (mut a, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{alice}"))).await;
    let (mut b, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{bob}"))).await;
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    until(&mut a, "user_joined", &mut seen_a).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        a.send_json(&json!({"content": format!("before {i}")}))
            .await;
        acked.push(
            until(&mut a, "ack", &mut seen_a).await["offset"]
                .as_u64()
                .unwrap(),
        );
    }

    redis.kill();
    for node in &nodes {
        node.wait_ready_status(503, Duration::from_secs(10)).await;
    }
    // While Redis is down nothing is acknowledged, and the sender is told:
    // `unavailable` (nothing sent) or, when the request met a connection that
    // broke under it, `outcome_unknown` (the node cannot tell whether it left).
    a.send_json(&json!({"content": "during", "client_id": "lost"}))
        .await;
    let err = until(&mut a, "error", &mut seen_a).await;
    assert!(
        matches!(
            err["code"].as_str(),
            Some("unavailable" | "outcome_unknown")
        ),
        "{err}"
    );
    assert_eq!(err["client_id"], "lost");

    redis.restart().await;
    for node in &nodes {
        node.wait_ready_status(200, Duration::from_secs(20)).await;
    }
    for i in 0..3 {
        b.send_json(&json!({"content": format!("after {i}")})).await;
        acked.push(
            until(&mut b, "ack", &mut seen_b).await["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(
        acked,
        [1, 2, 3, 4, 5, 6],
        "offsets continue across the restart"
    );
    // Both sockets got every acknowledged message exactly once, in order.
    for (c, seen) in [(&mut a, &mut seen_a), (&mut b, &mut seen_b)] {
        while let Some(f) = c.next_json_within(Duration::from_secs(2)).await {
            if f["type"] == "message" {
                seen.push(f["offset"].as_u64().unwrap());
            }
        }
        assert_eq!(*seen, acked);
    }
    for node in &nodes {
        assert!(node.metric("roomcast_broker_reconnects_total").await >= 1.0);
    }
}

#[tokio::test]
async fn messages_published_while_a_subscription_is_down_are_backfilled() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2, &[("PUBLISH_API_KEY", "server-key-123456")]).await;
    let (bob, room) = (nodes[1].user("b").await, nodes[0].room("r").await);
    let (mut b, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{bob}"))).await;
    // Cut every pub/sub connection; publishes (through pooled connections)
    // go on while the nodes reconnect.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let body = json!({"content": "x"}).to_string();
    for _ in 0..5 {
        let r = nodes[0]
            .request(
                "POST",
                &format!("/rooms/{room}/messages"),
                &[("authorization", "Bearer server-key-123456")],
                Some(&body),
            )
            .await;
        assert_eq!(r.status, 202);
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(b.next_of("message").await);
    }
    assert_eq!(offsets(&got), [1, 2, 3, 4, 5]);
    b.expect_silence(QUIET).await;
    assert!(nodes[1].metric("roomcast_history_backfilled_total").await >= 1.0);
}

#[tokio::test]
async fn a_redis_that_lost_its_data_makes_clients_resync() {
    // No persistence: a restart loses history, presence and leases.
    let mut redis = RedisServer::start().await;
    let nodes = cluster(
        &redis,
        2,
        &[
            ("ENVIRONMENT", "production"),
            ("ALLOW_UNAUTHENTICATED", "true"),
        ],
    )
    .await;
    let (mut a, first, _) = Client::join(&nodes[0].ws_url("/ws/resync/alice")).await;
    let (mut b, _, _) = Client::join(&nodes[1].ws_url("/ws/resync/bob")).await;
    let mut seen = Vec::new();
    for i in 1..=3 {
        a.send_json(&json!({"content": format!("m{i}")})).await;
        seen.push(
            until(&mut a, "ack", &mut Vec::new()).await["offset"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(seen, [1, 2, 3]);
    let old_epoch = first["epoch"].as_str().unwrap().to_owned();

    redis.restart().await;
    // Both nodes find their presence lease gone and tell their clients to
    // reconnect and resynchronize.
    for c in [&mut a, &mut b] {
        match c.closed().await {
            Closed::Code(code, reason) => assert_eq!(
                (code, reason.as_str()),
                (1012, "resync; reconnect with since")
            ),
            other => panic!("expected 1012, got {other:?}"),
        }
    }
    for node in &nodes {
        node.wait_ready_status(200, Duration::from_secs(20)).await;
    }
    let (mut a, ca, _) = Client::join(&nodes[0].ws_url("/ws/resync/alice?since=3")).await;
    assert_eq!(
        ca["recovered"], false,
        "the history it asks for is gone: refetch"
    );
    assert_ne!(
        ca["epoch"].as_str().unwrap(),
        old_epoch,
        "a new epoch says offsets restarted"
    );
    let (mut b, _, presence) = Client::join(&nodes[1].ws_url("/ws/resync/bob?since=3")).await;
    assert_eq!(
        presence["users"].as_array().unwrap().len(),
        2,
        "presence rebuilt by the reconnects"
    );
    a.send_json(&json!({"content": "fresh start"})).await;
    let m = b.next_of("message").await;
    assert_eq!(
        (m["content"].as_str(), m["offset"].as_u64()),
        (Some("fresh start"), Some(1))
    );
}

#[tokio::test]
async fn a_disconnect_during_a_redis_outage_leaves_no_ghost() {
    let mut redis = RedisServer::start_persistent().await;
    let nodes = cluster(&redis, 2, &[]).await;
    let (w, v, room) = (
        nodes[0].user("w").await,
        nodes[0].user("v").await,
        nodes[0].room("r").await,
    );
    let (mut watcher, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{w}"))).await;
    let (mut victim, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{v}"))).await;
    assert_eq!(watcher.next_json().await["type"], "user_joined");

    redis.kill();
    // The victim leaves while its node cannot update presence.
    victim.ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;

    // Once Redis is back, the node reconciles what presence says about its
    // connections with what it has: the victim is announced left, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let f = watcher
            .next_json_within(deadline - Instant::now())
            .await
            .expect("user_left within 10 s");
        if f["type"] == "user_left" {
            break f;
        }
    };
    assert_eq!(left["user_id"], v.as_str());
    let users = nodes[0]
        .get(&format!("/rooms/{room}/presence"))
        .await
        .json()["users"]
        .clone();
    assert_eq!(users, json!([{"user_id": w, "username": "w"}]));
    watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_frozen_node_is_swept_and_its_clients_come_back() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2, &[]).await;
    let (w, v, room) = (
        nodes[0].user("w").await,
        nodes[0].user("v").await,
        nodes[0].room("r").await,
    );
    let (mut watcher, _, _) = Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{w}"))).await;
    let (mut victim, _, _) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{v}"))).await;
    assert_eq!(watcher.next_json().await["type"], "user_joined");

    // Frozen (a stuck process, a partition): it stops renewing its lease,
    // and the sweeper on the other node announces its user gone.
    nodes[1].signal("STOP");
    let left = watcher
        .next_json_within(Duration::from_secs(10))
        .await
        .expect("user_left while frozen");
    assert_eq!(
        (left["type"].as_str(), left["user_id"].as_str()),
        (Some("user_left"), Some(v.as_str()))
    );

    // Thawed, it finds its lease lost and asks its clients to resync, so
    // presence is rebuilt instead of left wrong.
    nodes[1].signal("CONT");
    match victim.closed().await {
        Closed::Code(code, _) => assert_eq!(code, 1012),
        other => panic!("expected 1012, got {other:?}"),
    }
    let (_back, _, presence) = Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{v}"))).await;
    assert_eq!(presence["users"].as_array().unwrap().len(), 2);
    let joined = watcher.next_of("user_joined").await;
    assert_eq!(joined["user_id"], v.as_str());
}

/// Readiness is the node's real work, not just pub/sub: a Redis that still
/// relays publishes but refuses writes (here `min-replicas-to-write` with no
/// replica; the same holds while it loads its dataset or is out of memory)
/// makes the node not ready, and it is ready again once writes are accepted.
#[tokio::test]
async fn a_redis_that_refuses_writes_makes_the_node_not_ready() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 1, &[]).await;
    redis.cli(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
    assert_eq!(
        redis.cli(&["PUBLISH", "roomcast:probe", "x"]).trim(),
        "0",
        "publishes still go through"
    );
    nodes[0]
        .wait_ready_status(503, Duration::from_secs(10))
        .await;
    redis.cli(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
    nodes[0]
        .wait_ready_status(200, Duration::from_secs(10))
        .await;
}
