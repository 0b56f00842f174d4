//! `redis-server --sentinel` processes of our own, on free loopback ports,
//! watching a primary as the master group `roomcast`; stopped by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{RedisServer, free_port};

/// The master group's name the sentinels use.
pub const MASTER: &str = "roomcast";

/// One sentinel. Watching a primary that requires a password, it requires
/// the same one itself (`requirepass`, `sentinel sentinel-pass`).
#[derive(Debug)]
pub struct Sentinel {
    pub port: u16,
    password: Option<String>,
    dir: PathBuf,
    child: Child,
}

impl Sentinel {
    /// Starts `n` sentinels watching `primary` with a quorum of a majority,
    /// quick to act (down after 1 s), and waits until each knows the others
    /// and the replicas, so a failover can be voted.
    pub async fn start_group(n: usize, primary: &RedisServer, replicas: usize) -> Vec<Sentinel> {
        let mut group = Vec::new();
        for _ in 0..n {
            group.push(Self::start(primary, n / 2 + 1).await);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for s in &group {
            loop {
                let master = s.cli(&["SENTINEL", "MASTER", MASTER]);
                let field = |name: &str| {
                    let lines: Vec<&str> = master.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0)
                };
                if field("num-other-sentinels") == n - 1 && field("num-slaves") == replicas {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the sentinels never found each other: {master}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        group
    }

    /// Sentinel needs a config file it may rewrite; a port taken by another
    /// process in between makes it exit, and another port is tried.
    async fn start(primary: &RedisServer, quorum: usize) -> Sentinel {
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("roomcast-sentinel-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("sentinel dir");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} {quorum}\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n{auth}",
                    dir = dir.display(),
                    primary = primary.port,
                    auth = primary.password.as_ref().map_or(String::new(), |p| {
                        format!(
                            "sentinel auth-pass {MASTER} {p}\nrequirepass {p}\nsentinel sentinel-pass {p}\n"
                        )
                    }),
                ),
            )
            .expect("sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .args(["--sentinel", "--loglevel", "warning"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (sentinel mode)");
            let mut s = Sentinel {
                port,
                password: primary.password.clone(),
                dir,
                child,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if s.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                // Ours: it watches our primary's port.
                let addr = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]);
                if addr.ends_with(&primary.port.to_string()) {
                    return s;
                }
                assert!(Instant::now() < deadline, "the sentinel did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no sentinel started on any of 5 free ports");
    }

    /// Runs `redis-cli` against this sentinel; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The primary's port as this sentinel sees it.
    pub fn primary_port(&self) -> Option<u16> {
        self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `REDIS_SENTINELS` for `group`.
pub fn sentinels_env(group: &[Sentinel]) -> String {
    group
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect::<Vec<_>>()
        .join(",")
}
