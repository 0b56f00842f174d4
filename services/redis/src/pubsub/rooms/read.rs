//! One read of a room's stream, run in a task of its own: the room's
//! position, or its stored messages after a cursor, delivered to the hub a
//! page at a time. [`Streams`] is what it reads from.

use async_trait::async_trait;
use bytes::Bytes;
use roomcast_core::envelope::Envelope;
use roomcast_core::history::{History, StreamPosition};
use roomcast_core::hub::Hub;
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::{RoomId, Timestamp};

use super::Cursor;
use crate::history::RedisHistory;

/// Frames fetched per backfill read.
const BACKFILL_PAGE: usize = 1000;

/// What the session reads from a room's stream; [`RedisHistory`] in
/// production (a seam for tests that pause one room's reads).
#[async_trait]
pub trait Streams: Send + Sync + 'static {
    async fn position(&self, room: &RoomId) -> Result<StreamPosition, BackendError>;
    /// Stored frames after `offset` (at most `count`), and the position.
    async fn frames_after(
        &self,
        room: &RoomId,
        offset: u64,
        count: usize,
    ) -> Result<(StreamPosition, Vec<(u64, String)>), BackendError>;
}

#[async_trait]
impl Streams for RedisHistory {
    async fn position(&self, room: &RoomId) -> Result<StreamPosition, BackendError> {
        History::position(self, room).await
    }

    async fn frames_after(
        &self,
        room: &RoomId,
        offset: u64,
        count: usize,
    ) -> Result<(StreamPosition, Vec<(u64, String)>), BackendError> {
        RedisHistory::frames_after(self, room, offset, count).await
    }
}

#[derive(Debug)]
pub(super) enum Outcome {
    /// Read (and delivered) up to here.
    At(Cursor),
    /// The room's history was lost: its clients must resync.
    Reset(Cursor),
}

#[derive(Debug, Clone)]
pub(super) enum Read {
    Position,
    After { from: Cursor, until: u64 },
}

impl Read {
    /// Everything the room's stream holds past `cursor`, or, with none yet,
    /// where it stands.
    pub(super) fn catch_up(cursor: Option<Cursor>) -> Self {
        match cursor {
            None => Self::Position,
            Some(from) => Self::After {
                from,
                until: u64::MAX,
            },
        }
    }
}

/// One read: the room's position, or its stored messages after a cursor
/// up to `until`, delivered to the hub a page at a time.
pub(super) async fn run<S: Streams>(
    streams: &S,
    hub: &Hub,
    stats: &BackendStats,
    room: &RoomId,
    read: Read,
) -> Result<Outcome, BackendError> {
    let (mut cursor, until) = match read {
        Read::Position => {
            let pos = streams.position(room).await?;
            return Ok(Outcome::At(Cursor {
                epoch: pos.epoch,
                last: pos.offset,
                frame: None,
            }));
        }
        Read::After { from, until } => (from, until),
    };
    // The first page starts at the last delivered offset itself when its
    // frame is known, to check it is still the same message.
    let mut check = cursor.frame.is_some() && cursor.last > 0;
    loop {
        if cursor.last >= until {
            return Ok(Outcome::At(cursor));
        }
        let from = if check { cursor.last - 1 } else { cursor.last };
        let (pos, frames) = streams.frames_after(room, from, BACKFILL_PAGE).await?;
        let reset = || {
            Ok(Outcome::Reset(Cursor {
                epoch: pos.epoch.clone(),
                last: pos.offset,
                frame: None,
            }))
        };
        if pos.epoch != cursor.epoch {
            return reset();
        }
        let replaced = check
            && frames.first().is_some_and(|(o, f)| {
                *o == cursor.last && cursor.frame.as_deref() != Some(f.as_bytes())
            });
        if pos.offset < cursor.last || replaced {
            // The stream went back: Redis lost writes this node had
            // delivered (a failover to a replica that never got them, a
            // restart from an old snapshot), and their offsets are (or will
            // be) reused for other messages, which the cursor would drop as
            // seen. Start the room over: its clients recover from what
            // history now holds.
            tracing::warn!(%room, delivered = cursor.last, stored = pos.offset, "room history went back (writes lost by redis); asking its clients to resync");
            BackendStats::add(&stats.history_rewinds, 1);
            return reset();
        }
        check = false;
        let mut n = 0;
        let after = cursor.last;
        for (offset, frame) in frames
            .into_iter()
            .filter(|(o, _)| *o > after && *o <= until)
        {
            if offset != cursor.last + 1 {
                tracing::warn!(%room, from = cursor.last + 1, to = offset - 1, "messages trimmed from history before this node could deliver them");
            }
            let frame = Bytes::from(frame);
            hub.deliver(&Envelope {
                room: room.clone(),
                frame: frame.clone(),
                offset,
                exclude_user: None,
                origin_node: "backfill".into(),
                published_at: Timestamp::now(),
                trace: None,
            });
            cursor.last = offset;
            cursor.frame = Some(frame);
            n += 1;
        }
        if n > 0 {
            tracing::info!(%room, n, "backfilled messages missed by the subscription");
            BackendStats::add(&stats.history_backfilled, n);
        }
        if n == 0 || cursor.last >= pos.offset.min(until) {
            return Ok(Outcome::At(cursor));
        }
    }
}
