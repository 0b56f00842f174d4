//! A `redis-server` per test, on a free loopback port, stopped by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::free_port;

/// A `redis-server` of our own on a free loopback port, stopped by PID.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    /// Further `redis-server` arguments (e.g. `--replicaof`).
    extra: Vec<String>,
    /// `requirepass` (and `masterauth`), if any.
    pub password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    pub async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// Starts a server that persists every write (append-only file), so a
    /// restart keeps the data, as a production Redis would.
    pub async fn start_persistent() -> RedisServer {
        Self::start_with(true).await
    }

    /// Starts a server that requires `password` (and uses it towards its
    /// primary, should it become a replica).
    pub async fn start_with_password(password: &str) -> RedisServer {
        Self::start_args(false, Vec::new(), Some(password.to_owned())).await
    }

    /// Starts a replica of `primary` (with its password) and waits until it
    /// is in sync.
    pub async fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let extra = vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ];
        let replica = Self::start_args(false, extra, primary.password.clone()).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    async fn start_with(persistent: bool) -> RedisServer {
        Self::start_args(persistent, Vec::new(), None).await
    }

    /// redis-server cannot bind port 0 and report it, so a free port is
    /// picked and released first; if another process takes it in between,
    /// our server fails to start (or another answers there), and the start
    /// is tried again on another port.
    async fn start_args(
        persistent: bool,
        mut extra: Vec<String>,
        password: Option<String>,
    ) -> RedisServer {
        if let Some(p) = &password {
            extra.extend([
                "--requirepass".into(),
                p.clone(),
                "--masterauth".into(),
                p.clone(),
            ]);
        }
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!(
                "roomcast-redis-{}-{port}-{}",
                std::process::id(),
                uuid_like()
            ));
            std::fs::create_dir_all(&dir).expect("redis dir");
            let mut server = RedisServer {
                port,
                dir,
                persistent,
                extra: extra.clone(),
                password: password.clone(),
                child: None,
            };
            if server.spawn().await {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Starts the process; true once it answers as itself on its port.
    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--dir", self.dir.to_str().expect("utf-8 path")])
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .args(&self.extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server must be installed (scripts/test.sh installs it)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.child = None;
                return false;
            }
            // Ours, not another server that took the port: same directory.
            if self.ping().await
                && self
                    .cli(&["CONFIG", "GET", "dir"])
                    .contains(self.dir.to_str().unwrap())
            {
                return true;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the server answers PING.
    pub async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let (ask, answer) = match &self.password {
            Some(p) => (format!("AUTH {p}\r\nPING\r\n"), "+OK\r\n+PONG\r\n"),
            None => ("PING\r\n".to_owned(), "+PONG\r\n"),
        };
        if s.write_all(ask.as_bytes()).await.is_err() {
            return false;
        }
        let mut buf = vec![0u8; answer.len()];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
            Ok(Ok(_)) if buf == answer.as_bytes()
        )
    }

    /// Runs `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        let out = cmd
            .args(args)
            .output()
            .expect("redis-cli (installed with redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Sends a signal by name (`STOP` freezes it with its sockets open,
    /// `CONT` thaws it).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "redis-server did not restart on its port"
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A short random suffix (directories must not collide across restarts of
/// the test process on the same port).
fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:x}", h.finish())
}
