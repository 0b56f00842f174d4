//! The load generator works against a real node: small runs of each
//! scenario complete with a report that says everything arrived. (Speed is
//! measured by bench/bench.sh, never asserted here.)

use std::process::Command;

use roomcast_tests::{Edge, binary};
use serde_json::Value;

fn loadgen(args: &[&str]) -> Value {
    let out = Command::new(binary("roomcast-loadgen"))
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{stdout}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_against_a_real_node() {
    let edge = Edge::start(&[
        ("ROOMCAST__WEBSOCKET__RATE_PER_SEC", "1000"),
        ("ROOMCAST__WEBSOCKET__RATE_BURST", "1000"),
        ("ROOMCAST__LIMITS__USER_FRAME_RATE_PER_SEC", "1000"),
        ("ROOMCAST__LIMITS__USER_FRAME_BURST", "1000"),
        ("ROOMCAST__LIMITS__CONNECTIONS_PER_USER", "100000"),
        ("ROOMCAST__LIMITS__CONNECTIONS_PER_ADDRESS", "100000"),
        ("ROOMCAST__LIMITS__REST_RATE_PER_SEC", "100000"),
        ("ROOMCAST__LIMITS__REST_BURST", "100000"),
    ])
    .await;
    let url = format!("http://127.0.0.1:{}", edge.port);
    // Rooms and users over REST (the node runs with auto-create off).
    let fan = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            loadgen(&[
                "fanout",
                "--urls",
                &url,
                "--members",
                "20",
                "--publishers",
                "2",
                "--rate",
                "20",
                "--duration",
                "1",
                "--drain",
                "1",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(fan["ok"], true, "{fan}");
    let expected = fan["deliveries_expected"].as_u64().unwrap();
    assert!(expected >= 20 * 30, "{fan}");
    assert_eq!(fan["deliveries_received"].as_u64(), Some(expected));
    assert_eq!(
        (fan["lost"].as_u64(), fan["duplicated"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(fan["latency_p99_ms"].as_f64().unwrap() > 0.0);

    let idle = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            loadgen(&[
                "idle",
                "--urls",
                &url,
                "--connections",
                "100",
                "--hold",
                "0.5",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (idle["ok"].as_bool(), idle["connections"].as_u64()),
        (Some(true), Some(100)),
        "{idle}"
    );

    let churn = tokio::task::spawn_blocking(move || {
        loadgen(&[
            "churn",
            "--urls",
            &url,
            "--connections",
            "20",
            "--rate",
            "20",
            "--duration",
            "1.5",
            "--msg-rate",
            "10",
        ])
    })
    .await
    .unwrap();
    assert_eq!(churn["ok"], true, "{churn}");
    assert!(churn["connects"].as_u64().unwrap() >= 20, "{churn}");
}

#[test]
fn the_floor_scenario_writes_every_round_to_every_socket() {
    let r = loadgen(&[
        "floor",
        "--connections",
        "20",
        "--rate",
        "50",
        "--duration",
        "1",
        "--size",
        "100",
    ]);
    assert_eq!(r["scenario"], "floor");
    let writes = r["writes"].as_u64().unwrap();
    assert!(writes > 0 && writes.is_multiple_of(20), "whole rounds: {r}");
    assert!(r["bytes_received"].as_u64().unwrap() <= writes * 100);
    assert!(r["cpu_seconds_per_million_writes"].as_f64().is_some());
}
