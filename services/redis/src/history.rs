//! History in Redis: a stream per room whose entry ids are the offsets
//! (`<offset>-0`), so reading "after offset N" is one `XRANGE` from `N+1`.
//! The stream is trimmed to the configured length by the publish script.

use async_trait::async_trait;
use roomcast_core::BackendError;
use roomcast_core::history::{
    History, HistoryPage, HistoryQuery, MAX_LIMIT, Since, StreamPosition, is_complete,
};
use roomcast_protocol::{MessageFrame, RoomId};

use crate::client::{Redis, unavailable};
use crate::scripts::READ;

/// A fresh epoch, used only if the room has none yet.
pub fn epoch_candidate() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

#[derive(Debug, Clone)]
pub struct RedisHistory {
    redis: Redis,
}

struct Raw {
    epoch: String,
    latest: u64,
    oldest: Option<u64>,
    frames: Vec<String>,
    offsets: Vec<u64>,
}

impl RedisHistory {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    async fn read_raw(
        &self,
        room: &RoomId,
        latest: bool,
        first: u64,
        count: usize,
    ) -> Result<Raw, BackendError> {
        let k = &self.redis.keys;
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let (epoch, latest, oldest, frames, offsets): (
                    String,
                    u64,
                    u64,
                    Vec<String>,
                    Vec<u64>,
                ) = READ
                    .key(k.seq(room))
                    .key(k.log(room))
                    .key(k.epoch(room))
                    .arg(epoch_candidate())
                    .arg(if latest { "latest" } else { "after" })
                    .arg(first)
                    .arg(count)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(Raw {
                    epoch,
                    latest,
                    oldest: (oldest > 0).then_some(oldest),
                    frames,
                    offsets,
                })
            })
            .await
    }

    /// The stored frames after `offset` (at most `count`) as `(offset,
    /// JSON text)`, and the position; for a node filling a gap in its
    /// subscription.
    pub async fn frames_after(
        &self,
        room: &RoomId,
        offset: u64,
        count: usize,
    ) -> Result<(StreamPosition, Vec<(u64, String)>), BackendError> {
        let raw = self.read_raw(room, false, offset + 1, count).await?;
        Ok((
            StreamPosition {
                offset: raw.latest,
                epoch: raw.epoch,
            },
            raw.offsets.into_iter().zip(raw.frames).collect(),
        ))
    }
}

fn parse(frames: Vec<String>) -> Result<Vec<MessageFrame>, BackendError> {
    frames
        .iter()
        .map(|f| {
            serde_json::from_str(f)
                .map_err(|e| BackendError::Corrupt(format!("stored message: {e}")))
        })
        .collect()
}

#[async_trait]
impl History for RedisHistory {
    async fn position(&self, room: &RoomId) -> Result<StreamPosition, BackendError> {
        let raw = self.read_raw(room, true, 0, 1).await?;
        Ok(StreamPosition {
            offset: raw.latest,
            epoch: raw.epoch,
        })
    }

    async fn read(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BackendError> {
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let (raw, messages, complete) = match query.since {
            None => {
                let raw = self.read_raw(room, true, 0, limit).await?;
                let mut frames = raw.frames.clone();
                frames.reverse();
                let m = parse(frames)?;
                (raw, m, true)
            }
            Some(Since::Offset(since)) => {
                let raw = self
                    .read_raw(room, false, since.saturating_add(1), limit)
                    .await?;
                let m = parse(raw.frames.clone())?;
                let complete = is_complete(since, raw.oldest, raw.latest);
                (raw, m, complete)
            }
            Some(Since::Time(t)) => {
                // Stream ids are offsets, not times: read what is retained
                // (bounded by the history length) and filter.
                let raw = self.read_raw(room, false, 1, usize::MAX >> 1).await?;
                let m: Vec<MessageFrame> = parse(raw.frames.clone())?
                    .into_iter()
                    .filter(|m| m.timestamp > t)
                    .take(limit)
                    .collect();
                (raw, m, true)
            }
        };
        Ok(HistoryPage {
            messages,
            position: StreamPosition {
                offset: raw.latest,
                epoch: raw.epoch,
            },
            complete,
        })
    }
}
