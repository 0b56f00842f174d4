//! One socket, many rooms (`/ws`): subscriptions with their own recovery,
//! presence and errors, publishing that names the room, across three nodes
//! and through a node kill; token refresh in band.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use roomcast_tests::{Client, Edge, RedisServer, cluster, hs256, now};
use serde_json::{Value, json};

/// Subscribes and reads `subscribed` and the room's `presence`; the
/// `subscribed` frame.
async fn subscribe(c: &mut Client, room: &str, since: Option<u64>) -> Value {
    let mut frame = json!({"type": "subscribe", "room_id": room});
    if let Some(s) = since {
        frame["since"] = json!(s.to_string());
    }
    c.send_json(&frame).await;
    let sub = c.next_of("subscribed").await;
    assert_eq!(sub["room_id"], room, "{sub}");
    let presence = c.next_json().await;
    assert_eq!(
        (presence["type"].as_str(), presence["room_id"].as_str()),
        (Some("presence"), Some(room)),
        "{presence}"
    );
    sub
}

/// The next `n` message frames, skipping everything else.
async fn messages(c: &mut Client, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames.len() < n {
        let f = c.next_json().await;
        if f["type"] == "message" {
            frames.push(f);
        }
    }
    frames
}

/// One message from each writer to each of its rooms (writer `w` writes
/// to every other room from the `w`-th), each acknowledged.
async fn send_round(writers: &mut [Client], rooms: &[String], round: usize) {
    for (w, c) in writers.iter_mut().enumerate() {
        let mine: Vec<&String> = rooms.iter().skip(w).step_by(2).collect();
        for r in &mine {
            c.send_json(&json!({"type": "message", "room_id": r, "content": format!("{round}"), "client_id": format!("{r}-{round}")}))
                .await;
        }
        for _ in &mine {
            c.next_of("ack").await;
        }
    }
}

/// The next `error` frame, skipping everything else.
async fn next_error(c: &mut Client) -> Value {
    c.next_of("error").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_joins_publishes_and_leaves_rooms() {
    let edge = Edge::in_process(&[
        ("ROOMCAST__WEBSOCKET__MAX_SUBSCRIPTIONS", "3"),
        ("ALLOW_JOIN_AUTO_USERS", "true"),
    ])
    .await;
    let (r1, r2, r3, r4) = (
        edge.room("one").await,
        edge.room("two").await,
        edge.room("three").await,
        edge.room("four").await,
    );
    let mut m = Client::connect(&edge.ws_url("/ws?user_id=alice&username=Alice")).await;
    let hello = m.next_json().await;
    assert_eq!(
        hello,
        json!({"type": "connected", "user_id": "alice", "username": "Alice", "node_id": hello["node_id"]})
    );
    for r in [&r1, &r2, &r3] {
        let sub = subscribe(&mut m, r, None).await;
        assert_eq!(
            (sub["offset"].as_u64(), sub.get("recovered")),
            (Some(0), None)
        );
    }
    // Refusals name the room; the socket lives on.
    m.send_json(&json!({"type": "subscribe", "room_id": r4}))
        .await;
    let e = next_error(&mut m).await;
    assert_eq!(
        (e["code"].as_str(), e["room_id"].as_str()),
        (Some("too_many_subscriptions"), Some(r4.as_str()))
    );
    m.send_json(&json!({"type": "subscribe", "room_id": r1}))
        .await;
    assert_eq!(
        next_error(&mut m).await["code"],
        "forbidden",
        "already subscribed"
    );
    m.send_json(&json!({"type": "message", "content": "where?"}))
        .await;
    assert_eq!(next_error(&mut m).await["code"], "not_subscribed");
    m.send_json(&json!({"type": "message", "room_id": r4, "content": "hi", "client_id": "c0"}))
        .await;
    let e = next_error(&mut m).await;
    assert_eq!(
        (
            e["code"].as_str(),
            e["client_id"].as_str(),
            e["room_id"].as_str()
        ),
        (Some("not_subscribed"), Some("c0"), Some(r4.as_str()))
    );

    // A single-room member of room two hears the multiplexed user, and the
    // other way round; each frame names its room.
    let (mut bob, _, presence) = Client::join(&edge.ws_url(&format!("/ws/{r2}/bob"))).await;
    assert_eq!(presence["users"].as_array().unwrap().len(), 2, "{presence}");
    let joined = m.next_of("user_joined").await;
    assert_eq!(
        (joined["room_id"].as_str(), joined["user_id"].as_str()),
        (Some(r2.as_str()), Some("bob"))
    );
    m.send_json(&json!({"type": "message", "room_id": r2, "content": "hi bob", "client_id": "c1"}))
        .await;
    let ack = m.next_of("ack").await;
    assert_eq!(
        (
            ack["room_id"].as_str(),
            ack["offset"].as_u64(),
            ack["client_id"].as_str()
        ),
        (Some(r2.as_str()), Some(1), Some("c1"))
    );
    let got = m.next_of("message").await;
    assert_eq!(
        (got["room_id"].as_str(), got["content"].as_str()),
        (Some(r2.as_str()), Some("hi bob"))
    );
    let got = bob.next_of("message").await;
    assert_eq!(got["content"], "hi bob");
    bob.send_json(&json!({"content": "hi alice"})).await;
    assert_eq!(
        bob.next_of("ack").await.get("room_id"),
        None,
        "single-room acks keep their shape"
    );
    let got = m.next_of("message").await;
    assert_eq!(
        (got["room_id"].as_str(), got["offset"].as_u64()),
        (Some(r2.as_str()), Some(2))
    );
    m.send_json(&json!({"type": "typing", "room_id": r2, "is_typing": true}))
        .await;
    let typing = bob.next_of("typing").await;
    assert_eq!(typing["user_id"], "alice");

    // A single-room socket cannot subscribe, nor post elsewhere.
    bob.send_json(&json!({"type": "subscribe", "room_id": r1}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "forbidden");
    bob.send_json(&json!({"type": "message", "room_id": r1, "content": "x"}))
        .await;
    assert_eq!(bob.next_of("error").await["code"], "forbidden");

    // Alice is in room three twice (a single-room tab too): leaving it on
    // the multiplexed socket is no news to the room.
    let (mut tab, _, _) = Client::join(&edge.ws_url(&format!("/ws/{r3}/alice"))).await;
    let (mut carl, _, _) = Client::join(&edge.ws_url(&format!("/ws/{r3}/carl"))).await;
    m.send_json(&json!({"type": "unsubscribe", "room_id": r3}))
        .await;
    assert_eq!(m.next_of("unsubscribed").await["room_id"], r3.as_str());
    tab.send_json(&json!({"content": "still in three"})).await;
    let next = carl.next_json().await;
    assert_eq!(
        (next["type"].as_str(), next["content"].as_str()),
        (Some("message"), Some("still in three")),
        "no user_left before it: {next}"
    );
    drop(tab);
    assert_eq!(
        carl.next_of("user_left").await["user_id"],
        "alice",
        "her last presence"
    );
    subscribe(&mut m, &r3, None).await;

    // Leaving room two announces alice left; her other rooms go on.
    m.send_json(&json!({"type": "unsubscribe", "room_id": r2}))
        .await;
    assert_eq!(m.next_of("unsubscribed").await["room_id"], r2.as_str());
    let left = bob.next_of("user_left").await;
    assert_eq!(left["user_id"], "alice");
    bob.send_json(&json!({"content": "gone?"})).await;
    bob.next_of("ack").await;
    m.send_json(&json!({"type": "message", "room_id": r3, "content": "still here"}))
        .await;
    let got = m.next_of("message").await;
    assert_eq!(
        (got["room_id"].as_str(), got["content"].as_str()),
        (Some(r3.as_str()), Some("still here")),
        "nothing more from room two"
    );
    m.send_json(&json!({"type": "unsubscribe", "room_id": r2}))
        .await;
    assert_eq!(next_error(&mut m).await["code"], "not_subscribed");
    // Now there is room for one more.
    subscribe(&mut m, &r4, None).await;
    let presence = edge.get(&format!("/rooms/{r2}/presence")).await.json();
    assert_eq!(presence["users"].as_array().unwrap().len(), 1, "{presence}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rooms_and_bad_frames_are_errors_not_closes() {
    let edge = Edge::in_process(&[("ALLOW_JOIN_AUTO_USERS", "true")]).await;
    let mut m = Client::connect(&edge.ws_url("/ws?user_id=carol")).await;
    m.next_of("connected").await;
    m.send_json(&json!({"type": "subscribe", "room_id": "no-such-room"}))
        .await;
    let e = next_error(&mut m).await;
    assert_eq!(
        (e["code"].as_str(), e["room_id"].as_str()),
        (Some("not_found"), Some("no-such-room"))
    );
    m.send_json(&json!({"type": "subscribe", "room_id": "a:b"}))
        .await;
    assert_eq!(next_error(&mut m).await["code"], "invalid_json");
    m.send_json(&json!({"type": "refresh", "token": "x"})).await;
    assert_eq!(
        next_error(&mut m).await["code"],
        "unauthorized",
        "auth is off"
    );
    let r = edge.room("real").await;
    subscribe(&mut m, &r, None).await;
    // A user that does not exist cannot open a multiplexed socket either.
    let strict = Edge::in_process(&[]).await;
    let mut s = Client::connect(&strict.ws_url("/ws?user_id=nobody")).await;
    assert_eq!(s.closed().await.code(), Some(4004));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rooms_over_three_nodes_arrive_once_in_order_through_a_node_kill() {
    let redis = RedisServer::start().await;
    // Writers send a message to each of their 25 rooms at once.
    let mut nodes = cluster(
        &redis,
        3,
        &[
            ("ALLOW_JOIN_AUTO_USERS", "true"),
            ("ROOMCAST__WEBSOCKET__RATE_BURST", "1000"),
            ("ROOMCAST__LIMITS__USER_FRAME_BURST", "1000"),
        ],
    )
    .await;
    let mut rooms = Vec::new();
    for i in 0..50 {
        rooms.push(nodes[0].room(&format!("room-{i}")).await);
    }
    let mut m = Client::connect(&nodes[0].ws_url("/ws?user_id=reader")).await;
    m.next_of("connected").await;
    for r in &rooms {
        subscribe(&mut m, r, None).await;
    }
    // Writers on the two other nodes, each in half of the rooms.
    let mut writers = Vec::new();
    for (w, node) in [&nodes[1], &nodes[2]].into_iter().enumerate() {
        let mut c = Client::connect(&node.ws_url(&format!("/ws?user_id=writer-{w}"))).await;
        c.next_of("connected").await;
        for r in rooms.iter().skip(w).step_by(2) {
            subscribe(&mut c, r, None).await;
        }
        writers.push(c);
    }
    // What the reader got: per room, the offsets in arrival order.
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for round in 0..3 {
        send_round(&mut writers, &rooms, round).await;
    }
    for f in messages(&mut m, 150).await {
        got.entry(f["room_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(f["offset"].as_u64().unwrap());
    }
    // The reader's node dies; more is written meanwhile; the reader comes
    // back on another node and resumes every room from where it was.
    nodes[0].kill9();
    for round in 3..5 {
        send_round(&mut writers, &rooms, round).await;
    }
    let mut m = Client::connect(&nodes[1].ws_url("/ws?user_id=reader")).await;
    m.next_of("connected").await;
    for r in &rooms {
        let since = got
            .get(r.as_str())
            .and_then(|o| o.last())
            .copied()
            .unwrap_or(0);
        m.send_json(&json!({"type": "subscribe", "room_id": r, "since": since.to_string()}))
            .await;
    }
    // Each room's `subscribed`, then its replay (rounds 3 and 4); the
    // writers' round 5 goes out once every room is back.
    let (mut subscribed, mut received) = (0, 0);
    while subscribed < 50 || received < 100 {
        let f = m.next_json().await;
        match f["type"].as_str() {
            Some("subscribed") => {
                assert_eq!(f["recovered"], true, "{f}");
                subscribed += 1;
            }
            Some("message") => {
                received += 1;
                got.entry(f["room_id"].as_str().unwrap().to_owned())
                    .or_default()
                    .push(f["offset"].as_u64().unwrap());
            }
            Some("presence" | "user_joined" | "user_left") => {}
            _ => panic!("unexpected {f}"),
        }
    }
    send_round(&mut writers, &rooms, 5).await;
    for f in messages(&mut m, 50).await {
        got.entry(f["room_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(f["offset"].as_u64().unwrap());
    }
    let want: Vec<u64> = (1..=6).collect();
    let wrong: BTreeMap<&String, &Vec<u64>> = got.iter().filter(|(_, o)| **o != want).collect();
    assert!(
        wrong.is_empty(),
        "rooms with a gap, duplicate or disorder: {wrong:?}"
    );
    assert_eq!(got.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_keeps_a_socket_sending_past_the_first_ones_expiry() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let edge = Edge::in_process(&[
        ("JWT_SECRET", SECRET),
        ("ROOMCAST__ROOMS__ALLOW_WEBSOCKET_AUTO_ROOMS", "true"),
    ])
    .await;
    // `exp` is in whole seconds and `now()` truncates: a token made with
    // `now() + n` is valid for n-1 to n seconds. n leaves the steps before
    // the expiry at least a second or two, and each sleep outlasts n.
    let short = hs256(SECRET, "dana", json!({"exp": now() + 3}));
    let mut m = Client::connect(&edge.ws_url(&format!("/ws?token={short}"))).await;
    assert_eq!(m.next_of("connected").await["user_id"], "dana");
    subscribe(&mut m, "lounge", None).await;
    // Someone else's token is refused; the socket keeps its own.
    let other = hs256(SECRET, "eve", json!({"exp": now() + 3600}));
    m.send_json(&json!({"type": "refresh", "token": other}))
        .await;
    assert_eq!(next_error(&mut m).await["code"], "unauthorized");
    let long = hs256(SECRET, "dana", json!({"exp": now() + 3600}));
    m.send_json(&json!({"type": "refresh", "token": long}))
        .await;
    let refreshed = m.next_of("refreshed").await;
    assert!(refreshed["expires_at"].as_u64().unwrap() > now() + 3000);
    // Past the first token's expiry, it still sends.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    m.send_json(&json!({"type": "message", "room_id": "lounge", "content": "still me"}))
        .await;
    assert_eq!(m.next_of("ack").await["room_id"], "lounge");
    // A token whose rooms claim no longer has a room ends that subscription.
    let narrow = hs256(
        SECRET,
        "dana",
        json!({"exp": now() + 3600, "rooms": ["elsewhere"]}),
    );
    m.send_json(&json!({"type": "refresh", "token": narrow}))
        .await;
    assert_eq!(m.next_of("unsubscribed").await["room_id"], "lounge");
    m.next_of("refreshed").await;
    m.send_json(&json!({"type": "subscribe", "room_id": "lounge"}))
        .await;
    assert_eq!(next_error(&mut m).await["code"], "forbidden");
    // Without a refresh, a socket whose token expired cannot send.
    let brief = hs256(SECRET, "fred", json!({"exp": now() + 2}));
    let mut f = Client::connect(&edge.ws_url(&format!("/ws?token={brief}"))).await;
    f.next_of("connected").await;
    subscribe(&mut f, "lounge", None).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    f.send_json(&json!({"type": "message", "room_id": "lounge", "content": "late"}))
        .await;
    assert_eq!(next_error(&mut f).await["code"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_reaches_and_disconnects_a_user_on_every_node() {
    let redis = RedisServer::start().await;
    let key = "server-key-server-key";
    let nodes = cluster(
        &redis,
        3,
        &[("ALLOW_JOIN_AUTO_USERS", "true"), ("SERVER_API_KEY", key)],
    )
    .await;
    let room = nodes[0].room("lobby").await;
    // Alice has a multiplexed socket on every node (one of them in the
    // lobby) and a single-room socket on the last.
    let mut socks = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(&node.ws_url("/ws?user_id=alice")).await;
        c.next_of("connected").await;
        socks.push(c);
    }
    subscribe(&mut socks[0], &room, None).await;
    let (mut single, _, _) = Client::join(&nodes[2].ws_url(&format!("/ws/{room}/alice"))).await;
    let status = |n: usize, u: &'static str| {
        let node = &nodes[n];
        async move { node.get(&format!("/users/{u}/status")).await.json()["online"].clone() }
    };
    assert_eq!(status(1, "alice").await, true);
    assert_eq!(status(1, "bob").await, false);

    // A frame to alice reaches each multiplexed socket once, on every node.
    let sent = nodes[1]
        .post_as_server(
            "/users/alice/messages",
            &json!({"data": {"kind": "dm", "from": "bob", "text": "hi"}}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    for c in &mut socks {
        let got = c.next_of("user_message").await;
        assert_eq!(got["user_id"], "alice");
        assert_eq!(
            got["data"],
            json!({"kind": "dm", "from": "bob", "text": "hi"})
        );
    }
    // Only the backend may send or disconnect.
    let anon = nodes[1]
        .request("POST", "/users/alice/disconnect", &[], Some("{}"))
        .await;
    assert_eq!(anon.status, 401);
    let bad = nodes[1]
        .post_as_server("/users/alice/messages", &json!({"text": "no data"}))
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);

    // Disconnecting alice closes all four sockets, cluster-wide.
    let started = std::time::Instant::now();
    let r = nodes[0]
        .post_as_server("/users/alice/disconnect", &json!({"reconnect": false}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for c in socks.iter_mut().chain(std::iter::once(&mut single)) {
        assert_eq!(c.closed().await.code(), Some(4009));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "all closed in {took:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status(0, "alice").await != false {
        assert!(tokio::time::Instant::now() < deadline, "alice still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Allowed to come back: 4010.
    let mut c = Client::connect(&nodes[1].ws_url("/ws?user_id=alice")).await;
    c.next_of("connected").await;
    nodes[2]
        .post_as_server("/users/alice/disconnect", &json!({"reconnect": true}))
        .await;
    assert_eq!(c.closed().await.code(), Some(4010));
}

/// A watcher on one node follows users who come and go on others: a
/// `status` for each at once, then one per change (a second tab is no
/// change; the last one leaving is).
async fn watch_statuses(nodes: &[Edge]) {
    let node = |i: usize| &nodes[i % nodes.len()];
    let room = node(0).room("lobby").await;
    let mut w = Client::connect(&node(1).ws_url("/ws?user_id=watcher")).await;
    w.next_of("connected").await;
    w.send_json(&json!({"type": "watch", "user_ids": ["gina", "hank"]}))
        .await;
    let mut first = vec![w.next_of("status").await, w.next_of("status").await];
    first.sort_by_key(|s| s["user_id"].as_str().unwrap().to_owned());
    assert_eq!(
        first,
        [
            json!({"type": "status", "user_id": "gina", "online": false}),
            json!({"type": "status", "user_id": "hank", "online": false})
        ]
    );
    let (gina, _, _) = Client::join(&node(2).ws_url(&format!("/ws/{room}/gina"))).await;
    assert_eq!(
        w.next_of("status").await,
        json!({"type": "status", "user_id": "gina", "online": true})
    );
    let (tab2, _, _) = Client::join(&node(0).ws_url(&format!("/ws/{room}/gina"))).await;
    drop(gina);
    drop(tab2);
    assert_eq!(
        w.next_of("status").await,
        json!({"type": "status", "user_id": "gina", "online": false}),
        "one change for two tabs: online once, offline once"
    );
    // Unwatched: no more news of hank.
    w.send_json(&json!({"type": "unwatch", "user_ids": ["hank"]}))
        .await;
    w.send_json(&json!({"type": "ping"})).await;
    w.next_of("pong").await;
    let (_hank, _, _) = Client::join(&node(2).ws_url(&format!("/ws/{room}/hank"))).await;
    let (_gina, _, _) = Client::join(&node(2).ws_url(&format!("/ws/{room}/gina"))).await;
    assert_eq!(
        w.next_of("status").await,
        json!({"type": "status", "user_id": "gina", "online": true}),
        "hank's coming was not reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_follows_users_across_nodes() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 3, &[("ALLOW_JOIN_AUTO_USERS", "true")]).await;
    watch_statuses(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_follows_users_on_the_embedded_backend() {
    let edge = Edge::in_process(&[("ALLOW_JOIN_AUTO_USERS", "true")]).await;
    watch_statuses(std::slice::from_ref(&edge)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_subscribes_a_users_sockets_on_every_node() {
    let redis = RedisServer::start().await;
    let key = "server-key-server-key";
    let nodes = cluster(
        &redis,
        2,
        &[("ALLOW_JOIN_AUTO_USERS", "true"), ("SERVER_API_KEY", key)],
    )
    .await;
    let room = nodes[0].room("project-x").await;
    let mut socks = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(&node.ws_url("/ws?user_id=ivy")).await;
        c.next_of("connected").await;
        socks.push(c);
    }
    let r = nodes[1]
        .post_as_server("/users/ivy/subscribe", &json!({"room_id": room}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for c in &mut socks {
        assert_eq!(c.next_of("subscribed").await["room_id"], room.as_str());
        assert_eq!(c.next_json().await["type"], "presence");
    }
    // Asking again changes nothing; the rooms work as if the client had
    // subscribed itself.
    nodes[0]
        .post_as_server("/users/ivy/subscribe", &json!({"room_id": room}))
        .await;
    socks[0]
        .send_json(&json!({"type": "message", "room_id": room, "content": "in"}))
        .await;
    for c in &mut socks {
        let m = c.next_of("message").await;
        assert_eq!(
            (m["room_id"].as_str(), m["offset"].as_u64()),
            (Some(room.as_str()), Some(1))
        );
    }
    nodes[0]
        .post_as_server("/users/ivy/unsubscribe", &json!({"room_id": room}))
        .await;
    for c in &mut socks {
        let f = c.next_json().await;
        assert_eq!(
            (f["type"].as_str(), f["room_id"].as_str()),
            (Some("unsubscribed"), Some(room.as_str())),
            "{f}"
        );
    }
    let bad = nodes[0]
        .post_as_server("/users/ivy/subscribe", &json!({"room_id": "a:b"}))
        .await;
    assert_eq!(bad.status, 422);
}
