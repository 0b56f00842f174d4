//! `multiroom`: C multiplexed sockets (`/ws`), each subscribed to K of R
//! rooms, and one publisher per room at a rate (spread in time); every
//! reader checks each of its rooms for loss, duplication and order, and
//! when each message came.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use super::fanout::{MemberResult, Publish, Tally, member, message_prefix};
use super::{join_all, setup};
use crate::cli::Opts;
use crate::client::{self, Frame, Ws};
use crate::report::{self, Report};

/// One reader: its socket and, per room it subscribed to, the room's
/// offset when it did.
struct Reader {
    ws: Ws,
    starts: HashMap<usize, u64>,
    setup: Duration,
}

/// Opens a multiplexed socket for `user` and subscribes to `rooms`.
async fn open(base: &str, user: &str, rooms: Vec<(usize, String)>) -> Result<Reader, String> {
    let started = Instant::now();
    let url = format!("{}/ws?user_id={user}", base.replacen("http://", "ws://", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let index: HashMap<&str, usize> = rooms.iter().map(|(i, r)| (r.as_str(), *i)).collect();
    for (_, room) in &rooms {
        let frame = format!("{{\"type\":\"subscribe\",\"room_id\":\"{room}\"}}");
        ws.send(Message::Text(frame.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut starts = HashMap::new();
    while starts.len() < rooms.len() {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"subscribed\"") => {
                let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                let room = v["room_id"].as_str().and_then(|r| index.get(r)).copied();
                let offset = v["offset"].as_u64();
                if let (Some(room), Some(offset)) = (room, offset) {
                    starts.insert(room, offset);
                }
            }
            Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"error\"") => {
                return Err(format!("subscribe refused: {t}"));
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed: {f:?}")),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("connection ended while subscribing".into()),
        }
    }
    Ok(Reader {
        ws,
        starts,
        setup: started.elapsed(),
    })
}

struct ReaderResult {
    starts: HashMap<usize, u64>,
    tallies: HashMap<usize, Tally>,
    latency: Histogram<u64>,
    closed_early: bool,
}

/// Reads until `stop`, tallying each room's offsets apart, and stamping
/// `last` with the time of every frame (to tell when the joins' presence
/// traffic has passed).
async fn read(
    mut r: Reader,
    rooms: Arc<HashMap<String, usize>>,
    last: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> ReaderResult {
    let mut tallies: HashMap<usize, Tally> = HashMap::new();
    let mut latency = report::histogram();
    let mut closed_early = false;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = r.ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    last.store(client::now_micros(), Ordering::Relaxed);
                    if let Frame::Message { offset, client_id } = client::scan(&t) {
                        let room = client::room_of(&t).and_then(|r| rooms.get(r)).copied();
                        if let Some(room) = room {
                            tallies.entry(room).or_default().see(offset);
                        }
                        if let Some(sent_at) = client_id.and_then(client::sent_micros) {
                            let _ = latency.record(client::now_micros().saturating_sub(sent_at).max(1));
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    closed_early = true;
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), r.ws.close(None)).await;
    ReaderResult {
        starts: r.starts,
        tallies,
        latency,
        closed_early,
    }
}

pub async fn multiroom(o: &Opts) -> Result<Report, String> {
    let mut report = Report::new("multiroom");
    let (k, rooms_n) = (o.rooms_per_conn, o.rooms);
    if k == 0 || k > rooms_n {
        return Err("--rooms-per-conn must be between 1 and --rooms".into());
    }
    let (rooms, users) = setup(o, rooms_n, o.connections + rooms_n).await?;
    let index: Arc<HashMap<String, usize>> = Arc::new(
        rooms
            .iter()
            .enumerate()
            .map(|(i, r)| (r.clone(), i))
            .collect(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let last = Arc::new(AtomicU64::new(client::now_micros()));
    // Readers: connection i takes rooms i*k .. i*k+k (mod R). Each reads
    // from the moment it is subscribed (a socket left unread through a
    // long setup answers no ping and is closed by the server's heartbeat).
    let sem = Arc::new(Semaphore::new(o.connect_concurrency));
    let started = Instant::now();
    let cpu0 = report::self_cpu_seconds();
    let mut subscribed = Vec::with_capacity(o.connections);
    let reads: Vec<_> = (0..o.connections)
        .map(|i| {
            let sem = sem.clone();
            let base = o.urls[i % o.urls.len()].clone();
            let user = users[i].clone();
            let mine: Vec<(usize, String)> = (0..k)
                .map(|j| {
                    let r = (i * k + j) % rooms_n;
                    (r, rooms[r].clone())
                })
                .collect();
            let (tx, rx) = tokio::sync::oneshot::channel();
            subscribed.push(rx);
            let (index, last, stop) = (index.clone(), last.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let opened = {
                    let _permit = sem.acquire_owned().await;
                    open(&base, &user, mine).await
                };
                match opened {
                    Ok(r) => {
                        let _ = tx.send(Ok(r.setup));
                        Some(read(r, index, last, stop).await)
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        None
                    }
                }
            })
        })
        .collect();
    let mut setup_latency = report::histogram();
    for rx in subscribed {
        let setup = rx.await.map_err(|e| e.to_string())??;
        let _ = setup_latency.record(setup.as_micros().max(1) as u64);
    }
    let setup_time = started.elapsed().as_secs_f64();
    report.loadgen_cpu(report::self_cpu_seconds() - cpu0, setup_time);
    report.set("connections", o.connections);
    report.set("rooms", rooms_n);
    report.set("rooms_per_connection", k);
    report.set("subscriptions", o.connections * k);
    report.set("setup_seconds", (setup_time * 100.0).round() / 100.0);
    report.set(
        "subscriptions_per_second",
        ((o.connections * k) as f64 / setup_time).round(),
    );
    report.latency("setup", &setup_latency);
    // Then the publishers: one single-room socket per room. Not before the
    // readers: a socket nobody reads during a long setup answers no ping
    // and is closed by the server's heartbeat (its room then publishes
    // nothing).
    let targets: Vec<_> = (0..rooms_n)
        .map(|r| {
            (
                o.urls[r % o.urls.len()].clone(),
                rooms[r].clone(),
                users[o.connections + r].clone(),
            )
        })
        .collect();
    let (publishers, _) = join_all(targets, o.connect_concurrency).await;
    let publishers: Vec<_> = publishers.into_iter().collect::<Result<_, _>>()?;
    if let Some(path) = &o.ready_file {
        std::fs::write(path, "subscribed\n").map_err(|e| format!("--ready-file: {e}"))?;
    }
    // Publishing starts once the joins' presence traffic (every join is
    // news to the room's other members) has passed: a second with no frame
    // at all, or a minute at most.
    let quiet_since = Instant::now();
    while client::now_micros().saturating_sub(last.load(Ordering::Relaxed)) < 1_000_000
        && quiet_since.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.set(
        "settle_seconds",
        (quiet_since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    );
    if let Some(path) = &o.publish_file {
        std::fs::write(path, "publishing\n").map_err(|e| format!("--publish-file: {e}"))?;
    }
    let started = Instant::now();
    let until = started + o.duration;
    let per_room = o.rate / rooms_n as f64;
    let body = message_prefix(o.size);
    let mut pubs = Vec::new();
    for (r, j) in publishers.into_iter().enumerate() {
        let publish = Publish {
            id: r,
            rate: per_room,
            body_prefix: body.clone(),
            until,
        };
        // Spread the publishers evenly over one period (a room's interval
        // between messages), so the total rate is steady, not a burst of
        // every room at once followed by silence.
        let delay = Duration::from_secs_f64(r as f64 / rooms_n as f64 / per_room.max(0.001));
        let stop = stop_rx.clone();
        pubs.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            member(j.ws, r, j.start, Some(publish), None, stop).await
        }));
    }
    tokio::time::sleep(o.duration + o.drain).await;
    if let Some(path) = &o.done_file {
        std::fs::write(path, "done\n").map_err(|e| format!("--done-file: {e}"))?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    let mut acked: Vec<Vec<u64>> = vec![Vec::new(); rooms_n];
    for p in pubs {
        let MemberResult { room, acked: a, .. } = p.await.map_err(|e| e.to_string())?;
        acked[room] = a;
    }
    let (mut expected, mut delivered, mut lost, mut dups, mut ooo, mut closed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut latency = report::histogram();
    let empty = Tally::default();
    // (room, offset) → readers that missed it, to say what was lost.
    let mut missing: std::collections::BTreeMap<(usize, u64), usize> = Default::default();
    for t in reads {
        let r = t
            .await
            .map_err(|e| e.to_string())?
            .ok_or("a reader that subscribed has no result")?;
        for (room, start) in &r.starts {
            let tally = r.tallies.get(room).unwrap_or(&empty);
            for offset in acked[*room].iter().filter(|o| **o > *start) {
                expected += 1;
                if tally.has(*offset) {
                    delivered += 1;
                } else {
                    lost += 1;
                    *missing.entry((*room, *offset)).or_default() += 1;
                }
            }
            dups += tally.duplicates;
            ooo += tally.out_of_order;
        }
        closed += u64::from(r.closed_early);
        latency.add(&r.latency).map_err(|e| e.to_string())?;
    }
    let secs = o.duration.as_secs_f64();
    let sent: u64 = acked.iter().map(|a| a.len() as u64).sum();
    report.set("messages_acked", sent);
    report.set("deliveries_expected", expected);
    report.set("deliveries_received", delivered);
    report.set("lost", lost);
    report.set("duplicated", dups);
    report.set("out_of_order", ooo);
    report.set("deliveries_per_second", (delivered as f64 / secs).round());
    report.latency("latency", &latency);
    report.set("connections_closed_early", closed);
    if !missing.is_empty() {
        let shown: Vec<String> = missing
            .iter()
            .take(10)
            .map(|((room, offset), n)| format!("{} offset {offset}: {n} readers", rooms[*room]))
            .collect();
        report.warn(format!("missed: {}", shown.join("; ")));
    }
    if lost > 0 || dups > 0 || ooo > 0 || closed > 0 {
        report.fail(format!(
            "{lost} lost, {dups} duplicated, {ooo} out of order, {closed} connections closed early"
        ));
    }
    Ok(report)
}
