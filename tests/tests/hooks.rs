//! The application's backend in the loop, with a real HTTP server of the
//! test's own as the application: the connect hook allows, renames or
//! denies with its own close code; the publish hook accepts, replaces or
//! rejects before anything is stored; a slow hook delays only its own
//! room; a hook that does not answer has the configured outcome; requests
//! are signed.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use roomcast_edge::hooks::signature;
use roomcast_tests::{Client, Closed, Edge};
use serde_json::{Value, json};

const SECRET: &str = "hook-secret-hook-secret";

/// What the application received: (path, signature header, body).
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// The application's state: what it saw, and the answer for room `slow`,
/// held until the test releases it.
#[derive(Clone, Default)]
struct AppState {
    seen: Seen,
    release_slow: Arc<tokio::sync::Notify>,
}

async fn connect_hook(
    State(AppState { seen, .. }): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<Value> {
    record(&seen, "/connect", &headers, &body);
    let req: Value = serde_json::from_slice(&body).unwrap();
    Json(match req["user_id"].as_str() {
        Some("mallory") => json!({"allow": false, "code": 4403, "reason": "banned"}),
        Some("alice") => json!({"allow": true, "username": "Alice (verified)"}),
        Some("roomless") => json!({"allow": true, "rooms": ["elsewhere"]}),
        _ => json!({"allow": true}),
    })
}

async fn publish_hook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Json<Value> {
    record(&state.seen, "/publish", &headers, &body);
    let req: Value = serde_json::from_slice(&body).unwrap();
    let content = req["content"].as_str().unwrap_or_default();
    if req["room_id"] == "slow" {
        state.release_slow.notified().await;
    }
    Json(if content.contains("badword") {
        json!({"action": "reject", "reason": "no bad words here"})
    } else if content == "hello" {
        json!({"action": "replace", "content": "hello, world"})
    } else {
        json!({"action": "accept"})
    })
}

fn record(seen: &Seen, path: &str, headers: &HeaderMap, body: &[u8]) {
    let sig = headers
        .get("x-roomcast-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.lock().unwrap().push((path.into(), sig, body.to_vec()));
}

/// The application: its port and its state.
async fn application() -> (u16, AppState) {
    let state = AppState::default();
    let app = Router::new()
        .route("/connect", post(connect_hook))
        .route("/publish", post(publish_hook))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, state)
}

async fn node(port: u16, extra: &[(&str, &str)]) -> Edge {
    let connect = format!("http://127.0.0.1:{port}/connect");
    let publish = format!("http://127.0.0.1:{port}/publish");
    let mut env = vec![
        ("ENVIRONMENT", "production"),
        ("ALLOW_UNAUTHENTICATED", "true"),
        ("ROOMCAST__HOOKS__CONNECT_URL", connect.as_str()),
        ("ROOMCAST__HOOKS__PUBLISH_URL", publish.as_str()),
        ("ROOMCAST__HOOKS__SECRET", SECRET),
    ];
    env.extend_from_slice(extra);
    Edge::in_process(&env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_hook_allows_renames_and_denies() {
    let (port, app) = application().await;
    let seen = app.seen;
    let edge = node(port, &[]).await;
    let (_a, connected, _) = Client::join(&edge.ws_url("/ws/lobby/alice")).await;
    assert_eq!(connected["username"], "Alice (verified)");
    let mut m = Client::connect(&edge.ws_url("/ws/lobby/mallory")).await;
    assert_eq!(m.closed().await, Closed::Code(4403, "banned".into()));
    let mut r = Client::connect(&edge.ws_url("/ws/lobby/roomless")).await;
    assert_eq!(
        r.closed().await.code(),
        Some(4003),
        "not among the rooms the app allows"
    );
    // Every request is signed: HMAC-SHA256 over "<t>.<body>".
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    for (path, sig, body) in calls {
        assert_eq!(path, "/connect");
        let (t, v1) = sig
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .expect("t=..,v1=..");
        assert_eq!(v1, signature(SECRET.as_bytes(), t.parse().unwrap(), &body));
        let req: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(req["room_id"], "lobby");
        assert_eq!(req["client_addr"], "127.0.0.1");
    }
    assert_eq!(
        edge.metric("roomcast_hook_calls_total{hook=\"connect\",outcome=\"deny\"}")
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_hook_accepts_replaces_and_rejects_before_storing() {
    let (port, _app) = application().await;
    let edge = node(port, &[]).await;
    let (mut a, _, _) = Client::join(&edge.ws_url("/ws/lobby/ann")).await;
    a.send_json(&json!({"content": "a badword", "client_id": "c1"}))
        .await;
    let err = a.next_of("error").await;
    assert_eq!(
        (
            err["code"].as_str(),
            err["message"].as_str(),
            err["client_id"].as_str()
        ),
        (Some("rejected"), Some("no bad words here"), Some("c1"))
    );
    a.send_json(&json!({"content": "hello", "client_id": "c2"}))
        .await;
    // The ack and the sender's own copy, in either order.
    let (mut ack, mut msg) = (None, None);
    while ack.is_none() || msg.is_none() {
        let f = a.next_json().await;
        match f["type"].as_str() {
            Some("ack") => ack = Some(f),
            Some("message") => msg = Some(f),
            _ => {}
        }
    }
    let (ack, m) = (ack.unwrap(), msg.unwrap());
    assert_eq!(
        (m["content"].as_str(), m["offset"].as_u64()),
        (Some("hello, world"), Some(1))
    );
    assert_eq!(ack["offset"], 1, "ack still means stored");
    a.send_json(&json!({"content": "fine", "client_id": "c3"}))
        .await;
    assert_eq!(a.next_of("ack").await["offset"], 2);
    let history = edge.get("/rooms/lobby/messages").await.json();
    let contents: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["hello, world", "fine"],
        "the rejected one was never stored"
    );
    assert_eq!(
        edge.metric("roomcast_hook_calls_total{hook=\"publish\",outcome=\"reject\"}")
            .await,
        1.0
    );
}

/// A hook slow for one room delays that room's sender only: another room's
/// message, sent after, is stored and acknowledged first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_delays_only_its_own_room() {
    let (port, app) = application().await;
    let edge = node(port, &[("ROOMCAST__HOOKS__PUBLISH_TIMEOUT_MS", "60000")]).await;
    let (mut slow, _, _) = Client::join(&edge.ws_url("/ws/slow/s")).await;
    let (mut fast, _, _) = Client::join(&edge.ws_url("/ws/fast/f")).await;
    slow.send_json(&json!({"content": "takes a while"})).await;
    fast.send_json(&json!({"content": "quick"})).await;
    let fast_ack = fast.next_of("ack").await;
    assert_eq!(fast_ack["offset"], 1);
    // The slow room's message is not stored yet; then it is.
    let slow_history = edge.get("/rooms/slow/messages").await.json();
    assert_eq!(
        slow_history,
        json!([]),
        "the fast ack came while the slow hook was still out"
    );
    app.release_slow.notify_one();
    assert_eq!(slow.next_of("ack").await["offset"], 1);
}

/// A hook that does not answer: deny by default (nothing stored, the sender
/// told `unavailable`, sockets refused 1011), or let through where the
/// settings say `allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_does_not_answer_has_the_configured_outcome() {
    // A listener that never accepts: requests hang until the hook timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let fast_timeouts = [
        ("ROOMCAST__HOOKS__CONNECT_TIMEOUT_MS", "300"),
        ("ROOMCAST__HOOKS__PUBLISH_TIMEOUT_MS", "300"),
    ];
    let denying = node(port, &fast_timeouts).await;
    let mut c = Client::connect(&denying.ws_url("/ws/lobby/u")).await;
    assert_eq!(c.closed().await.code(), Some(1011));
    let mut env = fast_timeouts.to_vec();
    env.push(("ROOMCAST__HOOKS__CONNECT_ON_ERROR", "allow"));
    let half = node(port, &env).await;
    let (mut u, _, _) = Client::join(&half.ws_url("/ws/lobby/u")).await;
    u.send_json(&json!({"content": "x", "client_id": "c1"}))
        .await;
    let err = u.next_of("error").await;
    assert_eq!(
        (err["code"].as_str(), err["client_id"].as_str()),
        (Some("unavailable"), Some("c1"))
    );
    assert_eq!(half.get("/rooms/lobby/messages").await.json(), json!([]));
    env.push(("ROOMCAST__HOOKS__PUBLISH_ON_ERROR", "allow"));
    let open = node(port, &env).await;
    let (mut v, _, _) = Client::join(&open.ws_url("/ws/lobby/v")).await;
    v.send_json(&json!({"content": "x"})).await;
    assert_eq!(v.next_of("ack").await["offset"], 1);
    assert!(
        open.metric("roomcast_hook_calls_total{hook=\"publish\",outcome=\"error\"}")
            .await
            >= 1.0
    );
    drop(silent);
}
