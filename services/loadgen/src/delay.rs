//! `roomcast-loadgen delay-proxy`: a TCP proxy that delays each direction by
//! a set time, so tests and the benchmark can put Redis (or anything) a
//! millisecond or ten away on a machine without `tc netem`.
//!
//! Every chunk read from one side is written to the other `delay` after it
//! was read, in order: latency is added, throughput is not cut (chunks in
//! flight overlap). It listens on `--listen` (port 0: any; the address is
//! printed as `listening on ADDR`) and forwards each connection to
//! `--upstream`, until killed.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction before reading waits (bounds memory).
const IN_FLIGHT: usize = 1024;

/// Runs the proxy until the process is killed.
pub async fn run(listen: &str, upstream: &str, delay: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            match TcpStream::connect(&upstream).await {
                Ok(server) => pipe(client, server, delay).await,
                Err(e) => eprintln!("delay-proxy: cannot reach {upstream}: {e}"),
            }
        });
    }
}

async fn pipe(client: TcpStream, server: TcpStream, delay: Duration) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction ending ends the connection.
    tokio::select! {
        _ = direction(cr, sw, delay) => {}
        _ = direction(sr, cw, delay) => {}
    }
}

/// Reads `from`, writes each chunk to `to` once `delay` has passed since it
/// was read.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(IN_FLIGHT);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + delay;
                    if tx
                        .send((due, Bytes::copy_from_slice(&buf[..n])))
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
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
