//! History retention per room-name pattern, through the binary: a room a
//! rule names keeps what the rule says, others the default; a bad rule
//! stops start-up naming the setting.

use roomcast_tests::{Client, Edge};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_keep_what_their_rule_says() {
    let edge = Edge::start(&[
        ("ALLOW_WEBSOCKET_AUTO_ROOMS", "true"),
        ("ALLOW_JOIN_AUTO_USERS", "true"),
        ("ROOMCAST__HISTORY__MAX_LEN", "4"),
        (
            "ROOMCAST__HISTORY__RETENTION",
            "support-*: len=2; big-*: len=100",
        ),
    ])
    .await;
    for (room, sent, kept) in [("support-1", 5, 2), ("lobby", 6, 4), ("big-1", 6, 6)] {
        let (mut c, _, _) = Client::join(&edge.ws_url(&format!("/ws/{room}/alice"))).await;
        for i in 0..sent {
            c.send_json(&json!({"type": "message", "content": format!("m{i}")}))
                .await;
            c.next_of("ack").await;
        }
        let page = edge.get(&format!("/rooms/{room}/messages?limit=100")).await;
        let offsets: Vec<u64> = page
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m: &Value| m["offset"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = ((sent - kept + 1)..=sent).collect();
        assert_eq!(offsets, want, "{room}");
    }
}

#[test]
fn a_bad_rule_stops_start_up_naming_the_setting() {
    let out = std::process::Command::new(roomcast_tests::binary("roomcast-edge"))
        .env_clear()
        .env("ROOMCAST__HISTORY__RETENTION", "support-*: len=2 age=3w")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("history.retention") && err.contains("unit"),
        "{err}"
    );
}
