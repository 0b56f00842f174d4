//! Redis high availability with Sentinel: three edges find the primary
//! through three sentinels, and when it is killed (`kill -9`) and its
//! replica promoted, they follow: `/ready` is 503 only while there is no
//! primary, publishes retried with their `client_id` are acknowledged on
//! the new one, and every acknowledged message reaches every member of its
//! room once, in order, and is in history.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use roomcast_tests::{Client, Edge, MASTER, RedisServer, Sentinel, sentinels_env};
use serde_json::Value;

const ROOMS: usize = 4;
const BEFORE: usize = 10;
const AFTER: usize = 10;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_follow_a_sentinel_failover_and_lose_nothing_acknowledged() {
    let mut primary = RedisServer::start().await;
    let replica = RedisServer::start_replica_of(&primary).await;
    let sentinels = Sentinel::start_group(3, &primary, 1).await;
    let env = sentinels_env(&sentinels);
    let mut edges = Vec::new();
    for i in 0..3 {
        let id = format!("sentinel-{i}");
        let e = Edge::start(&[
            ("REDIS_SENTINELS", env.as_str()),
            ("REDIS_SENTINEL_MASTER", MASTER),
            ("NODE_ID", id.as_str()),
            // Leases outlive the failover (see docs/deploy.md).
            ("ROOMCAST__PRESENCE__LEASE_TTL_MS", "15000"),
        ])
        .await;
        e.wait_ready().await;
        edges.push(e);
    }

    // Each room: a member on every edge, a publisher on one of them.
    let mut members = Vec::new();
    let mut publishers = Vec::new();
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let room = edges[0].room(&format!("ha-{r}")).await;
        let mut these = Vec::new();
        for (i, e) in edges.iter().enumerate() {
            let u = e.user(&format!("m{r}-{i}")).await;
            let (c, _, _) = Client::join(&e.ws_url(&format!("/ws/{room}/{u}"))).await;
            these.push(c);
        }
        let e = &edges[r % 3];
        let p = e.user(&format!("p{r}")).await;
        let (c, _, _) = Client::join(&e.ws_url(&format!("/ws/{room}/{p}"))).await;
        members.push(these);
        publishers.push(c);
        rooms.push(room);
    }

    let publish_all = |publishers: Vec<Client>, ids: std::ops::Range<usize>| async move {
        let tasks: Vec<_> = publishers
            .into_iter()
            .map(|mut c| {
                let ids = ids.clone();
                tokio::spawn(async move {
                    let (acks, errors) = Client::send_until_acked(
                        &mut c,
                        ids,
                        Duration::from_millis(20),
                        Duration::from_secs(3),
                    )
                    .await;
                    (c, acks, errors)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    };
    let done = publish_all(publishers, 0..BEFORE).await;
    let publishers: Vec<Client> = done.into_iter().map(|(c, _, _)| c).collect();

    // The replica has every write (the replica option of `ack` will wait
    // for this per message; here the test waits once), then the primary
    // dies with its sockets.
    let offset = |s: &RedisServer, field: &str| -> u64 {
        s.cli(&["INFO", "replication"])
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while offset(&replica, "slave_repl_offset") < offset(&primary, "master_repl_offset") {
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    primary.kill();
    let killed = Instant::now();

    // Publishing goes on through the outage; readiness tells the truth.
    let watch = {
        let e = Edge::attach(edges[0].port);
        tokio::spawn(async move {
            let mut saw_503 = false;
            loop {
                match e.try_status("/ready").await {
                    Some(503) => saw_503 = true,
                    Some(200) if saw_503 => return true,
                    _ => {}
                }
                if killed.elapsed() > Duration::from_secs(60) {
                    return saw_503;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let done = publish_all(publishers, BEFORE..BEFORE + AFTER).await;
    println!(
        "every publish acknowledged {:?} after the kill",
        killed.elapsed()
    );
    assert!(
        watch.await.unwrap(),
        "/ready went 503 for the outage, then 200"
    );
    assert_eq!(
        sentinels[0].primary_port(),
        Some(replica.port),
        "the replica was promoted"
    );

    for (r, (_, acks, errors)) in done.iter().enumerate() {
        assert_eq!(acks.len(), AFTER);
        println!(
            "room {r}: {} errors retried during the outage",
            errors.len()
        );
        let expected: Vec<String> = (0..BEFORE + AFTER).map(|i| format!("m-{i}")).collect();
        for (i, c) in members[r].iter_mut().enumerate() {
            let got = messages(c, BEFORE + AFTER).await;
            let ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
            assert_eq!(
                ids,
                expected.iter().collect::<Vec<_>>(),
                "room {r}, member on edge {i}: once each, in order"
            );
            let offsets: Vec<u64> = got.iter().map(|(_, o)| *o).collect();
            assert_eq!(offsets, (1..=(BEFORE + AFTER) as u64).collect::<Vec<_>>());
        }
        let history = edges[r % 3]
            .get(&format!("/rooms/{}/messages?limit=100", rooms[r]))
            .await
            .json();
        let stored: Vec<&str> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|m: &Value| m["client_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            stored,
            expected.iter().map(String::as_str).collect::<Vec<_>>()
        );
    }
    for e in &edges {
        assert_eq!(e.metric("roomcast_redis_primary_changes_total").await, 1.0);
        assert_eq!(e.metric("roomcast_history_rewinds_total").await, 0.0);
        assert_eq!(e.try_status("/ready").await, Some(200));
    }
}
