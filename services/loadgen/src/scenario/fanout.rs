//! `fanout`: R rooms × N members, P publishers per room at a rate; every
//! member checks what it got (lost, duplicated, out of order) and when.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{join_all, join_since, setup};
use crate::cli::Opts;
use crate::client::{self, Frame, Ws};
use crate::report::{self, Report};

/// Offsets one connection received: counts, and a bitmap to tell a
/// duplicate from a first delivery.
#[derive(Debug, Default)]
pub(super) struct Tally {
    received: u64,
    pub(super) duplicates: u64,
    pub(super) out_of_order: u64,
    max_offset: u64,
    seen: Vec<u64>,
    errors: u64,
    rate_limited: u64,
    closed_early: bool,
    /// `presence_diff` / `user_joined` / `user_left` frames received.
    presence: u64,
}

impl Tally {
    pub(super) fn see(&mut self, offset: u64) {
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

    pub(super) fn has(&self, offset: u64) -> bool {
        self.seen
            .get((offset / 64) as usize)
            .is_some_and(|w| w & (1 << (offset % 64)) != 0)
    }
}

pub(super) struct Publish {
    pub(super) id: usize,
    pub(super) rate: f64,
    pub(super) body_prefix: String,
    pub(super) until: Instant,
}

/// Where a member reconnects when the server closes its socket (a drain):
/// the nodes, tried from `next` on, with `since` = the last offset seen.
pub(super) struct Rejoin {
    pub(super) urls: std::sync::Arc<Vec<String>>,
    pub(super) next: usize,
    pub(super) room: String,
    pub(super) user: String,
    /// Give up after this.
    pub(super) until: Instant,
}

pub(super) struct MemberResult {
    pub(super) room: usize,
    /// Reconnects made, and how long each took from the close to `connected`.
    reconnects: Histogram<u64>,
    start: u64,
    tally: Tally,
    latency: Histogram<u64>,
    pub(super) acked: Vec<u64>,
    sent: u64,
}

/// One member: reads everything (recording offsets and latency) and, if a
/// publisher, sends at its rate until `until`.
pub(super) async fn member(
    mut ws: Ws,
    room: usize,
    start: u64,
    publish: Option<Publish>,
    mut rejoin: Option<Rejoin>,
    mut stop: watch::Receiver<bool>,
) -> MemberResult {
    let mut reconnects = report::histogram();
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
                // The tick may come due after the window closed (the
                // branch was enabled before): a late send would be
                // counted as owed to readers that are already stopping.
                if Instant::now() >= p.until {
                    continue;
                }
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
                    Frame::Presence => tally.presence += 1,
                    Frame::Error { code } => {
                        tally.errors += 1;
                        if code == "rate_limited" {
                            tally.rate_limited += 1;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let closed_at = Instant::now();
                    match rejoin.as_mut() {
                        Some(r) if !*stop.borrow() => match reconnect(r, tally.max_offset.max(start)).await {
                            Some(new) => {
                                ws = new;
                                let _ = reconnects.record(closed_at.elapsed().as_micros().max(1) as u64);
                            }
                            None => {
                                tally.closed_early = true;
                                break;
                            }
                        },
                        _ => {
                            tally.closed_early = true;
                            break;
                        }
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    MemberResult {
        reconnects,
        room,
        start,
        tally,
        latency,
        acked,
        sent,
    }
}

/// Connects again with `since`, trying each node in turn (a draining one
/// refuses) until `r.until`.
async fn reconnect(r: &mut Rejoin, since: u64) -> Option<Ws> {
    while Instant::now() < r.until {
        let base = &r.urls[r.next % r.urls.len()];
        match join_since(base, &r.room, &r.user, Some(since)).await {
            Ok(j) => return Some(j.ws),
            Err(_) => {
                r.next += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    None
}

/// A message frame up to its `client_id` value, with `size` bytes of content.
pub(super) fn message_prefix(size: usize) -> String {
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
    let urls = std::sync::Arc::new(o.urls.clone());
    for (i, j) in joined.into_iter().enumerate() {
        let j = j.expect("checked");
        let (room, index) = (i / o.members, i % o.members);
        let publish = (index < o.publishers).then(|| Publish {
            id: i,
            rate: o.rate,
            body_prefix: body_prefix.clone(),
            until,
        });
        // A member closed by its node goes to another one: spread over
        // the others, so one node's members do not all land on one.
        let n = urls.len();
        let rejoin = (o.reconnect && n > 1).then(|| Rejoin {
            urls: urls.clone(),
            next: i % n + 1 + (i / n) % (n - 1),
            room: rooms[room].clone(),
            user: users[i].clone(),
            until: until + o.drain,
        });
        tasks.push(tokio::spawn(member(
            j.ws,
            room,
            j.start,
            publish,
            rejoin,
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
    let mut reconnects = report::histogram();
    let mut presence = 0;
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
        reconnects.add(&r.reconnects).map_err(|e| e.to_string())?;
        presence += r.tally.presence;
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
    report.set("presence_frames", presence);
    if o.reconnect {
        report.set("reconnects", reconnects.len());
        report.latency("reconnect", &reconnects);
    }
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
