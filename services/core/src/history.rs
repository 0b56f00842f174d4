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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use roomcast_protocol::{MessageFrame, RoomId, Timestamp, UserId};

use crate::BackendError;
use crate::shard::Sharded;

/// The most messages one history read returns.
pub const MAX_LIMIT: usize = 1000;

/// How much a backend keeps per room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Messages kept per room.
    pub max_len: usize,
    /// How long a publish is remembered by `(room, sender, client_id)`, so
    /// that a retry of it returns the first result instead of storing the
    /// message again.
    pub dedupe_window: Duration,
}

impl HistoryOptions {
    /// Keeps `max_len` messages, remembers publishes for five minutes.
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            dedupe_window: Duration::from_secs(300),
        }
    }
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
/// the first `limit` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    pub since: Option<Since>,
    pub limit: usize,
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
}

#[derive(Debug, Default)]
struct RoomLog {
    last_offset: u64,
    messages: VecDeque<MessageFrame>,
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
        if log.messages.len() == self.options.max_len {
            log.messages.pop_front();
        }
        log.messages.push_back(msg.clone());
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
        let msgs = &log.messages;
        let (messages, complete): (Vec<_>, bool) = match query.since {
            None => {
                let skip = msgs.len().saturating_sub(limit);
                (msgs.iter().skip(skip).cloned().collect(), true)
            }
            Some(Since::Offset(since)) => {
                let oldest = msgs.front().map(|m| m.offset);
                // Offsets in the log are contiguous, so the first one after
                // `since` is found by arithmetic, not a scan.
                let start = match oldest {
                    Some(o) if since >= o => (since - o + 1) as usize,
                    _ => 0,
                };
                (
                    msgs.iter().skip(start).take(limit).cloned().collect(),
                    is_complete(since, oldest, log.last_offset),
                )
            }
            Some(Since::Time(t)) => (
                msgs.iter()
                    .filter(|m| m.timestamp > t)
                    .take(limit)
                    .cloned()
                    .collect(),
                true,
            ),
        };
        Ok(HistoryPage {
            messages,
            position: StreamPosition {
                offset: log.last_offset,
                epoch: self.epoch.clone(),
            },
            complete,
        })
    }
}
