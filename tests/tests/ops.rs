//! Operations: health, readiness, metrics, REST errors, settings that stop
//! start-up with a message naming them, and `--print-config`.

use std::process::Command;

use roomcast_tests::{Client, Edge, binary};
use serde_json::json;

#[tokio::test]
async fn health_ready_metrics_and_rest_errors() {
    let edge = Edge::start(&[("NODE_ID", "edge-test-1")]).await;
    assert_eq!(edge.get("/health").await.json()["status"], "ok");
    let ready = edge.get("/ready").await;
    assert_eq!(
        (ready.status, ready.json()["node_id"].as_str()),
        (200, Some("edge-test-1"))
    );

    let (u, room) = (edge.user("alice").await, edge.room("general").await);
    assert_eq!(
        edge.get(&format!("/users/{u}")).await.json()["username"],
        "alice"
    );
    assert_eq!(edge.get("/users").await.json().as_array().unwrap().len(), 1);
    assert_eq!(edge.get("/rooms").await.json()[0]["name"], "general");
    for (path, detail) in [
        ("/users/nobody", "User not found"),
        ("/rooms/nowhere", "Room not found"),
        ("/rooms/nowhere/presence", "Room not found"),
        ("/no/such/route", "Not Found"),
    ] {
        let r = edge.get(path).await;
        assert_eq!(
            (r.status, r.json()),
            (404, json!({"detail": detail})),
            "{path}"
        );
    }
    let r = edge.request("POST", "/users", &[], Some("{oops")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().unwrap().contains("JSON"));
    for bad in [
        json!({}),
        json!({"username": ""}),
        json!({"username": 5}),
        json!({"username": "x".repeat(101)}),
    ] {
        assert_eq!(edge.post("/users", &bad).await.status, 422, "{bad}");
    }
    assert_eq!(
        edge.post("/rooms", &json!({"title": "x"})).await.status,
        422
    );
    let r = edge.get(&format!("/ws/{room}/{u}")).await;
    assert_eq!(r.status, 426, "a plain GET on a socket route");

    let (mut c, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/{u}"))).await;
    c.send_json(&json!({"content": "counted"})).await;
    c.next_of("ack").await;
    let metrics = edge.get("/metrics").await;
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        metrics
            .body
            .contains("roomcast_build_info{node=\"edge-test-1\",version=")
    );
    assert_eq!(edge.metric("roomcast_connections").await, 1.0);
    assert_eq!(edge.metric("roomcast_connections_opened_total").await, 1.0);
    assert_eq!(edge.metric("roomcast_rooms_active").await, 1.0);
    assert_eq!(edge.metric("roomcast_messages_published_total").await, 1.0);
    assert_eq!(
        edge.metric("roomcast_messages_received_total{type=\"message\"}")
            .await,
        1.0
    );
    assert!(edge.metric("roomcast_messages_delivered_total").await >= 1.0);
    assert_eq!(
        edge.metric("roomcast_fanout_latency_seconds_count").await,
        1.0
    );
    assert_eq!(edge.metric("roomcast_broker_up").await, 1.0);
}

fn run_edge(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(binary("roomcast-edge"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run roomcast-edge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_stop_start_up_naming_the_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PORT", "http")], "PORT"),
        (&[("ENVIRONMENT", "prod")], "ENVIRONMENT"),
        (
            &[("ALLOW_JOIN_AUTO_USERS", "sometimes")],
            "ALLOW_JOIN_AUTO_USERS",
        ),
        (&[("FRONTEND_URL", "chat.example.com")], "FRONTEND_URL"),
        (
            &[("JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")],
            "JWT_PUBLIC_KEY_FILE",
        ),
        (
            &[("ROOMCAST__WEBSOCKET__RATE_PER_SEC", "0")],
            "websocket.rate_per_sec",
        ),
        (
            &[("ROOMCAST__WEBSOCKET__OUTBOUND_QUEUE", "lots")],
            "websocket.outbound_queue",
        ),
        (&[("ROOMCAST__SERVER__NOPE", "1")], "nope"),
    ];
    for (env, name) in cases {
        let (code, _, stderr) = run_edge(&[], env);
        assert_eq!(code, 2, "{env:?}: {stderr}");
        assert!(
            stderr.contains(name),
            "{env:?}: stderr does not name {name}: {stderr}"
        );
    }
    let (code, _, stderr) = run_edge(&["--config", "/nonexistent.toml"], &[]);
    assert!(code != 0 && stderr.contains("--config"), "{stderr}");
}

#[test]
fn print_config_shows_layers_and_masks_secrets() {
    let dir = std::env::temp_dir().join(format!("roomcast-print-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("edge.toml");
    std::fs::write(&file, "[history]\nmax_len = 77\n[server]\nport = 9001\n").unwrap();
    let (code, out, err) = run_edge(
        &["--config", file.to_str().unwrap(), "--print-config"],
        &[
            ("JWT_SECRET", "topsecret-topsecret-topsecret-topsecret"),
            ("PORT", "9002"),
            ("ENVIRONMENT", "production"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_len = 77"), "file layer: {out}");
    assert!(out.contains("port = 9002"), "flat env wins: {out}");
    assert!(
        out.contains("allow_websocket_auto_rooms = true"),
        "production default resolved: {out}"
    );
    assert!(
        !out.contains("topsecret") && out.contains("jwt_secret = \"********\""),
        "{out}"
    );
}

#[tokio::test]
async fn metrics_on_a_separate_port() {
    let port = roomcast_tests::free_port().to_string();
    let edge = Edge::start(&[("METRICS_PORT", port.as_str())]).await;
    let metrics = Edge::attach(port.parse().unwrap());
    let r = metrics.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("roomcast_connections "), "{}", r.body);
    assert_eq!(
        metrics.get("/users").await.status,
        404,
        "only metrics there"
    );
    assert_eq!(
        edge.get("/metrics").await.status,
        404,
        "and no longer on the public port"
    );
}

#[tokio::test]
async fn healthcheck_flag_for_container_images() {
    let edge = Edge::start(&[]).await;
    let port = edge.port.to_string();
    let (code, _, err) = run_edge(&["--healthcheck"], &[("PORT", port.as_str())]);
    assert_eq!(code, 0, "{err}");
    drop(edge);
    let (code, _, _) = run_edge(&["--healthcheck"], &[("PORT", port.as_str())]);
    assert_eq!(code, 1, "nothing listening");
}

#[tokio::test]
async fn the_chat_page_and_client_module_are_served() {
    let edge = Edge::start(&[]).await;
    for path in ["/", "/chat"] {
        let r = edge.get(path).await;
        assert_eq!(r.status, 200);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            r.body
                .contains("import { RoomcastSession } from \"/session.js\"")
        );
    }
    for (path, class) in [
        ("/client.js", "export class RoomcastClient"),
        ("/session.js", "export class RoomcastSession"),
    ] {
        let js = edge.get(path).await;
        assert_eq!(js.status, 200, "{path}");
        assert!(
            js.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(js.body.contains(class), "{path}");
    }
    // session.js builds on client.js, as a browser resolves it.
    let session = edge.get("/session.js").await.body;
    assert!(session.contains("from \"./client.js\""));
}
