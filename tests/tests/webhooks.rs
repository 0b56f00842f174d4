//! Webhooks, with a real HTTP server of the test's own as the application:
//! every event delivered at least once, signed, in order, through a
//! receiver that fails, dies and comes back, and through `kill -9` of the
//! edge that recorded the events and was delivering them; duplicates carry
//! the same id; only the configured events are sent, batched when busy.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use roomcast_edge::hooks::signature;
use roomcast_tests::{Client, Edge, RedisServer, cluster};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "webhook-secret-webhook-secret";

/// The application: what it received, and how it answers.
#[derive(Clone)]
struct Receiver {
    /// Every event of every accepted POST, in arrival order.
    events: Arc<Mutex<Vec<Value>>>,
    /// Sizes of the accepted POSTs.
    batches: Arc<Mutex<Vec<usize>>>,
    /// POSTs refused (answered `fail_status`).
    refused: Arc<AtomicUsize>,
    /// POSTs whose signature did not check.
    forged: Arc<AtomicUsize>,
    /// 0: answer 204; otherwise answer this status.
    fail_status: Arc<AtomicU16>,
    /// While true, POSTs wait before they are answered.
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

async fn hook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let _ = r.held.subscribe().wait_for(|held| !held).await;
    if !signed(&headers, &body) {
        r.forged.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let status = r.fail_status.load(Ordering::Relaxed);
    if status != 0 {
        r.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::from_u16(status).unwrap();
    }
    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
    assert!(body["time_ms"].as_u64().is_some(), "{body}");
    let events = body["events"].as_array().expect("events").clone();
    r.batches.lock().unwrap().push(events.len());
    r.events.lock().unwrap().extend(events);
    StatusCode::NO_CONTENT
}

/// What the README tells the application to check: `t` recent, `v1` the
/// HMAC-SHA256 of `"<t>.<body>"`.
fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers
        .get("x-roomcast-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<u64>().ok(),
            Some(("v1", x)) => v1 = Some(x.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now.abs_diff(t) < 300 && signature(SECRET.as_bytes(), t, body) == v1
}

/// Serves `r` on `listener` until `stop`.
fn serve(listener: TcpListener, r: Receiver, stop: CancellationToken) {
    let app = Router::new().route("/events", post(hook)).with_state(r);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
}

async fn receiver() -> (u16, Receiver, CancellationToken) {
    let r = Receiver {
        events: Arc::default(),
        batches: Arc::default(),
        refused: Arc::default(),
        forged: Arc::default(),
        fail_status: Arc::default(),
        held: Arc::new(tokio::sync::watch::Sender::new(false)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    serve(listener, r.clone(), stop.clone());
    (port, r, stop)
}

/// Webhooks to `url`, with a POST timeout of `timeout_ms` and a lease of
/// three times that.
fn settings(url: &str, timeout_ms: u64) -> Vec<(&'static str, String)> {
    vec![
        ("ROOMCAST__WEBHOOKS__URL", url.to_owned()),
        ("ROOMCAST__WEBHOOKS__SECRET", SECRET.to_owned()),
        ("ROOMCAST__WEBHOOKS__TIMEOUT_MS", timeout_ms.to_string()),
        ("ROOMCAST__WEBHOOKS__RETRY_MIN_MS", "50".into()),
        ("ROOMCAST__WEBHOOKS__RETRY_MAX_MS", "300".into()),
        ("ROOMCAST__WEBHOOKS__POLL_MS", "20".into()),
        ("ROOMCAST__WEBHOOKS__LEASE_MS", (3 * timeout_ms).to_string()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Waits until `done` holds for what the receiver got (at most 45 s).
async fn until(r: &Receiver, what: &str, done: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        if done(&r.events.lock().unwrap()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: got {:#?}",
            r.events.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A logical event's key: what it is about, without its id.
fn key(e: &Value) -> String {
    let offset = e["message"]["offset"].as_u64().unwrap_or(0);
    format!(
        "{} {} {} {offset}",
        e["name"].as_str().unwrap(),
        e["room_id"].as_str().unwrap_or("-"),
        e["user_id"].as_str().unwrap_or("-"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_survives_a_receiver_outage_and_the_kill_of_the_edge_delivering_it() {
    let redis = RedisServer::start().await;
    let (port, r, stop_receiver) = receiver().await;
    r.fail_status.store(503, Ordering::Relaxed);
    let url = format!("http://127.0.0.1:{port}/events");
    let env = settings(&url, 500);
    let mut nodes = cluster(&redis, 2, &borrowed(&env)).await;

    // One of the two delivers.
    let mut leader = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while leader.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no webhook leader");
        for (i, n) in nodes.iter().enumerate() {
            if n.metric("roomcast_webhook_leader").await == 1.0 {
                leader = Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let l = leader.unwrap();
    let other = 1 - l;
    let (alice, bob, carol, room) = (
        nodes[l].user("alice").await,
        nodes[l].user("bob").await,
        nodes[other].user("carol").await,
        nodes[l].room("r").await,
    );
    let (mut a, _, _) = Client::join(&nodes[l].ws_url(&format!("/ws/{room}/{alice}"))).await;
    let (_b, _, _) = Client::join(&nodes[l].ws_url(&format!("/ws/{room}/{bob}"))).await;
    let (_c, _, _) = Client::join(&nodes[other].ws_url(&format!("/ws/{room}/{carol}"))).await;
    let mut first_ids = Vec::new();
    for i in 0..20 {
        a.send_json(
            &json!({"type": "message", "content": format!("m{i}"), "client_id": format!("c{i}")}),
        )
        .await;
        first_ids.push(a.next_of("ack").await["id"].as_str().unwrap().to_owned());
    }
    // The receiver refused what it was offered: the events wait in Redis.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while r.refused.load(Ordering::Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.events.lock().unwrap().is_empty());

    // The receiver dies outright, and so does the delivering edge (which
    // also held alice's and bob's sockets).
    stop_receiver.cancel();
    nodes[l].kill9();
    // The application comes back where it was.
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    r.fail_status.store(0, Ordering::Relaxed);
    serve(listener, r.clone(), CancellationToken::new());

    // Everything arrives through the surviving edge: what the dead one
    // recorded, and what the sweep of its sockets recorded.
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for u in [&alice, &bob, &carol] {
        expected.insert(format!("user_online - {u} 0"), 1);
        expected.insert(format!("member_joined {room} {u} 0"), 1);
    }
    expected.insert(format!("room_occupied {room} - 0"), 1);
    for i in 1..=20 {
        expected.insert(format!("message_stored {room} - {i}"), 1);
    }
    for u in [&alice, &bob] {
        expected.insert(format!("member_left {room} {u} 0"), 1);
        expected.insert(format!("user_offline - {u} 0"), 1);
    }
    until(
        &r,
        "every event, through the outage and the kill",
        |events| expected.keys().all(|k| events.iter().any(|e| &key(e) == k)),
    )
    .await;
    assert_eq!(r.forged.load(Ordering::Relaxed), 0, "every POST was signed");
    assert_eq!(
        nodes[other].metric("roomcast_webhook_leader").await,
        1.0,
        "the survivor took over delivery"
    );

    // Nothing else happened, and each happening has one id however many
    // times it came.
    let events = r.events.lock().unwrap().clone();
    let mut ids: HashMap<String, String> = HashMap::new();
    for e in &events {
        let k = key(e);
        assert!(expected.contains_key(&k), "unexpected event {e}");
        let id = e["id"].as_str().unwrap().to_owned();
        let first = ids.entry(k.clone()).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "a redelivered {k} keeps its id");
    }
    assert_eq!(ids.len(), expected.len());
    // The stored messages are the ones acknowledged, in offset order.
    let stored: Vec<&Value> = events
        .iter()
        .filter(|e| e["name"] == "message_stored")
        .collect();
    let mut seen = std::collections::HashSet::new();
    let offsets: Vec<u64> = stored
        .iter()
        .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
        .map(|e| e["message"]["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>());
    for e in &stored {
        let offset = e["message"]["offset"].as_u64().unwrap() as usize;
        assert_eq!(e["message"]["id"], first_ids[offset - 1].as_str());
        assert_eq!(e["message"]["content"], format!("m{}", offset - 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_chosen_events_are_sent_in_order_and_batched_when_busy() {
    let (port, r, _stop) = receiver().await;
    // The application holds its first answer until every message is
    // stored: the events pile up meanwhile, and go out in batches.
    r.held.send_replace(true);
    let url = format!("http://127.0.0.1:{port}/events");
    // Long enough that the held answer is not given up on.
    let mut env = settings(&url, 30_000);
    env.push((
        "ROOMCAST__WEBHOOKS__EVENTS",
        "message_stored, member_joined".into(),
    ));
    env.push(("ROOMCAST__WEBHOOKS__MAX_BATCH", "10".into()));
    let edge = Edge::in_process(&borrowed(&env)).await;
    let (alice, room) = (edge.user("alice").await, edge.room("lobby").await);
    let (mut a, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{alice}"))).await;
    for i in 0..40 {
        a.send_json(&json!({"type": "message", "content": format!("m{i}")}))
            .await;
    }
    for _ in 0..40 {
        a.next_of("ack").await;
    }
    r.held.send_replace(false);
    until(&r, "40 messages", |events| {
        events
            .iter()
            .filter(|e| e["name"] == "message_stored")
            .count()
            == 40
    })
    .await;
    drop(a);
    let events = r.events.lock().unwrap().clone();
    let names: Vec<&str> = events.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        names[0], "member_joined",
        "user_online/room_occupied not chosen"
    );
    assert_eq!(events[0]["user_id"], alice.as_str());
    let contents: Vec<String> = events[1..]
        .iter()
        .map(|e| e["message"]["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        contents,
        (0..40).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "in order, once each (the receiver never failed)"
    );
    let batches = r.batches.lock().unwrap().clone();
    assert!(batches.iter().all(|&n| n <= 10), "{batches:?}");
    assert!(
        batches.len() <= 6,
        "41 events, 40 of them waiting together: batched, not {batches:?}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while edge.metric("roomcast_webhook_events_delivered_total").await != 41.0 {
        assert!(tokio::time::Instant::now() < deadline, "delivered counter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_without_a_secret_stop_start_up_naming_the_setting() {
    let out = std::process::Command::new(roomcast_tests::binary("roomcast-edge"))
        .env_clear()
        .env("ROOMCAST__WEBHOOKS__URL", "http://127.0.0.1:9/events")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("webhooks.secret"), "{err}");
}
