//! Observability that stays honest: the alert rules pass promtool's checks
//! and unit tests, and a real Prometheus scraping live nodes (two edges and
//! the presence service on one Redis, with traffic flowing) evaluates every
//! dashboard query with data and every alert rule without error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roomcast_tests::{Client, Edge, RedisServer, cluster, free_port};
use serde_json::{Value, json};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (the prometheus package; scripts/test.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let dir = repo("deploy/prometheus");
    let text = promtool(&["check", "rules", dir.join("alerts.yml").to_str().unwrap()]);
    assert!(text.contains("9 rules found"), "{text}");
    promtool(&[
        "test",
        "rules",
        dir.join("alerts_test.yml").to_str().unwrap(),
    ]);
    promtool(&[
        "check",
        "config",
        dir.join("prometheus.yml").to_str().unwrap(),
    ]);
}

/// A Prometheus of our own, killed on drop.
struct Prometheus {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(edges: &[u16], presence: Option<u16>) -> Prometheus {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roomcast-prom-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let targets = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: roomcast-edge\n    static_configs:\n      - targets: [{}]\n",
        repo("deploy/prometheus/alerts.yml").display(),
        targets(edges),
    );
    if let Some(p) = presence {
        config.push_str(&format!(
            "  - job_name: roomcast-presence\n    static_configs:\n      - targets: [{}]\n",
            targets(&[p])
        ));
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (scripts/test.sh installs it)");
    Prometheus { port, child, dir }
}

fn encode(q: &str) -> String {
    percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn query(prom: &Edge, expr: &str) -> Result<Vec<Value>, String> {
    let r = prom
        .get(&format!("/api/v1/query?query={}", encode(expr)))
        .await;
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The metric names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("roomcast_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every dashboard query, run against `prom`: those that fail or return no
/// series.
async fn dashboard_gaps(prom: &Edge) -> Vec<String> {
    let mut failures = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("grafana/dashboards/roomcast.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {} uses the datasource variable",
                panel["title"]
            );
            let concrete = expr
                .replace("$node", ".*")
                .replace("$__rate_interval", "15s");
            match query(prom, &concrete).await {
                Ok(r) if r.is_empty() => {
                    failures.push(format!("{}: no series for {expr}", panel["title"]))
                }
                Ok(_) => checked += 1,
                Err(e) => failures.push(format!("{}: {expr}: {e}", panel["title"])),
            }
        }
    }
    assert!(
        checked + failures.len() >= 20,
        "only {checked} queries checked"
    );
    failures
}

/// Starts Prometheus scraping `edges` (and `presence`) and waits until it has
/// scraped every target twice (it applies new targets only every few seconds,
/// so "ready" is not "scraping").
async fn scraped_prometheus(edges: &[u16], presence: Option<u16>) -> (Prometheus, Edge) {
    let process = start_prometheus(edges, presence);
    let prom = Edge::attach(process.port);
    let targets = edges.len() + usize::from(presence.is_some());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if prom.try_status("/-/ready").await == Some(200)
            && let Ok(r) = query(&prom, "count_over_time(up[1m]) >= 2").await
            && r.len() == targets
        {
            return (process, prom);
        }
        assert!(Instant::now() < deadline, "prometheus is not scraping");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A healthy cluster in its default shape (edges only, no presence service)
/// with traffic and no errors of any kind: every panel of the dashboard has
/// data (zeros where nothing went wrong), and each node's exposition passes
/// `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_leaves_no_dashboard_panel_empty() {
    let redis = RedisServer::start().await;
    let nodes = cluster(&redis, 2, &[]).await;
    let (_process, prom) = scraped_prometheus(&[nodes[0].port, nodes[1].port], None).await;
    let room = nodes[0].room("calm").await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let u = node.user(&format!("u{i}")).await;
        clients.push(
            Client::join(&node.ws_url(&format!("/ws/{room}/{u}")))
                .await
                .0,
        );
    }
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(6) {
        clients[n % 2]
            .send_json(&json!({"content": format!("m{n}"), "client_id": format!("c{n}")}))
            .await;
        n += 1;
        for c in clients.iter_mut() {
            while c.next_json_within(Duration::from_millis(1)).await.is_some() {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failures = dashboard_gaps(&prom).await;
    assert!(
        failures.is_empty(),
        "{} empty or failing panels:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for node in &nodes {
        let text = node.get("/metrics").await.body;
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_evaluates_against_live_nodes() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["obs-a", "obs-b"] {
        let e = Edge::start(&[("REDIS_URL", url.as_str()), ("NODE_ID", id)]).await;
        e.wait_ready().await;
        nodes.push(e);
    }
    let presence = Edge::start_bin("roomcast-presence", &[("REDIS_URL", url.as_str())]).await;
    let (_process, prom) =
        scraped_prometheus(&[nodes[0].port, nodes[1].port], Some(presence.port)).await;

    // Traffic on both nodes, plus the events the health panels show.
    let room = nodes[0].room("busy").await;
    let mut clients = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            let u = node.user(&format!("u{i}{j}")).await;
            clients.push(
                Client::join(&node.ws_url(&format!("/ws/{room}/{u}")))
                    .await
                    .0,
            );
        }
    }
    let refused = nodes[1].user("r").await;
    let mut nope = Client::connect(&nodes[1].ws_url(&format!("/ws/no-room/{refused}"))).await;
    assert_eq!(nope.closed().await.code(), Some(4004));
    let flood_user = nodes[0].user("flooder").await;
    let (mut flooder, _, _) =
        Client::join(&nodes[0].ws_url(&format!("/ws/{room}/{flood_user}"))).await;
    for _ in 0..100 {
        flooder.send_text(r#"{"type":"ping"}"#).await;
    }
    assert_eq!(flooder.closed().await.code(), Some(1008));
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let c = &mut clients[n % 4];
        c.send_json(&json!({"content": format!("m{n}")})).await;
        n += 1;
        if n == 10 {
            let u = nodes[1].user("late").await;
            let (mut late, _, _) =
                Client::join(&nodes[1].ws_url(&format!("/ws/{room}/{u}?since=1"))).await;
            late.ws.close(None).await.unwrap();
        }
        // Keep every client's queue drained.
        for c in clients.iter_mut() {
            while c.next_json_within(Duration::from_millis(1)).await.is_some() {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut failures = dashboard_gaps(&prom).await;
    // Every alert rule was evaluated by Prometheus itself without error, and
    // every metric it names exists.
    let rules: Value = serde_json::from_str(&prom.get("/api/v1/rules").await.body).unwrap();
    let mut alerts = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerts += 1;
            let name = rule["name"].as_str().unwrap();
            if rule["health"] != "ok" {
                failures.push(format!(
                    "alert {name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            for metric in metric_names(rule["query"].as_str().unwrap()) {
                match query(&prom, &format!("count({{__name__=\"{metric}\"}})")).await {
                    Ok(r) if !r.is_empty() => {}
                    other => failures.push(format!(
                        "alert {name}: metric {metric} has no series ({other:?})"
                    )),
                }
            }
            // With a healthy cluster, nothing fires.
            if rule["state"] == "firing" {
                failures.push(format!("alert {name} fires on a healthy cluster"));
            }
        }
    }
    assert_eq!(alerts, 9);
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
