//! Redis high availability with Sentinel: three edges find the primary
//! through three sentinels, and when it is killed (`kill -9`) and a replica
//! promoted, they follow: `/ready` is 503 only while there is no primary,
//! publishes retried with their `client_id` are acknowledged on the new one.
//! With `redis.ack_replicas` every acknowledged message reaches every
//! member of its room once, in order, and is in history, though the kill
//! comes in the middle of the traffic; without it, writes the promoted
//! replica never got are detected, counted and their rooms resynced.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use roomcast_tests::{Client, Edge, MASTER, RedisServer, Sentinel, sentinels_env};
use serde_json::Value;

/// A primary, its replicas, three sentinels, three edges and the presence
/// service (the one sweeper: the edges' own are off); rooms each with a
/// member on every edge and a publisher on one of them.
struct Ha {
    presence: Edge,
    primary: RedisServer,
    replicas: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
    edges: Vec<Edge>,
    rooms: Vec<String>,
    members: Vec<Vec<Client>>,
    /// The members' user ids, the same way round.
    member_ids: Vec<Vec<String>>,
    publishers: Vec<Client>,
}

async fn ha(replicas: usize, rooms: usize, extra: &[(&str, &str)]) -> Ha {
    ha_with(None, replicas, rooms, extra).await
}

/// [`ha`] with Redis servers and sentinels that require `password` (the
/// edges are given it as `REDIS_PASSWORD` and `REDIS_SENTINEL_PASSWORD`).
async fn ha_with(
    password: Option<&str>,
    replicas: usize,
    rooms: usize,
    extra: &[(&str, &str)],
) -> Ha {
    let primary = match password {
        Some(p) => RedisServer::start_with_password(p).await,
        None => RedisServer::start().await,
    };
    let mut rs = Vec::new();
    for _ in 0..replicas {
        rs.push(RedisServer::start_replica_of(&primary).await);
    }
    let sentinels = Sentinel::start_group(3, &primary, replicas).await;
    let env = sentinels_env(&sentinels);
    let mut shared = vec![
        ("REDIS_SENTINELS", env.as_str()),
        ("REDIS_SENTINEL_MASTER", MASTER),
        // Leases outlive the failover (see docs/deploy.md).
        ("ROOMCAST__PRESENCE__LEASE_TTL_MS", "8000"),
    ];
    if let Some(p) = password {
        shared.push(("REDIS_PASSWORD", p));
        shared.push(("REDIS_SENTINEL_PASSWORD", p));
    }
    let presence = Edge::start_bin("roomcast-presence", &shared).await;
    presence.wait_ready().await;
    let mut edges = Vec::new();
    for i in 0..3 {
        let id = format!("sentinel-{i}");
        let mut vars = shared.clone();
        vars.push(("NODE_ID", id.as_str()));
        vars.push(("ROOMCAST__PRESENCE__SWEEPER", "false"));
        vars.extend_from_slice(extra);
        let e = Edge::start(&vars).await;
        e.wait_ready().await;
        edges.push(e);
    }
    let (mut members, mut publishers, mut names) = (Vec::new(), Vec::new(), Vec::new());
    let mut member_ids = Vec::new();
    for r in 0..rooms {
        let room = edges[0].room(&format!("ha-{r}")).await;
        let (mut these, mut ids) = (Vec::new(), Vec::new());
        for (i, e) in edges.iter().enumerate() {
            let u = e.user(&format!("m{r}-{i}")).await;
            let (c, _, _) = Client::join(&e.ws_url(&format!("/ws/{room}/{u}"))).await;
            these.push(c);
            ids.push(u);
        }
        member_ids.push(ids);
        let e = &edges[r % 3];
        let p = e.user(&format!("p{r}")).await;
        let (c, _, _) = Client::join(&e.ws_url(&format!("/ws/{room}/{p}"))).await;
        members.push(these);
        publishers.push(c);
        names.push(room);
    }
    Ha {
        presence,
        primary,
        replicas: rs,
        sentinels,
        edges,
        rooms: names,
        members,
        member_ids,
        publishers,
    }
}

/// Every publisher sends `ids` at once (one task each), each message
/// retried with its `client_id` until acknowledged.
async fn publish_all(
    publishers: Vec<Client>,
    ids: std::ops::Range<usize>,
    gap: Duration,
) -> Vec<(Client, Vec<Value>, Vec<Value>)> {
    let tasks: Vec<_> = publishers
        .into_iter()
        .map(|mut c| {
            let ids = ids.clone();
            tokio::spawn(async move {
                let (acks, errors) =
                    Client::send_until_acked(&mut c, ids, gap, Duration::from_secs(3)).await;
                (c, acks, errors)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Reads `c`'s messages until it has `n`; their client ids and offsets.
async fn messages(c: &mut Client, n: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let f = c
            .next_json_within(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("only {} of {n} messages came: {got:?}", got.len()));
        if f["type"] == "message" {
            got.push((
                f["client_id"].as_str().unwrap_or_default().to_owned(),
                f["offset"].as_u64().unwrap(),
            ));
        }
    }
    got
}

/// Polls `/ready` of `edge` from now on: true once it was 503 and then 200.
fn watch_ready(edge: &Edge) -> tokio::task::JoinHandle<bool> {
    let e = Edge::attach(edge.port);
    tokio::spawn(async move {
        let started = Instant::now();
        let mut saw_503 = false;
        loop {
            match e.try_status("/ready").await {
                Some(503) => saw_503 = true,
                Some(200) if saw_503 => return true,
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(60) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_replicas_a_failover_under_traffic_loses_nothing_acknowledged() {
    const ROOMS: usize = 4;
    const N: usize = 40;
    let mut ha = ha(2, ROOMS, &[("ROOMCAST__REDIS__ACK_REPLICAS", "1")]).await;
    // Kill the primary in the middle of the traffic.
    let publishing = start_publishing(&mut ha, N).await;
    let ready = watch_ready(&ha.edges[0]);
    ha.primary.kill();
    let killed = Instant::now();
    let done = publishing.await.unwrap();
    println!(
        "every publish acknowledged {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        ready.await.unwrap(),
        "/ready went 503 for the outage, then 200"
    );
    let promoted = ha.sentinels[0].primary_port();
    assert!(
        ha.replicas.iter().any(|r| Some(r.port) == promoted),
        "a replica was promoted: {promoted:?}"
    );

    every_ack_delivered_once_and_stored(&mut ha, &done, N).await;
    every_edge_followed_and_lost_nothing(&ha).await;

    // The presence service followed too, and on the new primary a killed
    // edge leaves no ghost: its member of room 1 is announced left to the
    // others once its lease lapses (the service is the only sweeper).
    ha.presence.wait_ready().await;
    let gone = ha.member_ids[1][2].clone();
    ha.edges[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f = ha.members[1][0]
            .next_json_within(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the killed edge's user is announced left");
        if f["type"] == "user_left" && f["user_id"] == gone.as_str() {
            assert_eq!(f["room_id"], ha.rooms[1].as_str());
            break;
        }
    }
}

/// A failover ordered through Sentinel (`SENTINEL FAILOVER`, as a managed
/// Redis does for maintenance) leaves the old primary running, demoted to a
/// replica: the edges' connections to it stay open and its answers turn to
/// `READONLY`. The edges must move to the new primary rather than keep
/// writing there: every publish retried with its `client_id` is
/// acknowledged, delivered once in order and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_primary_that_stays_up_is_left_for_the_new_one() {
    const ROOMS: usize = 2;
    const N: usize = 30;
    let mut ha = ha(1, ROOMS, &[("ROOMCAST__REDIS__ACK_REPLICAS", "1")]).await;
    let publishing = start_publishing(&mut ha, N).await;
    assert_eq!(ha.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER]), "OK");
    let done = publishing.await.unwrap();
    assert_eq!(ha.sentinels[0].primary_port(), Some(ha.replicas[0].port));
    // The old primary is up, and a replica now (with ack_replicas=1 it is
    // what lets the new primary's publishes be acknowledged).
    assert!(ha.primary.cli(&["ROLE"]).starts_with("slave"));
    every_ack_delivered_once_and_stored(&mut ha, &done, N).await;
    every_edge_followed_and_lost_nothing(&ha).await;
}

/// Every publisher sends messages `0..n`, 50 ms apart, in the background;
/// returns once room 0 has a few stored on the primary, while every
/// publisher still has most to send (a failover now comes mid-traffic).
async fn start_publishing(
    ha: &mut Ha,
    n: usize,
) -> tokio::task::JoinHandle<Vec<(Client, Vec<Value>, Vec<Value>)>> {
    let publishers = std::mem::take(&mut ha.publishers);
    let publishing = tokio::spawn(publish_all(publishers, 0..n, Duration::from_millis(50)));
    let seq = format!("roomcast:seq:{}", ha.rooms[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ha.primary.cli(&["GET", &seq]).parse::<usize>().unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "nothing was published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publishing
}

/// Every edge followed the failover, found no lost write, and is ready.
async fn every_edge_followed_and_lost_nothing(ha: &Ha) {
    for e in &ha.edges {
        // At least one: under load the sentinels may fail over twice (a
        // first attempt timing out), and each move is counted.
        let moves = e.metric("roomcast_redis_primary_changes_total").await;
        assert!(
            moves >= 1.0,
            "edge {} followed the failover: {moves}",
            e.port
        );
        assert_eq!(e.metric("roomcast_history_rewinds_total").await, 0.0);
        assert_eq!(e.try_status("/ready").await, Some(200));
    }
}

/// Each room's publisher had every one of `n` messages acknowledged; each
/// member of the room got each once, in order, at offsets 1..=n, and the
/// room's history holds them.
async fn every_ack_delivered_once_and_stored(
    ha: &mut Ha,
    done: &[(Client, Vec<Value>, Vec<Value>)],
    n: usize,
) {
    let expected: Vec<String> = (0..n).map(|i| format!("m-{i}")).collect();
    for (r, (_, acks, errors)) in done.iter().enumerate() {
        assert_eq!(acks.len(), n);
        println!("room {r}: {} errors retried", errors.len());
        for (i, c) in ha.members[r].iter_mut().enumerate() {
            let got = messages(c, n).await;
            let ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
            assert_eq!(
                ids,
                expected.iter().collect::<Vec<_>>(),
                "room {r}, member on edge {i}: every acked message once, in order"
            );
            let offsets: Vec<u64> = got.iter().map(|(_, o)| *o).collect();
            assert_eq!(offsets, (1..=n as u64).collect::<Vec<_>>());
        }
        let history = ha.edges[r % 3]
            .get(&format!("/rooms/{}/messages?limit=100", ha.rooms[r]))
            .await
            .json();
        let stored: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["client_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            stored,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
}

/// Without the option an ack means "on the primary": writes made while
/// the replica lagged (here: its link to the primary cut, by pointing it at
/// a port where nothing listens) die with the primary. The edges find the
/// room's stream behind what they delivered, count it and make the room's
/// clients resync, instead of silently dropping the new messages that
/// reuse those offsets. (Here the Redis servers and the sentinels require
/// a password, as managed ones do.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_it_writes_lost_in_a_failover_are_detected_and_resynced() {
    let mut ha = ha_with(Some("s3cret:/@"), 1, 1, &[]).await;
    let publishers = std::mem::take(&mut ha.publishers);
    let publishers: Vec<Client> = publish_all(publishers, 0..5, Duration::ZERO)
        .await
        .into_iter()
        .map(|(c, _, _)| c)
        .collect();
    for c in &mut ha.members[0] {
        assert_eq!(messages(c, 5).await.len(), 5);
    }
    let seq = format!("roomcast:seq:{}", ha.rooms[0]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ha.replicas[0].cli(&["GET", &seq]) != "5" {
        assert!(
            Instant::now() < deadline,
            "the replica never got the first five"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The replica loses its primary (it keeps its data); three more are
    // acked by the primary alone and delivered; then the primary dies and
    // the stale replica takes over.
    let nowhere = roomcast_tests::free_port().to_string();
    assert_eq!(
        ha.replicas[0].cli(&["REPLICAOF", "127.0.0.1", &nowhere]),
        "OK"
    );
    let done = publish_all(publishers, 5..8, Duration::ZERO).await;
    assert_eq!(done[0].1.len(), 3, "acked by the primary");
    for c in &mut ha.members[0] {
        assert_eq!(messages(c, 3).await.len(), 3);
    }
    ha.primary.kill();

    // Every member is told to resync (1012), on every edge.
    for c in &mut ha.members[0] {
        let closed = tokio::time::timeout(
            Duration::from_secs(60),
            c.closed_within(Duration::from_secs(60)),
        )
        .await
        .expect("members are told to resync");
        assert_eq!(closed.code(), Some(1012), "{closed:?}");
    }
    for e in &ha.edges {
        assert_eq!(e.metric("roomcast_history_rewinds_total").await, 1.0);
        assert_eq!(
            e.metric("roomcast_redis_primary_changes_total").await,
            1.0,
            "edge {} followed one failover",
            e.port
        );
    }
    // History holds what the promoted replica had.
    let history = ha.edges[0]
        .get(&format!("/rooms/{}/messages?limit=100", ha.rooms[0]))
        .await
        .json();
    assert_eq!(history.as_array().unwrap().len(), 5);
}

/// With `redis.ack_replicas` a message no replica has is neither
/// acknowledged nor shown: with the replica frozen, the sender gets
/// `outcome_unknown` and the room hears nothing; once the replica is back,
/// the retry with the same `client_id` is acknowledged with the first
/// offset and the room gets the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_replica_confirmed_is_not_acked_nor_shown() {
    let primary = RedisServer::start().await;
    let replica = RedisServer::start_replica_of(&primary).await;
    let url = primary.url();
    let edge = Edge::start(&[
        ("REDIS_URL", url.as_str()),
        ("ROOMCAST__REDIS__ACK_REPLICAS", "1"),
        ("ROOMCAST__REDIS__ACK_TIMEOUT_MS", "300"),
    ])
    .await;
    edge.wait_ready().await;
    let room = edge.room("durable").await;
    let (a, b) = (edge.user("a").await, edge.user("b").await);
    let (mut sender, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{a}"))).await;
    let (mut member, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{b}"))).await;
    let send = |id: &str| serde_json::json!({"content": id, "client_id": id});

    sender.send_json(&send("one")).await;
    assert_eq!(sender.next_of("ack").await["offset"], 1);
    assert_eq!(member.next_of("message").await["offset"], 1);

    replica.signal("STOP");
    sender.send_json(&send("two")).await;
    let refused = sender.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["client_id"].as_str()),
        (Some("outcome_unknown"), Some("two")),
        "{refused}"
    );
    member.expect_silence(Duration::from_millis(500)).await;

    replica.signal("CONT");
    sender.send_json(&send("two")).await;
    assert_eq!(sender.next_of("ack").await["offset"], 2, "the first offset");
    sender.send_json(&send("three")).await;
    assert_eq!(sender.next_of("ack").await["offset"], 3);
    let got = messages(&mut member, 2).await;
    assert_eq!(got, [("two".to_owned(), 2), ("three".to_owned(), 3)]);
}
