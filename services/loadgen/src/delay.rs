//! `roomcast-loadgen delay-proxy`: a TCP proxy that delays each direction by
//! a set time, so tests and the benchmark can put Redis (or anything) a
//! millisecond or ten away on a machine without `tc netem`.
//!
//! Every chunk read from one side is written to the other `delay` after it
//! was read, in order: latency is added, throughput is not cut (chunks in
//! flight overlap). It listens on `--listen` (port 0: any; the address is
//! printed as `listening on ADDR`) and forwards each connection to
//! `--upstream`, until killed.
//!
//! For tests that need one thing slow on purpose, `--hold-match TEXT` holds
//! a chunk sent towards the upstream that contains `TEXT` (and everything
//! after it on that connection, as TCP would) until a line `release` comes
//! on standard input; each held chunk is reported as a line `held` on
//! standard output, so a test knows the request is in flight. After the
//! release nothing is held again. A match must fall within one read chunk,
//! which holds for the small requests it is meant for (a Redis command
//! naming a key).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Chunks in flight per direction before reading waits (bounds memory).
const IN_FLIGHT: usize = 1024;

/// Holds requests containing `pattern` until `released` turns true.
#[derive(Debug, Clone)]
pub struct Hold {
    pub pattern: Bytes,
    pub released: watch::Receiver<bool>,
}

impl Hold {
    fn holds(&self, chunk: &[u8]) -> bool {
        !*self.released.borrow()
            && !self.pattern.is_empty()
            && chunk
                .windows(self.pattern.len())
                .any(|w| w == &self.pattern[..])
    }
}

/// Runs the proxy until the process is killed.
pub async fn run(
    listen: &str,
    upstream: &str,
    delay: Duration,
    hold: Option<Hold>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.to_owned();
        let hold = hold.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&upstream).await {
                Ok(server) => pipe(client, server, delay, hold).await,
                Err(e) => eprintln!("delay-proxy: cannot reach {upstream}: {e}"),
            }
        });
    }
}

async fn pipe(client: TcpStream, server: TcpStream, delay: Duration, hold: Option<Hold>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending ends the connection.
    tokio::select! {
        _ = direction(cr, sw, delay, hold) => {}
        _ = direction(sr, cw, delay, None) => {}
    }
}

/// Reads `from`, writes each chunk to `to` once `delay` has passed since it
/// was read (and, if `hold` matches it, released).
async fn direction(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    hold: Option<Hold>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes, bool)>(IN_FLIGHT);
    let mut released = hold.as_ref().map(|h| h.released.clone());
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + delay;
                    let held = hold.as_ref().is_some_and(|h| h.holds(&buf[..n]));
                    if held {
                        println!("held");
                    }
                    if tx
                        .send((due, Bytes::copy_from_slice(&buf[..n]), held))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk, held)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if let (true, Some(r)) = (held, released.as_mut()) {
                // The sender lives as long as the process: an error here
                // cannot happen, and would mean nothing is held anyway.
                let _ = r.wait_for(|released| *released).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
