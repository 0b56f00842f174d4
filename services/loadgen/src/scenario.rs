//! The scenarios: `fanout` (delivery correctness and latency), `idle`
//! (connection cost and connect rate), `churn` (connects and disconnects
//! while traffic flows).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Opts;
use crate::client::{self, Frame, Ws};
use crate::report::{self, Report};
use crate::rest;

fn nonce() -> String {
    format!("{:x}", client::now_micros())
}

/// Rooms and users: created over REST, or just named (`--auto`).
async fn setup(o: &Opts, rooms: usize, users: usize) -> Result<(Vec<String>, Vec<String>), String> {
    let n = nonce();
    if o.auto {
        return Ok((
            (0..rooms).map(|r| format!("lg-{n}-r{r}")).collect(),
            (0..users).map(|u| format!("lg-{n}-u{u}")).collect(),
        ));
    }
    let rooms = rest::create_all(
        &o.urls[0],
        "/rooms",
        (0..rooms)
            .map(|r| json!({"name": format!("load {n} {r}")}))
            .collect(),
        8,
    )
    .await?;
    let users = rest::create_all(
        &o.urls[0],
        "/users",
        (0..users)
            .map(|u| json!({"username": format!("lg{u}")}))
            .collect(),
        32,
    )
    .await?;
    Ok((rooms, users))
}

/// A connected client: its socket, the room's offset when it joined, and how
/// long the handshake took (TCP connect to the `connected` frame).
struct Joined {
    ws: Ws,
    start: u64,
    handshake: Duration,
}

async fn join(base: &str, room: &str, user: &str) -> Result<Joined, String> {
    let started = Instant::now();
    let (mut ws, _) = client::connect(base, room, user).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return match client::scan(&t) {
                    Frame::Connected { offset } => Ok(Joined {
                        ws,
                        start: offset,
                        handshake: started.elapsed(),
                    }),
                    _ => Err(format!("first frame was not `connected`: {t}")),
                };
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed at connect: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended at connect".into()),
        }
    }
}

/// Connects every `(base, room, user)`, at most `concurrency` at a time.
async fn join_all(
    targets: Vec<(String, String, String)>,
    concurrency: usize,
) -> (Vec<Result<Joined, String>>, Duration) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|(b, r, u)| {
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                join(&b, &r, &u).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    (out, started.elapsed())
}

/// Offsets one connection received: counts, and a bitmap to tell a
/// duplicate from a first delivery.
#[derive(Debug, Default)]
struct Tally {
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    max_offset: u64,
    seen: Vec<u64>,
    errors: u64,
    rate_limited: u64,
    closed_early: bool,
}

impl Tally {
    fn see(&mut self, offset: u64) {
        let (word, bit) = ((offset / 64) as usize, offset % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.received += 1;
        if offset < self.max_offset {
            self.out_of_order += 1;
        }
        self.max_offset = self.max_offset.max(offset);
    }

    fn has(&self, offset: u64) -> bool {
        self.seen
            .get((offset / 64) as usize)
            .is_some_and(|w| w & (1 << (offset % 64)) != 0)
    }
}

struct Publish {
    id: usize,
    rate: f64,
    body_prefix: String,
    until: Instant,
}

struct MemberResult {
    room: usize,
    start: u64,
    tally: Tally,
    latency: Histogram<u64>,
    acked: Vec<u64>,
    sent: u64,
}

/// One member: reads everything (recording offsets and latency) and, if a
/// publisher, sends at its rate until `until`.
async fn member(
    mut ws: Ws,
    room: usize,
    start: u64,
    publish: Option<Publish>,
    mut stop: watch::Receiver<bool>,
) -> MemberResult {
    let mut tally = Tally::default();
    let mut latency = report::histogram();
    let mut acked = Vec::new();
    let mut sent = 0u64;
    let period = publish.as_ref().map_or(Duration::from_secs(3600), |p| {
        Duration::from_secs_f64(1.0 / p.rate)
    });
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let publishing = publish.as_ref().is_some_and(|p| Instant::now() < p.until);
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick(), if publishing => {
                let p = publish.as_ref().expect("publishing");
                let frame = format!("{}{}\"}}", p.body_prefix, client::client_id(p.id, sent));
                sent += 1;
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    tally.closed_early = true;
                    break;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match client::scan(&t) {
                    Frame::Message { offset, client_id } => {
                        tally.see(offset);
                        if let Some(sent_at) = client_id.and_then(client::sent_micros) {
                            let _ = latency.record(client::now_micros().saturating_sub(sent_at).max(1));
                        }
                    }
                    Frame::Ack { offset } => acked.push(offset),
                    Frame::Error { code } => {
                        tally.errors += 1;
                        if code == "rate_limited" {
                            tally.rate_limited += 1;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    tally.closed_early = true;
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    MemberResult {
        room,
        start,
        tally,
        latency,
        acked,
        sent,
    }
}

/// A message frame up to its `client_id` value, with `size` bytes of content.
fn message_prefix(size: usize) -> String {
    format!(
        "{{\"type\":\"message\",\"content\":\"{}\",\"client_id\":\"",
        "x".repeat(size)
    )
}

/// R rooms × N members spread over the nodes; P publishers per room at a
/// rate; every delivery checked for loss, duplication and order.
pub async fn fanout(o: &Opts) -> Result<Report, String> {
    let mut report = Report::new("fanout");
    let (rooms, users) = setup(o, o.rooms, o.rooms * o.members).await?;
    let targets: Vec<_> = (0..o.rooms * o.members)
        .map(|i| {
            (
                o.urls[i % o.urls.len()].clone(),
                rooms[i / o.members].clone(),
                users[i].clone(),
            )
        })
        .collect();
    let (joined, connect_time) = join_all(targets, o.connect_concurrency).await;
    let failed = joined.iter().filter(|j| j.is_err()).count();
    if let Some(Err(e)) = joined.iter().find(|j| j.is_err()) {
        return Err(format!(
            "{failed} of {} connections failed, e.g. {e}",
            joined.len()
        ));
    }
    report.set("nodes", o.urls.len());
    report.set("rooms", o.rooms);
    report.set("members_per_room", o.members);
    report.set("publishers_per_room", o.publishers);
    report.set("rate_per_publisher", o.rate);
    report.set("content_bytes", o.size);
    report.set(
        "connect_seconds",
        (connect_time.as_secs_f64() * 100.0).round() / 100.0,
    );

    // Let the joins' presence traffic settle, so it is not measured as fan-out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Some(path) = &o.ready_file {
        std::fs::write(path, "publishing\n").map_err(|e| format!("--ready-file: {e}"))?;
    }
    let cpu0 = report::self_cpu_seconds();
    let started = Instant::now();
    let until = started + o.duration;
    let (stop_tx, stop_rx) = watch::channel(false);
    let body_prefix = message_prefix(o.size);
    let mut tasks = Vec::new();
    for (i, j) in joined.into_iter().enumerate() {
        let j = j.expect("checked");
        let (room, index) = (i / o.members, i % o.members);
        let publish = (index < o.publishers).then(|| Publish {
            id: i,
            rate: o.rate,
            body_prefix: body_prefix.clone(),
            until,
        });
        tasks.push(tokio::spawn(member(
            j.ws,
            room,
            j.start,
            publish,
            stop_rx.clone(),
        )));
    }
    tokio::time::sleep(o.duration + o.drain).await;
    if let Some(path) = &o.done_file {
        std::fs::write(path, "done\n").map_err(|e| format!("--done-file: {e}"))?;
    }
    // Give a sampler a moment to read the servers before the teardown.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.map_err(|e| e.to_string())?);
    }
    let wall = started.elapsed().as_secs_f64();
    report.loadgen_cpu(report::self_cpu_seconds() - cpu0, wall);

    // Every acknowledged message of a room is owed to each of its members.
    let mut acked_by_room = vec![Vec::new(); o.rooms];
    let mut sent = 0;
    for r in &results {
        acked_by_room[r.room].extend_from_slice(&r.acked);
        sent += r.sent;
    }
    let mut latency = report::histogram();
    let (
        mut expected,
        mut delivered,
        mut lost,
        mut dups,
        mut ooo,
        mut errors,
        mut limited,
        mut closed,
    ) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for r in &results {
        for &offset in acked_by_room[r.room].iter().filter(|o| **o > r.start) {
            expected += 1;
            if r.tally.has(offset) {
                delivered += 1;
            } else {
                lost += 1;
            }
        }
        dups += r.tally.duplicates;
        ooo += r.tally.out_of_order;
        errors += r.tally.errors;
        limited += r.tally.rate_limited;
        closed += u64::from(r.tally.closed_early);
        latency.add(&r.latency).map_err(|e| e.to_string())?;
    }
    let acked: u64 = acked_by_room.iter().map(|a| a.len() as u64).sum();
    let secs = o.duration.as_secs_f64();
    report.set("messages_sent", sent);
    report.set("messages_acked", acked);
    report.set(
        "publish_rate_achieved",
        ((acked as f64 / secs) * 10.0).round() / 10.0,
    );
    report.set("deliveries_expected", expected);
    report.set("deliveries_received", delivered);
    report.set("lost", lost);
    report.set("duplicated", dups);
    report.set("out_of_order", ooo);
    report.set("deliveries_per_second", (delivered as f64 / secs).round());
    report.latency("latency", &latency);
    report.set("errors", errors);
    report.set("rate_limited", limited);
    report.set("connections_closed_early", closed);
    let target = o.rate * secs * (o.publishers * o.rooms) as f64;
    if (acked as f64) < 0.95 * target {
        report.warn(format!(
            "publishers got {acked} of {target:.0} messages acknowledged: the system (or the generator) could not sustain the rate"
        ));
    }
    if lost > 0 || dups > 0 || ooo > 0 || closed > 0 {
        report.fail(format!(
            "{lost} lost, {dups} duplicated, {ooo} out of order, {closed} connections closed early"
        ));
    }
    Ok(report)
}

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
