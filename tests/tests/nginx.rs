//! Behind a real nginx (deploy/nginx.conf, upstreams pointed at loopback
//! ports): clients land on different nodes and see each other; a rolling
//! restart (SIGTERM each node in turn, start it again) keeps everyone
//! chatting: each client is closed 1012, reconnects through nginx with
//! `since`, and no acknowledged message is lost or duplicated.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast_tests::{Client, Edge, RedisServer, free_port};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

struct Nginx {
    port: u16,
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs nginx with the repo's config, its upstreams rewritten to `edges`.
async fn start_nginx(edges: &[u16]) -> Nginx {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("roomcast-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf"))
            .unwrap();
    let mut rendered = String::new();
    let mut next = edges.iter();
    for line in conf.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("server edge") {
            let opts = rest.split_once(' ').map_or("", |(_, o)| o);
            rendered += &format!(
                "        server 127.0.0.1:{} {opts}\n",
                next.next().expect("as many edges as upstreams")
            );
        } else if line.trim() == "listen 80;" {
            rendered += &format!("        listen 127.0.0.1:{port};\n");
        } else {
            rendered += line;
            rendered.push('\n');
        }
    }
    assert!(next.next().is_none(), "every edge is an upstream");
    let file = dir.join("nginx.conf");
    std::fs::write(&file, rendered).unwrap();
    let child = Command::new("nginx")
        .args(["-p", dir.to_str().unwrap(), "-c", file.to_str().unwrap()])
        .args([
            "-g",
            &format!(
                "daemon off; pid {}/nginx.pid; error_log {}/error.log;",
                dir.display(),
                dir.display()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx (scripts/test.sh installs it)");
    let lb = Edge::attach(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lb.try_status("/health").await != Some(200) {
        assert!(Instant::now() < deadline, "nginx did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Nginx { port, child, dir }
}

/// What one resilient client saw.
#[derive(Debug, Default)]
struct Seen {
    /// The room's offset when this client first connected: it is owed
    /// everything after it.
    start: Option<u64>,
    received: Vec<u64>,
    acked: Vec<u64>,
    closes: Vec<String>,
    nodes: Vec<String>,
}

/// Chats through the load balancer until `quiet` (then only listens) and
/// `stop`, reconnecting with `since` whenever its socket is closed.
async fn chatter(
    lb: u16,
    room: String,
    user: String,
    quiet: CancellationToken,
    stop: CancellationToken,
) -> Seen {
    let mut seen = Seen::default();
    let mut last = 0u64;
    let mut n = 0;
    'outer: loop {
        let since = if last > 0 {
            format!("?since={last}")
        } else {
            String::new()
        };
        let url = format!("ws://127.0.0.1:{lb}/ws/{room}/{user}{since}");
        let mut c = match Client::connect_with(&url, &[]).await {
            Ok(c) => c,
            Err(e) => {
                seen.closes.push(format!("connect failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(60));
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = c.ws.close(None).await;
                    break 'outer;
                }
                _ = tick.tick(), if !quiet.is_cancelled() => {
                    n += 1;
                    let frame = json!({"type": "message", "content": format!("{user} #{n}"), "client_id": format!("{user}-{n}")});
                    if c.ws.send(Message::Text(frame.to_string().into())).await.is_err() {
                        continue;
                    }
                }
                msg = c.ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let f: Value = serde_json::from_str(&t).unwrap();
                        match f["type"].as_str().unwrap() {
                            "connected" => {
                                seen.nodes.push(f["node_id"].as_str().unwrap().to_owned());
                                seen.start.get_or_insert(f["offset"].as_u64().unwrap());
                            }
                            "message" => {
                                let o = f["offset"].as_u64().unwrap();
                                seen.received.push(o);
                                last = last.max(o);
                            }
                            "ack" => seen.acked.push(f["offset"].as_u64().unwrap()),
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(f))) => {
                        seen.closes.push(f.map_or("none".into(), |f| u16::from(f.code).to_string()));
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        seen.closes.push(format!("abrupt: {e}"));
                        break;
                    }
                    None => {
                        seen.closes.push("ended".into());
                        break;
                    }
                },
            }
        }
        // Reconnect at once, as a client told 1012 should.
    }
    seen
}

fn as_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_nginx_loses_nothing() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let ids = ["lb-1", "lb-2", "lb-3"];
    let env = |id: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_URL", url.clone()),
            ("NODE_ID", id.to_owned()),
            ("ENVIRONMENT", "production".to_owned()),
            ("ALLOW_UNAUTHENTICATED", "true".to_owned()),
            ("ROOMCAST__SERVER__SHUTDOWN_GRACE_MS", "5000".to_owned()),
        ]
    };
    let mut edges = Vec::new();
    for id in ids {
        let e = Edge::start(&as_refs(&env(id))).await;
        e.wait_ready().await;
        edges.push(e);
    }
    let ports: Vec<u16> = edges.iter().map(|e| e.port).collect();
    let nginx = start_nginx(&ports).await;
    let lb = Edge::attach(nginx.port);

    let room = "rolling".to_owned();
    let (quiet, stop) = (CancellationToken::new(), CancellationToken::new());
    let mut tasks = Vec::new();
    for i in 0..6 {
        tasks.push(tokio::spawn(chatter(
            nginx.port,
            room.clone(),
            format!("user-{i}"),
            quiet.clone(),
            stop.clone(),
        )));
        // Connect one by one, so round robin spreads them.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everyone is online, cluster-wide, as seen through the balancer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = lb.get(&format!("/rooms/{room}/presence")).await;
        if r.status == 200 && r.json()["users"].as_array().map_or(0, Vec::len) == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence through nginx: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    for (i, id) in ids.iter().enumerate() {
        edges[i].sigterm();
        let status = edges[i].wait_exit(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "{id} drained and exited cleanly: {status:?}"
        );
        edges[i] = Edge::start_on(ports[i], &as_refs(&env(id))).await;
        edges[i].wait_ready().await;
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Stop sending, let the last messages arrive, then stop listening.
    quiet.cancel();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }

    let nginx_log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
    let first_nodes: BTreeSet<&str> = results.iter().map(|s| s.nodes[0].as_str()).collect();
    assert!(
        first_nodes.len() >= 2,
        "clients landed on different nodes: {first_nodes:?}"
    );
    let acked: BTreeSet<u64> = results
        .iter()
        .flat_map(|s| s.acked.iter().copied())
        .collect();
    assert!(
        acked.len() > 50,
        "the clients kept chatting ({} acked)",
        acked.len()
    );
    let max = *acked.iter().max().unwrap();
    for (i, s) in results.iter().enumerate() {
        assert!(
            s.closes.iter().any(|c| c == "1012"),
            "client {i} was drained at least once: {:?}",
            s.closes
        );
        assert!(
            s.closes.iter().all(|c| c == "1012"),
            "client {i}: every close was a drain (no error, no abrupt end): {:?}\nnginx error log:\n{nginx_log}",
            s.closes
        );
        let received: Vec<u64> = s.received.iter().copied().filter(|o| *o <= max).collect();
        let expected: Vec<u64> = (s.start.unwrap() + 1..=max).collect();
        let got: BTreeSet<u64> = received.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .copied()
            .filter(|o| !got.contains(o))
            .collect();
        let dups = received.len() - got.len();
        assert!(
            missing.is_empty() && dups == 0,
            "client {i}: missing {missing:?}, {dups} duplicates; closes {:?}; nodes {:?}; around the gap: {:?}",
            s.closes,
            s.nodes,
            missing.first().map(|m| s
                .received
                .iter()
                .position(|o| o + 1 == *m)
                .map(|p| &s.received[p.saturating_sub(3)..(p + 4).min(s.received.len())]))
        );

        assert_eq!(
            received, expected,
            "client {i}: every message once, in order, across reconnects"
        );
        assert!(s.nodes.len() >= 2, "client {i} reconnected: {:?}", s.nodes);
    }
}
