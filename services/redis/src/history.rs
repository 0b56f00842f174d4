//! History in Redis: a stream per room whose entry ids are the offsets
//! (`<offset>-0`), so reading "after offset N" is one `XRANGE` from `N+1`.
//! The stream is trimmed to the room's retention (count, bytes, age) by the
//! publish script, and past its age bound also by reads.
//!
//! Reads go in chunks of [`CHUNK`] entries, each one short script, until
//! the page's count or byte bound: a reader of a room of large messages
//! never holds Redis (or a command lane) for long or makes it build a large
//! reply, so other rooms' publishes and the node's health checks go on.

use async_trait::async_trait;
use roomcast_core::BackendError;
use roomcast_core::history::{
    History, HistoryOptions, HistoryPage, HistoryQuery, MAX_LIMIT, Since, StreamPosition,
    age_cutoff, is_complete,
};
use roomcast_protocol::{MessageFrame, RoomId};

use crate::client::{Redis, unavailable};
use crate::scripts::READ;

/// Entries one read script returns at most.
pub const CHUNK: usize = 64;
/// Bytes of frames one read script returns at most (but always one entry):
/// a reply this size is a moment of Redis's time and of a command lane's.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A fresh epoch, used only if the room has none yet.
pub fn epoch_candidate() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

#[derive(Debug, Clone)]
pub struct RedisHistory {
    redis: Redis,
    options: HistoryOptions,
}

/// Which way a chunk reads.
#[derive(Debug, Clone, Copy)]
enum Dir {
    /// From this offset up.
    After(u64),
    /// Down from below this offset (0: from the newest).
    Before(u64),
}

/// One chunk as the script returns it.
struct Chunk {
    epoch: String,
    latest: u64,
    oldest: Option<u64>,
    entries: Vec<(u64, String)>,
    /// The script stopped at the byte bound, not at the end.
    cut: bool,
}

/// A whole read: the first chunk's position, what was kept, and whether
/// the byte bound cut it short.
struct Collected {
    epoch: String,
    latest: u64,
    oldest: Option<u64>,
    entries: Vec<(u64, String)>,
    truncated: bool,
}

impl RedisHistory {
    pub fn new(redis: Redis, options: HistoryOptions) -> Self {
        Self { redis, options }
    }

    async fn chunk(
        &self,
        room: &RoomId,
        dir: Dir,
        count: usize,
        max_bytes: usize,
    ) -> Result<Chunk, BackendError> {
        let k = &self.redis.keys;
        let (mode, at) = match dir {
            Dir::After(first) => ("after", first),
            Dir::Before(below) => ("before", below),
        };
        let keep = self.options.for_room(room);
        let cutoff = age_cutoff(keep.max_age).map_or(0, |t| t.as_micros().max(1));
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let (epoch, latest, oldest, frames, offsets, cut): (
                    String,
                    u64,
                    u64,
                    Vec<String>,
                    Vec<u64>,
                    u8,
                ) = READ
                    .key(k.seq(room))
                    .key(k.log(room))
                    .key(k.epoch(room))
                    .key(k.log_bytes(room))
                    .arg(epoch_candidate())
                    .arg(mode)
                    .arg(at)
                    .arg(count.max(1))
                    .arg(max_bytes.max(1))
                    .arg(keep.max_len)
                    .arg(keep.max_bytes.unwrap_or(0))
                    .arg(cutoff)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(Chunk {
                    epoch,
                    latest,
                    oldest: (oldest > 0).then_some(oldest),
                    entries: offsets.into_iter().zip(frames).collect(),
                    cut: cut == 1,
                })
            })
            .await
    }

    /// Reads chunk by chunk from `dir`, keeping the entries `keep` accepts,
    /// until `limit` of them or `max_bytes` (at least one is kept).
    async fn collect(
        &self,
        room: &RoomId,
        mut dir: Dir,
        limit: usize,
        max_bytes: usize,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Collected, BackendError> {
        let mut out: Option<Collected> = None;
        let mut bytes = 0;
        loop {
            let kept = out.as_ref().map_or(0, |c| c.entries.len());
            let want = CHUNK.min(limit - kept);
            let remaining = max_bytes.saturating_sub(bytes).min(CHUNK_BYTES);
            let chunk = self.chunk(room, dir, want, remaining).await?;
            let acc = out.get_or_insert_with(|| Collected {
                epoch: chunk.epoch.clone(),
                latest: chunk.latest,
                oldest: chunk.oldest,
                entries: Vec::new(),
                truncated: false,
            });
            if chunk.epoch != acc.epoch {
                // History was reset under the read: what came before is
                // from another epoch; stop here.
                break;
            }
            let (got, cut) = (chunk.entries.len(), chunk.cut);
            for (offset, frame) in chunk.entries {
                dir = match dir {
                    Dir::After(_) => Dir::After(offset + 1),
                    Dir::Before(_) => Dir::Before(offset),
                };
                if !keep(&frame) {
                    continue;
                }
                if bytes + frame.len() > max_bytes && !acc.entries.is_empty() {
                    acc.truncated = true;
                    return Ok(out.expect("set above"));
                }
                bytes += frame.len();
                acc.entries.push((offset, frame));
                if acc.entries.len() == limit {
                    return Ok(out.expect("set above"));
                }
            }
            // Fewer than asked for, and not because of the byte bound: the
            // stream ends here.
            if (got < want && !cut) || matches!(dir, Dir::Before(1)) {
                break;
            }
        }
        Ok(out.expect("at least one chunk was read"))
    }

    /// The stored frames after `offset` (at most `count`, and at most one
    /// chunk) as `(offset, JSON text)`, and the position; for a node filling
    /// a gap in its subscription.
    pub async fn frames_after(
        &self,
        room: &RoomId,
        offset: u64,
        count: usize,
    ) -> Result<(StreamPosition, Vec<(u64, String)>), BackendError> {
        let chunk = self
            .chunk(
                room,
                Dir::After(offset + 1),
                count.min(CHUNK),
                usize::MAX >> 1,
            )
            .await?;
        Ok((
            StreamPosition {
                offset: chunk.latest,
                epoch: chunk.epoch,
            },
            chunk.entries,
        ))
    }
}

fn parse(entries: &[(u64, String)]) -> Result<Vec<MessageFrame>, BackendError> {
    entries
        .iter()
        .map(|(_, f)| {
            serde_json::from_str(f)
                .map_err(|e| BackendError::Corrupt(format!("stored message: {e}")))
        })
        .collect()
}

/// The `timestamp` of a stored frame, without parsing all of it.
fn timestamp_of(frame: &str) -> Option<roomcast_protocol::Timestamp> {
    #[derive(serde::Deserialize)]
    struct Ts {
        timestamp: roomcast_protocol::Timestamp,
    }
    serde_json::from_str::<Ts>(frame).ok().map(|t| t.timestamp)
}

#[async_trait]
impl History for RedisHistory {
    async fn position(&self, room: &RoomId) -> Result<StreamPosition, BackendError> {
        let chunk = self.chunk(room, Dir::Before(0), 1, 1).await?;
        Ok(StreamPosition {
            offset: chunk.latest,
            epoch: chunk.epoch,
        })
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BackendError> {
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let max = query.max_bytes;
        let (c, complete) = match query.since {
            None => {
                let mut c = self
                    .collect(room, Dir::Before(0), limit, max, |_| true)
                    .await?;
                c.entries.reverse();
                (c, true)
            }
            Some(Since::Offset(since)) => {
                let c = self
                    .collect(
                        room,
                        Dir::After(since.saturating_add(1)),
                        limit,
                        max,
                        |_| true,
                    )
                    .await?;
                let complete = is_complete(since, c.oldest, c.latest);
                (c, complete)
            }
            Some(Since::Time(t)) => {
                // Stream ids are offsets, not times: scan what is retained
                // (bounded by the history length), chunk by chunk.
                let c = self
                    .collect(room, Dir::After(1), limit, max, |f| {
                        timestamp_of(f).is_some_and(|ts| ts > t)
                    })
                    .await?;
                (c, true)
            }
        };
        Ok(HistoryPage {
            messages: parse(&c.entries)?,
            position: StreamPosition {
                offset: c.latest,
                epoch: c.epoch,
            },
            complete,
            truncated: c.truncated,
        })
    }
}
