//! `floor`: what the kernel alone charges for the fan-out pattern on this
//! machine, with no WebSocket server in the way.
//!
//! A server that fans a message out to N local sockets makes (at least) one
//! `write` per socket, unless several messages for one socket are waiting.
//! This scenario makes exactly that pattern over loopback TCP: `--connections`
//! socket pairs, every `1/--rate` seconds one `--size`-byte write to each, from
//! one thread, while reader tasks drain the other ends. It reports the writing
//! thread's CPU per million writes. On loopback that includes the receiving
//! side's TCP processing and the wake-up of the reader, which the kernel runs
//! in the sender's context; so does an edge's CPU in the fan-out benchmark,
//! which this number is the floor of while the edge writes once per delivery.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::cli::Opts;
use crate::report::{Report, thread_cpu_seconds};

struct Written {
    writes: u64,
    cpu: f64,
    wall: Duration,
}

/// The writing thread: a round of writes, one per socket, at `rate` rounds
/// per second for `duration`.
fn write_rounds(
    mut sockets: Vec<TcpStream>,
    size: usize,
    rate: f64,
    duration: Duration,
) -> std::io::Result<Written> {
    let payload = vec![b'x'; size];
    let interval = Duration::from_secs_f64(1.0 / rate);
    let cpu0 = thread_cpu_seconds();
    let start = Instant::now();
    let mut next = start;
    let mut writes = 0;
    while start.elapsed() < duration {
        for s in &mut sockets {
            s.write_all(&payload)?;
            writes += 1;
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(Written {
        writes,
        cpu: thread_cpu_seconds() - cpu0,
        wall: start.elapsed(),
    })
}

pub async fn floor(o: &Opts) -> Result<Report, String> {
    let err = |e: std::io::Error| e.to_string();
    let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    let received = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        let w = TcpStream::connect(addr).map_err(err)?;
        w.set_nodelay(true).map_err(err)?;
        let (r, _) = listener.accept().map_err(err)?;
        r.set_nonblocking(true).map_err(err)?;
        let mut r = tokio::net::TcpStream::from_std(r).map_err(err)?;
        let received = received.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf).await {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        writers.push(w);
    }
    let (size, rate, duration) = (o.size, o.rate, o.duration);
    let written = tokio::task::spawn_blocking(move || write_rounds(writers, size, rate, duration))
        .await
        .map_err(|e| e.to_string())?
        .map_err(err)?;

    let mut r = Report::new("floor");
    let secs = written.wall.as_secs_f64();
    r.set("sockets", o.connections);
    r.set("write_bytes", o.size);
    r.set("rounds_per_second", o.rate);
    r.set("writes", written.writes);
    r.set("writes_per_second", (written.writes as f64 / secs).round());
    r.set("writer_cpu_seconds", (written.cpu * 100.0).round() / 100.0);
    r.set(
        "cpu_seconds_per_million_writes",
        (written.cpu * 1e6 / written.writes.max(1) as f64 * 1000.0).round() / 1000.0,
    );
    r.set("bytes_received", received.load(Ordering::Relaxed));
    if written.cpu < 1.0 {
        r.warn("under 1 CPU-second measured: run longer for a steadier number (ticks are 10 ms)");
    }
    Ok(r)
}
