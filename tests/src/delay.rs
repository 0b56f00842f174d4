//! A TCP proxy that delays each direction (`roomcast-loadgen delay-proxy`),
//! to put a server a set time away, or holds one kind of request until the
//! test releases it; stopped by PID when dropped.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::{announced_port_and_lines, binary};

/// A running delay proxy.
#[derive(Debug)]
pub struct DelayProxy {
    pub port: u16,
    child: Child,
    /// What the proxy prints after it listens (`held` per held request).
    lines: UnboundedReceiver<String>,
}

impl DelayProxy {
    /// Forwards a port of its own to `127.0.0.1:upstream`, each direction
    /// `delay` late.
    pub async fn start(upstream: u16, delay: Duration) -> DelayProxy {
        Self::spawn(upstream, delay, None).await
    }

    /// Forwards with no delay, but holds every request towards the upstream
    /// that contains `pattern` (and what follows it on that connection)
    /// until [`DelayProxy::release`].
    pub async fn holding(upstream: u16, pattern: &str) -> DelayProxy {
        Self::spawn(upstream, Duration::ZERO, Some(pattern)).await
    }

    async fn spawn(upstream: u16, delay: Duration, hold: Option<&str>) -> DelayProxy {
        let mut cmd = Command::new(binary("roomcast-loadgen"));
        cmd.args(["delay-proxy", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("127.0.0.1:{upstream}"))
            .arg("--delay-ms")
            .arg(format!("{}", delay.as_secs_f64() * 1000.0))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(p) = hold {
            cmd.args(["--hold-match", p]);
        }
        let mut child = cmd.spawn().expect("spawn roomcast-loadgen delay-proxy");
        let (port, lines) = announced_port_and_lines(&mut child, "delay-proxy").await;
        DelayProxy { port, child, lines }
    }

    /// Waits until the proxy holds a request.
    pub async fn wait_held(&mut self) {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line == "held" {
                    return;
                }
            }
            panic!("the delay proxy exited");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("the delay proxy held nothing");
    }

    /// Lets every held request through; nothing is held after.
    pub fn release(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(b"release\n")
            .and_then(|()| stdin.flush())
            .expect("release the delay proxy");
    }

    /// A `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
