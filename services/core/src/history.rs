//! Per-room message history with integer offsets, for `since` recovery and
//! the history API.
//!
//! Offsets start at 1 and grow by exactly 1 per stored message, so a client
//! (or a node) sees a gap at once. Appending is not part of this trait: a
//! message is stored and published in one step by the [`Broker`], so that
//! nothing is delivered that was not stored and nothing stored is skipped.
//!
//! [`Broker`]: crate::broker::Broker

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use async_trait::async_trait;
use roomcast_protocol::{MessageFrame, RoomId, Timestamp, UserId};

use crate::BackendError;
use crate::retention::{Retention, Rules};
use crate::shard::Sharded;

/// The most messages one history read returns.
pub const MAX_LIMIT: usize = 1000;

/// How much a backend keeps per room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Messages kept per room (unless a retention rule says otherwise).
    pub max_len: usize,
    /// Embedded backend: bytes of messages kept per room and in all rooms
    /// (the oldest go first). A Redis deployment bounds memory with Redis's
    /// own `maxmemory` (and retention rules' `bytes=`).
    pub max_room_bytes: usize,
    pub max_total_bytes: usize,
    /// How long a publish is remembered by `(room, sender, client_id)`, so
    /// that a retry of it returns the first result instead of storing the
    /// message again.
    pub dedupe_window: Duration,
    /// Count, byte and age bounds per room-name pattern.
    pub retention: Rules,
}

impl HistoryOptions {
    /// Keeps `max_len` messages, remembers publishes for five minutes.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            max_room_bytes: 64 << 20,
            max_total_bytes: 512 << 20,
            dedupe_window: Duration::from_secs(300),
            retention: Rules::default(),
        }
    }

    /// What `room` keeps.
    pub fn for_room(&self, room: &RoomId) -> Retention {
        self.retention.for_room(room, self.max_len)
    }
}

/// The timestamp before which a message is past `max_age` (`None`: no age
/// bound).
pub fn age_cutoff(max_age: Option<Duration>) -> Option<Timestamp> {
    max_age.map(|age| Timestamp::from_micros(Timestamp::now().as_micros() - age.as_micros() as i64))
}

/// The most publishes one room remembers for de-duplication in memory; past
/// it the oldest are forgotten early (a room this busy retries within
/// seconds, not minutes).
const MAX_REMEMBERED: usize = 100_000;

/// Where a room's history stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// The latest offset given out (0: none yet).
    pub offset: u64,
    /// Changes only when the room's history was lost.
    pub epoch: String,
}

/// The exclusive lower bound of a history read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Offset(u64),
    Time(Timestamp),
}

impl Since {
    /// Parses the `since` parameter: all digits is an offset, anything else
    /// must be an ISO-8601 timestamp.
    pub fn parse(s: &str) -> Result<Since, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Since::Offset)
                .map_err(|_| "since: offset out of range".to_owned());
        }
        Timestamp::parse(s)
            .map(Since::Time)
            .map_err(|e| format!("since: must be an offset (digits) or {e}"))
    }
}

/// A history read: without `since`, the latest `limit` messages; with it,
/// the first `limit` after it. Either way at most `max_bytes` of message
/// frames (at least one message, however large): a page that would be
/// larger ends early ([`HistoryPage::truncated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub since: Option<Since>,
    pub limit: usize,
    pub max_bytes: usize,
}

impl HistoryQuery {
    /// `limit` messages, with no byte bound beyond [`DEFAULT_PAGE_BYTES`].
    pub fn new(since: Option<Since>, limit: usize) -> Self {
        Self {
            since,
            limit,
            max_bytes: DEFAULT_PAGE_BYTES,
        }
    }
}

/// The default byte bound of a page.
pub const DEFAULT_PAGE_BYTES: usize = 1024 * 1024;

/// What a message costs in a page, in bytes: its frame's length, estimated
/// without encoding it (the fixed part covers the field names, id, offset
/// and timestamp).
pub fn frame_cost(m: &MessageFrame) -> usize {
    160 + m.content.len()
        + m.username.len()
        + m.user_id.as_str().len()
        + m.room_id.as_str().len()
        + m.client_id.as_ref().map_or(0, String::len)
}

/// The messages a read found, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<MessageFrame>,
    pub position: StreamPosition,
    /// For `since` an offset: false when messages after it are no longer
    /// retained (or the offset is beyond the room's latest, e.g. from another
    /// epoch), so the reader cannot have everything it missed.
    pub complete: bool,
    /// The page ended early at the byte bound: more messages match (read on
    /// after the last one, or, without `since`, before the first one).
    pub truncated: bool,
}

/// Takes messages from `it` while they fit in `max_bytes` (always the
/// first), up to `limit`; whether it stopped at the byte bound.
pub fn take_within<'a>(
    it: impl Iterator<Item = &'a MessageFrame>,
    limit: usize,
    max_bytes: usize,
) -> (Vec<MessageFrame>, bool) {
    let mut out = Vec::new();
    let mut bytes = 0;
    for m in it.take(limit) {
        bytes += frame_cost(m);
        if bytes > max_bytes && !out.is_empty() {
            return (out, true);
        }
        out.push(m.clone());
    }
    (out, false)
}

/// Reading a room's stored messages.
#[async_trait]
pub trait History: Send + Sync + 'static {
    async fn position(&self, room: &RoomId) -> Result<StreamPosition, BackendError>;
    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BackendError>;
}

/// Whether a read from offset `since` can see everything after it, given the
/// oldest retained offset and the latest offset. Shared by every backend.
pub fn is_complete(since: u64, oldest_retained: Option<u64>, latest: u64) -> bool {
    if since > latest {
        return false;
    }
    match oldest_retained {
        Some(oldest) => since + 1 >= oldest,
        None => since == latest,
    }
}

/// The in-memory history of the embedded backend: the latest `max_len`
/// messages of each room.
#[derive(Debug)]
pub struct MemoryHistory {
    /// One epoch for the process: memory history is lost exactly when the
    /// process restarts, which is when this changes.
    epoch: String,
    options: HistoryOptions,
    rooms: Sharded<HashMap<RoomId, RoomLog>>,
    /// Bytes (by [`frame_cost`]) and messages retained in all rooms.
    total_bytes: AtomicUsize,
    live: AtomicUsize,
    /// Every retained message in append order across rooms, to drop the
    /// oldest when `max_total_bytes` is passed. Messages a room dropped by
    /// its own bounds stay here until skipped or compacted away.
    /// Lock order: a room shard, then this; never the other way round.
    order: Mutex<VecDeque<(RoomId, u64)>>,
}

#[derive(Debug, Default)]
struct RoomLog {
    last_offset: u64,
    messages: VecDeque<MessageFrame>,
    bytes: usize,
    /// Publishes with a `client_id`, by sender and id: what they became.
    remembered: HashMap<(UserId, String), Remembered>,
    /// The same keys in the order they expire.
    expiry: VecDeque<(Instant, UserId, String)>,
}

/// What a de-duplicated publish gets back when its message is no longer
/// retained in full.
#[derive(Debug, Clone)]
struct Remembered {
    id: String,
    offset: u64,
    timestamp: Timestamp,
}

/// The key a publish is de-duplicated by: sender and `client_id`.
fn dedupe_key(msg: &MessageFrame) -> Option<(UserId, String)> {
    msg.client_id
        .as_ref()
        .map(|c| (msg.user_id.clone(), c.clone()))
}

impl RoomLog {
    fn forget_expired(&mut self, now: Instant) {
        while let Some((at, ..)) = self.expiry.front() {
            if *at > now && self.expiry.len() <= MAX_REMEMBERED {
                break;
            }
            if let Some((_, user, client)) = self.expiry.pop_front() {
                self.remembered.remove(&(user, client));
            }
        }
    }

    /// Drops the oldest message; its cost.
    fn pop_oldest(&mut self) -> Option<usize> {
        let m = self.messages.pop_front()?;
        let cost = frame_cost(&m);
        self.bytes -= cost;
        Some(cost)
    }

    /// The stored message at `offset`, if still retained.
    fn at(&self, offset: u64) -> Option<&MessageFrame> {
        let oldest = self.messages.front()?.offset;
        self.messages.get(offset.checked_sub(oldest)? as usize)
    }
}

impl MemoryHistory {
    pub fn new(options: HistoryOptions) -> Self {
        Self {
            epoch: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            options: HistoryOptions {
                max_len: options.max_len.max(1),
                ..options
            },
            rooms: Sharded::new(16),
            total_bytes: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// Bytes of messages retained in all rooms.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes.load(Ordering::Relaxed)
    }

    fn dropped(&self, messages: usize, bytes: usize) {
        self.live.fetch_sub(messages, Ordering::Relaxed);
        self.total_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Drops the oldest messages of all rooms while the total is over its
    /// bound. Called with no room lock held.
    fn enforce_total(&self) {
        while self.total_bytes() > self.options.max_total_bytes {
            let Some((room, offset)) = self.order.lock().pop_front() else {
                return;
            };
            let mut shard = self.rooms.shard(&room).write();
            if let Some(log) = shard.get_mut(&room)
                && log.messages.front().is_some_and(|m| m.offset == offset)
                && let Some(cost) = log.pop_oldest()
            {
                self.dropped(1, cost);
            }
        }
        // Entries of messages their rooms already dropped pile up in
        // `order`; when they outnumber the live ones, sweep them out. The
        // queue is taken out first, so no room lock is taken under its lock.
        let live = self.live.load(Ordering::Relaxed);
        if self.order.lock().len() > 2 * live + 1024 {
            let old = std::mem::take(&mut *self.order.lock());
            let kept: VecDeque<(RoomId, u64)> = old
                .into_iter()
                .filter(|(room, offset)| {
                    let shard = self.rooms.shard(room).read();
                    shard
                        .get(room)
                        .and_then(|l| l.messages.front())
                        .is_some_and(|m| m.offset <= *offset)
                })
                .collect();
            let mut order = self.order.lock();
            let newer = std::mem::take(&mut *order);
            *order = kept;
            order.extend(newer);
        }
    }

    /// Gives the next offset to `build`, stores what it builds, and calls
    /// `then` with it before the room's lock is released, so that whatever
    /// `then` does (delivery) happens in offset order.
    ///
    /// `draft` is the message as it would be stored (its offset is
    /// ignored): if its sender already published its `client_id` within
    /// the de-duplication window, nothing is stored and the first result
    /// comes back, marked `true`.
    pub(crate) fn append(
        &self,
        room: &RoomId,
        draft: MessageFrame,
        then: impl FnOnce(&MessageFrame),
    ) -> (MessageFrame, bool) {
        let now = Instant::now();
        let mut shard = self.rooms.shard(room).write();
        let log = shard.entry(room.clone()).or_default();
        log.forget_expired(now);
        let key = dedupe_key(&draft);
        if let Some(first) = key.as_ref().and_then(|k| log.remembered.get(k)) {
            let msg = match log.at(first.offset) {
                Some(m) => m.clone(),
                None => MessageFrame {
                    id: first.id.clone(),
                    offset: first.offset,
                    timestamp: first.timestamp,
                    ..draft
                },
            };
            return (msg, true);
        }
        log.last_offset += 1;
        let msg = MessageFrame {
            offset: log.last_offset,
            ..draft
        };
        let cost = frame_cost(&msg);
        log.messages.push_back(msg.clone());
        log.bytes += cost;
        self.live.fetch_add(1, Ordering::Relaxed);
        self.total_bytes.fetch_add(cost, Ordering::Relaxed);
        let keep = self.options.for_room(room);
        let max_bytes = keep.max_bytes.map_or(self.options.max_room_bytes, |b| {
            b.min(self.options.max_room_bytes)
        });
        let cutoff = age_cutoff(keep.max_age);
        while log.messages.len() > keep.max_len
            || (log.bytes > max_bytes && log.messages.len() > 1)
            || log
                .messages
                .front()
                .zip(cutoff)
                .is_some_and(|(m, c)| m.timestamp < c && log.messages.len() > 1)
        {
            if let Some(c) = log.pop_oldest() {
                self.dropped(1, c);
            }
        }
        self.order.lock().push_back((room.clone(), msg.offset));
        if let Some((user, client)) = key {
            log.remembered.insert(
                (user.clone(), client.clone()),
                Remembered {
                    id: msg.id.clone(),
                    offset: msg.offset,
                    timestamp: msg.timestamp,
                },
            );
            log.expiry
                .push_back((now + self.options.dedupe_window, user, client));
        }
        then(&msg);
        drop(shard);
        self.enforce_total();
        (msg, false)
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn position(&self, room: &RoomId) -> Result<StreamPosition, BackendError> {
        let shard = self.rooms.shard(room).read();
        Ok(StreamPosition {
            offset: shard.get(room).map_or(0, |l| l.last_offset),
            epoch: self.epoch.clone(),
        })
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BackendError> {
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let shard = self.rooms.shard(room).read();
        let empty = RoomLog::default();
        let log = shard.get(room).unwrap_or(&empty);
        // Messages past the room's age bound that no publish has dropped
        // yet (the room went quiet) are not history any more.
        let cutoff = age_cutoff(self.options.for_room(room).max_age);
        let expired = cutoff.map_or(0, |c| {
            log.messages.iter().take_while(|m| m.timestamp < c).count()
        });
        let msgs = log.messages.range(expired..);
        let max = query.max_bytes;
        let (messages, complete, truncated) = match query.since {
            None => {
                // The newest first, then back in order.
                let (mut m, t) = take_within(msgs.rev(), limit, max);
                m.reverse();
                (m, true, t)
            }
            Some(Since::Offset(since)) => {
                let oldest = msgs.clone().next().map(|m| m.offset);
                // Offsets in the log are contiguous, so the first one after
                // `since` is found by arithmetic, not a scan.
                let start = match oldest {
                    Some(o) if since >= o => (since - o + 1) as usize,
                    _ => 0,
                };
                let (m, t) = take_within(msgs.skip(start), limit, max);
                (m, is_complete(since, oldest, log.last_offset), t)
            }
            Some(Since::Time(t)) => {
                let (m, tr) = take_within(msgs.filter(|m| m.timestamp > t), limit, max);
                (m, true, tr)
            }
        };
        Ok(HistoryPage {
            messages,
            position: StreamPosition {
                offset: log.last_offset,
                epoch: self.epoch.clone(),
            },
            complete,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &RoomId, content: &str) -> MessageFrame {
        MessageFrame {
            id: "m".into(),
            user_id: UserId::parse("u").unwrap(),
            username: "u".into(),
            content: content.into(),
            timestamp: Timestamp::now(),
            room_id: room.clone(),
            offset: 0,
            client_id: None,
        }
    }

    #[test]
    fn bytes_are_bounded_per_room_and_in_total_oldest_first() {
        let h = MemoryHistory::new(HistoryOptions {
            max_len: 1000,
            max_room_bytes: 6_000,
            max_total_bytes: 8_000,
            dedupe_window: Duration::from_secs(1),
            retention: Rules::default(),
        });
        let (a, b) = (RoomId::parse("a").unwrap(), RoomId::parse("b").unwrap());
        let big = "x".repeat(1000);
        for _ in 0..10 {
            h.append(&a, msg(&a, &big), |_| {});
        }
        let cost = frame_cost(&msg(&a, &big));
        assert!(h.total_bytes() <= 6_000, "room a kept to its bound");
        for _ in 0..5 {
            h.append(&b, msg(&b, &big), |_| {});
        }
        assert!(h.total_bytes() <= 8_000, "{}", h.total_bytes());
        let kept = |r: &RoomId| {
            h.rooms
                .shard(r)
                .read()
                .get(r)
                .map_or(0, |l| l.messages.len())
        };
        assert_eq!(kept(&b) * cost + kept(&a) * cost, h.total_bytes());
        assert_eq!(kept(&b), 5, "the newer room keeps everything");
        assert!(kept(&a) < 4, "the older room gave way");
        // Stale entries of messages dropped by the room bound do not pile up.
        for _ in 0..5000 {
            h.append(&a, msg(&a, "small"), |_| {});
        }
        assert!(h.order.lock().len() <= 2 * h.live.load(Ordering::Relaxed) + 1024 + 1);
    }
}
