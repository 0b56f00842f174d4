//! Harness for end-to-end tests: runs an edge node in this process on port 0
//! ([`Edge::in_process`], for tests that need no other process), or starts
//! the real `roomcast-edge` binary, which binds port 0 itself and says where
//! it listens (no port is picked free and released first, so none can be
//! taken in between), and talks to it with a small HTTP client and a real
//! WebSocket client. Processes are stopped by PID when the handle drops.
//!
//! The binaries are built once per test process with `cargo build` (a no-op
//! when they are fresh): a test of the binary must never run a stale one.

#![allow(clippy::print_stdout)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// The workspace's target directory, found from this test executable
/// (`target/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

/// Path to a workspace binary, built once per test process so it is never
/// stale (cargo does nothing when it is fresh).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        cmd.current_dir(root)
            .args(["build", "--workspace", "--bins", "--quiet"]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    dir.join(name)
}

/// A free TCP port on 127.0.0.1 (bound then released: another process may
/// take it before it is used, so only for servers that cannot bind port 0
/// themselves, and with a retry where they fail to start).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Path to a file under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The port a process we started says it listens on: its first line on
/// standard output is `listening on ADDR` (stdout must be piped). The rest of
/// its output is drained, so it never blocks on a full pipe.
pub async fn announced_port(child: &mut Child, name: &str) -> u16 {
    announced_port_and_lines(child, name).await.0
}

/// [`announced_port`], and the lines the process prints after that one.
pub async fn announced_port_and_lines(
    child: &mut Child,
    name: &str,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let stdout = child.stdout.take().expect("piped stdout");
    // Read on a thread: the pipe is blocking.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (line_tx, line_rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let _ = tx.send(first);
        // Keep reading after the receiver is gone: the pipe must not fill.
        for line in lines.map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    let line = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .unwrap_or_else(|_| panic!("{name} did not say where it listens"))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{name} exited before listening"));
    let port = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"))
        .port();
    (port, line_rx)
}

/// A running edge node: a `roomcast-edge` process, or one in this process.
#[derive(Debug)]
pub struct Edge {
    pub port: u16,
    child: Option<Child>,
    /// Stops an in-process node.
    stop: Option<tokio_util::sync::CancellationToken>,
    /// The node's server API key, if it was given one: the `user` and `room`
    /// helpers create through it (with auth on only the backend may).
    key: Option<String>,
}

/// The server API key among a node's settings.
fn key_of(env: &[(&str, &str)]) -> Option<String> {
    env.iter()
        .find(|(k, _)| matches!(*k, "PUBLISH_API_KEY" | "SERVER_API_KEY"))
        .map(|(_, v)| (*v).to_owned())
}

impl Edge {
    /// Runs an edge node inside this process, on a port the system picks,
    /// with settings from these variables (as the binary would read them,
    /// nothing from this process's environment) and returns once it serves.
    /// Stopped (drained) when the handle drops. For tests that need no other
    /// process and no signals.
    pub async fn in_process(env: &[(&str, &str)]) -> Edge {
        use roomcast_edge::{Deps, Settings};
        let key = key_of(env);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let settings = Settings::load(None, &env).expect("valid settings");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let port = listener.local_addr().expect("bound").port();
        let stop = tokio_util::sync::CancellationToken::new();
        let deps = if settings.redis.url.is_some() {
            // The backend's tasks stop with the node.
            Deps::redis(settings, stop.clone()).expect("redis deps").0
        } else {
            Deps::memory(settings).expect("memory deps")
        };
        tokio::spawn(roomcast_edge::run(listener, deps, stop.clone()));
        let edge = Edge {
            port,
            child: None,
            stop: Some(stop),
            key,
        };
        edge.wait_healthy().await;
        edge
    }

    /// Starts an edge process with these environment variables (on top of a
    /// clean environment) and waits until `/health` answers.
    pub async fn start(env: &[(&str, &str)]) -> Edge {
        Self::start_bin("roomcast-edge", env).await
    }

    /// Starts an edge on a given port (e.g. to restart one where it was).
    pub async fn start_on(port: u16, env: &[(&str, &str)]) -> Edge {
        Self::spawn("roomcast-edge", port, env).await
    }

    /// Starts another of the workspace's servers (e.g. `roomcast-presence`).
    pub async fn start_bin(name: &str, env: &[(&str, &str)]) -> Edge {
        Self::spawn(name, 0, env).await
    }

    /// Spawns `name` listening on `port` (0: any; the process prints the
    /// address it bound as `listening on ADDR`).
    async fn spawn(name: &str, port: u16, env: &[(&str, &str)]) -> Edge {
        let mut cmd = Command::new(binary(name));
        cmd.env_clear()
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env(
                "RUST_LOG",
                std::env::var("EDGE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let port = announced_port(&mut child, name).await;
        let edge = Edge {
            port,
            child: Some(child),
            stop: None,
            key: key_of(env),
        };
        edge.wait_healthy().await;
        edge
    }

    async fn wait_healthy(&self) {
        let edge = self;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = edge.try_request("GET", "/health", &[], None).await
                && r.status == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "edge did not become healthy");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A handle on a port served by some other process (no process owned).
    pub fn attach(port: u16) -> Edge {
        Edge {
            port,
            child: None,
            stop: None,
            key: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self) {
        self.wait_ready_status(200, Duration::from_secs(20)).await;
    }

    /// Waits until `/ready` answers `status`; how long it took.
    pub async fn wait_ready_status(&self, status: u16, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Ok(r) = self.try_request("GET", "/ready", &[], None).await
                && r.status == status
            {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "/ready did not answer {status} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kills the process at once (SIGKILL): no drain, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (e.g. `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGTERM (graceful drain).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `within`; its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    async fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Resp, String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body.unwrap_or("").to_owned())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// An HTTP request; panics if the node cannot be reached.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        self.try_request(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// The status of `GET path`, or `None` if nothing answers yet.
    pub async fn try_status(&self, path: &str) -> Option<u16> {
        self.try_request("GET", path, &[], None)
            .await
            .ok()
            .map(|r| r.status)
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.request("POST", path, &[], Some(&body.to_string()))
            .await
    }

    /// Headers that make a request the application backend's (none when
    /// the node has no server key).
    pub fn server_auth(&self) -> Vec<(&'static str, String)> {
        self.key
            .iter()
            .map(|k| ("authorization", format!("Bearer {k}")))
            .collect()
    }

    /// A POST as the application backend (with the server key if any).
    pub async fn post_as_server(&self, path: &str, body: &Value) -> Resp {
        let auth = self.server_auth();
        let headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.request("POST", path, &headers, Some(&body.to_string()))
            .await
    }

    /// Creates a user over REST (as the backend); its id.
    pub async fn user(&self, name: &str) -> String {
        let r = self
            .post_as_server("/users", &serde_json::json!({"username": name}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().expect("id").to_owned()
    }

    /// Creates a room over REST (as the backend); its id.
    pub async fn room(&self, name: &str) -> String {
        let r = self
            .post_as_server("/rooms", &serde_json::json!({"name": name}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["id"].as_str().expect("id").to_owned()
    }

    /// The value of a metric sample, e.g. `roomcast_connections` or
    /// `roomcast_connections_closed_total{reason="slow_consumer"}`; 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self.get("/metrics").await.body;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

mod client;
mod cluster;
mod delay;
mod redis;
mod sentinel;
mod tokens;
pub use client::{Client, Closed};
pub use cluster::cluster;
pub use delay::DelayProxy;
pub use redis::RedisServer;
pub use sentinel::{MASTER, Sentinel, sentinels_env};
pub use tokens::{hs256, now, rs256};
