//! `idle` (many connections held: memory and connect rate) and `churn`
//! (connects and disconnects at a rate while traffic flows).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::fanout::{Publish, member, message_prefix};
use super::{join, join_all, setup};
use crate::cli::Opts;
use crate::client::{self, Frame, Ws};
use crate::report::{self, Report};

/// Spawns a task per socket that reads (and so answers pings) until `stop`.
fn hold(ws: Ws, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        let mut ws = ws;
        loop {
            tokio::select! {
                _ = stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return true;
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                    Some(Ok(_)) => {}
                },
            }
        }
    })
}

/// C connections opened as fast as the node takes them, then held.
pub async fn idle(o: &Opts) -> Result<Report, String> {
    let mut report = Report::new("idle");
    let rooms_n = o.connections.div_ceil(o.room_size);
    let (rooms, users) = setup(o, rooms_n, o.connections).await?;
    let targets: Vec<_> = (0..o.connections)
        .map(|i| {
            (
                o.urls[i % o.urls.len()].clone(),
                rooms[i / o.room_size].clone(),
                users[i].clone(),
            )
        })
        .collect();
    let cpu0 = report::self_cpu_seconds();
    let (joined, elapsed) = join_all(targets, o.connect_concurrency).await;
    report.loadgen_cpu(report::self_cpu_seconds() - cpu0, elapsed.as_secs_f64());
    let mut handshake = report::histogram();
    let mut errors = Vec::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut held = Vec::new();
    for j in joined {
        match j {
            Ok(j) => {
                let _ = handshake.record(j.handshake.as_micros().max(1) as u64);
                held.push(hold(j.ws, stop_rx.clone()));
            }
            Err(e) => errors.push(e),
        }
    }
    report.set("connections", held.len());
    report.set("room_size", o.room_size);
    report.set("failed", errors.len());
    report.set(
        "connect_seconds",
        (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
    );
    report.set(
        "connects_per_second",
        (held.len() as f64 / elapsed.as_secs_f64()).round(),
    );
    report.latency("handshake", &handshake);
    if let Some(path) = &o.ready_file {
        std::fs::write(path, format!("{}\n", held.len()))
            .map_err(|e| format!("--ready-file: {e}"))?;
    }
    tokio::time::sleep(o.hold).await;
    let _ = stop_tx.send(true);
    let mut dropped = 0;
    for h in held {
        if !h.await.unwrap_or(false) {
            dropped += 1;
        }
    }
    report.set("dropped_while_held", dropped);
    if !errors.is_empty() || dropped > 0 {
        report.fail(format!(
            "{} connects failed (e.g. {:?}), {dropped} dropped while held",
            errors.len(),
            errors.first()
        ));
    }
    Ok(report)
}

/// A tiny xorshift generator, for hold times (no crate needed).
fn rand01(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// C connections that each reconnect after an exponentially distributed
/// time, so that the node sees about `rate` connects per second, while
/// publishers keep messages flowing.
pub async fn churn(o: &Opts) -> Result<Report, String> {
    let mut report = Report::new("churn");
    let rooms_n = o.connections.div_ceil(o.room_size);
    let publishers = rooms_n.min(10);
    let (rooms, users) = setup(o, rooms_n, o.connections + publishers).await?;
    let cpu0 = report::self_cpu_seconds();
    let started = Instant::now();
    let until = started + o.duration;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Publishers: one persistent connection in each of the first rooms.
    let body_prefix = message_prefix(o.size);
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let j = join(
            &o.urls[p % o.urls.len()],
            &rooms[p],
            &users[o.connections + p],
        )
        .await?;
        let publish = Publish {
            id: p,
            rate: o.msg_rate / publishers as f64,
            body_prefix: body_prefix.clone(),
            until,
        };
        pubs.push(tokio::spawn(member(
            j.ws,
            p,
            j.start,
            Some(publish),
            None,
            stop_rx.clone(),
        )));
    }
    let mean_hold = o.connections as f64 / o.rate;
    let mut slots = Vec::new();
    for i in 0..o.connections {
        let (base, room, user) = (
            o.urls[i % o.urls.len()].clone(),
            rooms[i / o.room_size].clone(),
            users[i].clone(),
        );
        let stop = stop_rx.clone();
        slots.push(tokio::spawn(async move {
            let mut seed =
                0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut hist = report::histogram();
            let (mut connects, mut failures, mut messages) = (0u64, 0u64, 0u64);
            // Spread the first connects over the first hold period.
            tokio::time::sleep(Duration::from_secs_f64(
                rand01(&mut seed) * mean_hold.min(2.0),
            ))
            .await;
            while Instant::now() < until && !*stop.borrow() {
                match join(&base, &room, &user).await {
                    Ok(mut j) => {
                        connects += 1;
                        let _ = hist.record(j.handshake.as_micros().max(1) as u64);
                        let hold_for =
                            Duration::from_secs_f64(-mean_hold * (1.0 - rand01(&mut seed)).ln());
                        let deadline = tokio::time::Instant::now()
                            + hold_for.min(until.saturating_duration_since(Instant::now()));
                        loop {
                            match tokio::time::timeout_at(deadline, j.ws.next()).await {
                                Err(_) => break,
                                Ok(Some(Ok(Message::Text(t)))) => {
                                    if matches!(client::scan(&t), Frame::Message { .. }) {
                                        messages += 1;
                                    }
                                }
                                Ok(Some(Ok(_))) => {}
                                Ok(_) => {
                                    failures += 1;
                                    break;
                                }
                            }
                        }
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), j.ws.close(None)).await;
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            (hist, connects, failures, messages)
        }));
    }
    let mut handshake = report::histogram();
    let (mut connects, mut failures, mut messages) = (0, 0, 0);
    for s in slots {
        let (h, c, f, m) = s.await.map_err(|e| e.to_string())?;
        handshake.add(&h).map_err(|e| e.to_string())?;
        connects += c;
        failures += f;
        messages += m;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let mut acked = 0;
    for p in pubs {
        acked += p.await.map_err(|e| e.to_string())?.acked.len();
    }
    report.loadgen_cpu(report::self_cpu_seconds() - cpu0, elapsed);
    report.set("connections", o.connections);
    report.set("target_connects_per_second", o.rate);
    report.set("connects", connects);
    report.set("connects_per_second", (connects as f64 / elapsed).round());
    report.set("failures", failures);
    report.latency("handshake", &handshake);
    report.set("messages_published", acked);
    report.set("messages_received", messages);
    if failures > 0 {
        report.fail(format!(
            "{failures} connects failed or were closed by the server"
        ));
    }
    Ok(report)
}
