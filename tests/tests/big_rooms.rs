//! Rooms of thousands: above `presence.summary_above` members a newcomer
//! gets the count and the first page, joins and leaves reach the others as
//! coalesced `presence_diff` frames, and below it the frames stay exact; on
//! the embedded backend and across two nodes on Redis. The full list is
//! paged over REST, for a room of 5,000.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use roomcast_tests::{Client, Edge, RedisServer, cluster};
use serde_json::{Value, json};

/// A room summarised above 3 members, pages of 2, diffs of at most 2 names
/// every 100 ms.
const SMALL_SUMMARY: &[(&str, &str)] = &[
    ("ALLOW_JOIN_AUTO_USERS", "true"),
    ("ROOMCAST__PRESENCE__SUMMARY_ABOVE", "3"),
    ("ROOMCAST__PRESENCE__SUMMARY_PAGE", "2"),
    ("ROOMCAST__PRESENCE__DIFF_MAX", "2"),
    ("ROOMCAST__PRESENCE__DIFF_INTERVAL_MS", "100"),
];

fn url(edge: &Edge, room: &str, user: &str) -> String {
    edge.ws_url(&format!(
        "/ws/{room}/{user}?username={}",
        user.to_uppercase()
    ))
}

fn users(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list of users: {v}"))
        .iter()
        .map(|u| u["user_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Applies `watcher`'s presence frames to `online` until it equals
/// `expected` (diffs may come split over several flushes); every frame
/// must be a `presence_diff` (no exact join/leave in a summarised room).
/// A diff that `omitted` changes is followed, as a client would, by reading
/// the list over REST from `edge`. Returns the last diff's count.
async fn diffs_until(
    watcher: &mut Client,
    edge: &Edge,
    room: &str,
    online: &mut BTreeSet<String>,
    expected: &[&str],
) -> u64 {
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    let mut count = 0;
    while *online != expected {
        let f = watcher.next_json().await;
        assert_eq!(f["type"], "presence_diff", "{f}");
        for u in users(&f["joins"]) {
            online.insert(u);
        }
        for u in users(&f["leaves"]) {
            online.remove(&u);
        }
        count = f["count"].as_u64().unwrap();
        if f.get("omitted").is_some() {
            let whole = edge.get(&format!("/rooms/{room}/presence")).await.json();
            *online = users(&whole["users"]).into_iter().collect();
        }
    }
    count
}

/// The scenario, on `a` and `b` (the same node on the embedded backend).
async fn summarised_above_the_threshold_exact_below(a: &Edge, b: &Edge) {
    let room = a.room("big").await;
    // Three members: exact frames, as the first frontends expect.
    let (mut u1, _, p) = Client::join(&url(a, &room, "u1")).await;
    assert_eq!(
        p,
        json!({"type":"presence","room_id":room,"users":[{"user_id":"u1","username":"U1"}]})
    );
    let (u2, _, _) = Client::join(&url(b, &room, "u2")).await;
    let (u3, _, p) = Client::join(&url(a, &room, "u3")).await;
    assert_eq!(users(&p["users"]), ["u1", "u2", "u3"]);
    assert!(
        p.get("count").is_none(),
        "a small room's presence is whole: {p}"
    );
    for u in ["u2", "u3"] {
        let f = u1.next_json().await;
        assert_eq!(
            (f["type"].as_str(), f["user_id"].as_str()),
            (Some("user_joined"), Some(u))
        );
    }

    // The fourth makes the room summarised: the newcomer gets a page and
    // the count, the others a diff.
    let (_u4, _, p) = Client::join(&url(b, &room, "u4")).await;
    assert_eq!(users(&p["users"]), ["u1", "u2"]);
    assert_eq!(p["count"], 4);
    let mut online: BTreeSet<String> = ["u1", "u2", "u3"].map(String::from).into();
    assert_eq!(
        diffs_until(&mut u1, a, &room, &mut online, &["u1", "u2", "u3", "u4"]).await,
        4
    );

    // Several changes from both nodes reach the watcher as diffs.
    let (u5, _, p) = Client::join(&url(b, &room, "u5")).await;
    assert_eq!(p["count"], 5);
    drop(u2);
    drop(u3);
    assert_eq!(
        diffs_until(&mut u1, a, &room, &mut online, &["u1", "u4", "u5"]).await,
        3
    );

    // The full list, paged over REST; the contract's shape without paging.
    let page = a
        .get(&format!("/rooms/{room}/presence?limit=2"))
        .await
        .json();
    assert_eq!(
        page,
        json!({"room_id":room,"users":[{"user_id":"u1","username":"U1"},{"user_id":"u4","username":"U4"}],
               "count":3,"next_after":"u4"})
    );
    let page = b
        .get(&format!("/rooms/{room}/presence?limit=2&after=u4"))
        .await
        .json();
    assert_eq!(
        (users(&page["users"]), page["next_after"].clone()),
        (vec!["u5".to_owned()], Value::Null)
    );
    let whole = b.get(&format!("/rooms/{room}/presence")).await.json();
    assert_eq!(users(&whole["users"]), ["u1", "u4", "u5"]);
    assert!(whole.get("count").is_none(), "{whole}");
    let bad = a.get(&format!("/rooms/{room}/presence?limit=0")).await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    // Back at the threshold, the room is exact again: the next leave is a
    // `user_left` (the one that brought it there was still a diff).
    let (u6, _, p) = Client::join(&url(a, &room, "u6")).await;
    assert_eq!(p["count"], 4);
    assert_eq!(
        diffs_until(&mut u1, a, &room, &mut online, &["u1", "u4", "u5", "u6"]).await,
        4
    );
    drop(u6);
    assert_eq!(
        diffs_until(&mut u1, a, &room, &mut online, &["u1", "u4", "u5"]).await,
        3
    );
    drop(u5);
    let f = u1.next_json().await;
    assert_eq!(
        (f["type"].as_str(), f["user_id"].as_str()),
        (Some("user_left"), Some("u5")),
        "{f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_big_rooms_are_summarised_and_small_ones_exact() {
    let edge = Edge::in_process(SMALL_SUMMARY).await;
    summarised_above_the_threshold_exact_below(&edge, &edge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_rooms_are_summarised_across_nodes_on_redis() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2, SMALL_SUMMARY).await;
    summarised_above_the_threshold_exact_below(&nodes[0], &nodes[1]).await;
}

/// 5,000 members over two nodes: each newcomer's presence is a page and
/// the count, and the REST pages list every one of them exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_5000_is_paged_over_rest() {
    const MEMBERS: usize = 5000;
    let redis = RedisServer::start().await;
    let nodes = cluster(
        &redis,
        2,
        &[
            ("ALLOW_JOIN_AUTO_USERS", "true"),
            ("ROOMCAST__LIMITS__CONNECTIONS_PER_ADDRESS", "10000"),
            // The test holds 5,000 sockets it does not read: no diffs or
            // pings for them to fall behind on while it connects.
            ("ROOMCAST__PRESENCE__DIFF_INTERVAL_MS", "600000"),
            ("ROOMCAST__WEBSOCKET__HEARTBEAT_INTERVAL_MS", "600000"),
            ("ROOMCAST__WEBSOCKET__HEARTBEAT_TIMEOUT_MS", "1200000"),
        ],
    )
    .await;
    let room = nodes[0].room("stadium").await;
    let mut sockets = Vec::with_capacity(MEMBERS);
    let mut summarised = 0;
    for chunk in (0..MEMBERS).collect::<Vec<_>>().chunks(100) {
        let joined = join_all(chunk.iter().map(|i| {
            let u = url(&nodes[i % 2], &room, &format!("m{i:05}"));
            async move { Client::join(&u).await }
        }))
        .await;
        for (c, _, presence) in joined {
            // Joins in a chunk run at once, so each one's count is only
            // known to be within what has joined so far.
            let listed = presence["users"].as_array().unwrap().len();
            match presence["count"].as_u64() {
                Some(count) => {
                    summarised += 1;
                    // Summarised: the first 100 by user id, and the count.
                    assert!(
                        count > 200 && count <= (sockets.len() + 100) as u64,
                        "{count}"
                    );
                    assert_eq!(listed, 100);
                    assert_eq!(presence["users"][0]["user_id"], "m00000");
                }
                None => assert!(listed <= 200 && listed <= sockets.len() + 100, "{listed}"),
            }
            sockets.push(c);
        }
    }
    assert!(summarised >= MEMBERS - 300, "{summarised}");
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/rooms/{room}/presence?limit=1000&after={a}"),
            None => format!("/rooms/{room}/presence?limit=1000"),
        };
        let page = nodes[seen.len() / 1000 % 2].get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let page = page.json();
        assert_eq!(page["count"], MEMBERS);
        seen.extend(users(&page["users"]));
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..MEMBERS).map(|i| format!("m{i:05}")).collect();
    assert_eq!(seen, expected);
    // Every socket is still there (none was closed while it waited).
    let whole = nodes[1]
        .get(&format!("/rooms/{room}/presence"))
        .await
        .json();
    assert_eq!(whole["users"].as_array().unwrap().len(), MEMBERS);
    drop(sockets);
}
