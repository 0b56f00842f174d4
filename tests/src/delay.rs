//! A TCP proxy that delays each direction (`roomcast-loadgen delay-proxy`),
//! to put a server a set time away; stopped by PID when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{announced_port, binary};

/// A running delay proxy.
#[derive(Debug)]
pub struct DelayProxy {
    pub port: u16,
    child: Child,
}

impl DelayProxy {
    /// Forwards a port of its own to `127.0.0.1:upstream`, each direction
    /// `delay` late.
    pub async fn start(upstream: u16, delay: Duration) -> DelayProxy {
        let mut child = Command::new(binary("roomcast-loadgen"))
            .args(["delay-proxy", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(format!("127.0.0.1:{upstream}"))
            .arg("--delay-ms")
            .arg(format!("{}", delay.as_secs_f64() * 1000.0))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn roomcast-loadgen delay-proxy");
        let port = announced_port(&mut child, "delay-proxy").await;
        DelayProxy { port, child }
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
