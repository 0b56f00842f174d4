//! Who is online in each room, cluster-wide, and how a room's members hear
//! of it.
//!
//! Presence counts connections, not users: a user with two tabs has two
//! entries. A join says whether the entry is the user's first in the room
//! anywhere (announce it), a leave whether it was the last. The decision is
//! the backend's, made atomically, so two nodes never both announce.
//!
//! How a change is announced depends on the room's size ([`Summary`]): in a
//! room of at most `above` members every change is a `user_joined` /
//! `user_left` frame to the others and a newcomer gets the whole list, as
//! the first frontends expect. Above it, the newcomer gets a count and the
//! first page, and each change is published as a one-user `presence_diff`
//! that every node coalesces (`hub::diffs`) into one frame per room per
//! interval: a join costs O(1) frames for the others, not O(room).
//! The backend publishes the announcement in the same atomic step as the
//! decision, so the announcements of one room reach every node in the order
//! the changes were made (a leave and a quick rejoin never arrive swapped).

mod memory;

use async_trait::async_trait;
use bytes::Bytes;
use roomcast_protocol::{PresenceDiffFrame, PresenceUser, RoomId, ServerFrame, UserId};

use crate::BackendError;
use crate::broker::Broker;

pub use memory::MemoryPresence;

/// The cluster-wide key of connection `conn` of `node`: `<node>/<conn>`
/// (node ids cannot contain `/`).
pub fn conn_key(node: &str, conn: u64) -> String {
    format!("{node}/{conn}")
}

/// Where a room's presence stops being exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Rooms with more members than this are summarised.
    pub above: u64,
    /// How many members a newcomer of a summarised room is sent (the first
    /// ones by user id).
    pub page: usize,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            above: 200,
            page: 100,
        }
    }
}

impl Summary {
    /// Whether a room of `count` members is summarised.
    pub fn summarised(&self, count: u64) -> bool {
        count > self.above
    }

    /// Whether a change that left `count` members in the room is announced
    /// as a diff: when the room was summarised before or after it.
    pub fn as_diff(&self, joined: bool, count: u64) -> bool {
        let before = if joined {
            count.saturating_sub(1)
        } else {
            count + 1
        };
        self.summarised(count) || self.summarised(before)
    }
}

/// What a newcomer learns when it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// Its user's first connection in the room (announced to the others).
    pub first: bool,
    /// Everyone online, ordered by user id (this connection included); in a
    /// summarised room only the first [`Summary::page`] of them.
    pub users: Vec<PresenceUser>,
    /// How many users are online in the room.
    pub count: u64,
}

impl Joined {
    /// Whether `users` is only a page of the room.
    pub fn is_page(&self) -> bool {
        self.users.len() as u64 != self.count
    }
}

/// The one-user diff announcing `user`'s join (or leave) that left `count`
/// members in `room`.
pub fn diff_of(room: &RoomId, user: &PresenceUser, joined: bool, count: u64) -> PresenceDiffFrame {
    let (joins, leaves) = if joined {
        (vec![user.clone()], vec![])
    } else {
        (vec![], vec![user.clone()])
    };
    PresenceDiffFrame {
        room_id: room.clone(),
        joins,
        leaves,
        omitted: None,
        count,
    }
}

/// The JSON text of a frame, as the bytes every recipient shares.
pub fn frame_bytes(frame: ServerFrame) -> Bytes {
    Bytes::from(frame.to_json())
}

/// Cluster-wide presence.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records connection `conn` (unique in the cluster, e.g. `node/17`) of
    /// `user` in `room`, announcing nothing. True when it is the user's
    /// first there.
    async fn add(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> Result<bool, BackendError>;

    /// Forgets connection `conn`, announcing nothing. True when it was the
    /// user's last there.
    async fn remove(&self, room: &RoomId, user: &UserId, conn: &str) -> Result<bool, BackendError>;

    /// The users online in `room`, ordered by user id.
    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceUser>, BackendError>;

    /// Up to `limit` users online in `room` with ids after `after`, ordered
    /// by user id, and how many are online in all. Costs O(limit), not
    /// O(room).
    async fn page(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(Vec<PresenceUser>, u64), BackendError>;

    /// Users online across all rooms (a user in two rooms counts twice).
    async fn online_count(&self) -> Result<u64, BackendError>;

    /// Whether `user` is online in any room, on any node.
    async fn is_online(&self, user: &UserId) -> Result<bool, BackendError>;

    /// [`add`](Self::add) and what the newcomer learns, in one step:
    /// everyone online, or in a room `summary` summarises, the count and
    /// the first page. Announces nothing.
    async fn join(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
    ) -> Result<Joined, BackendError>;

    /// [`join`](Self::join), and when this is the user's first connection
    /// in the room, its announcement in the same step: `joined` (its
    /// `user_joined` frame) to everyone else in the room, or in a room
    /// `summary` summarises, a one-user `presence_diff` to everyone.
    async fn join_announced(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
        broker: &dyn Broker,
        joined: Bytes,
    ) -> Result<Joined, BackendError>;

    /// [`remove`](Self::remove), and when it was the user's last connection
    /// in the room, its announcement in the same step: `left` (its
    /// `user_left` frame) to everyone, or a one-user `presence_diff` where
    /// `summary` says so. True when it was the last.
    async fn leave_announced(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
        broker: &dyn Broker,
        left: Bytes,
    ) -> Result<bool, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_a_diff_when_the_room_is_summarised_before_or_after_it() {
        let s = Summary { above: 3, page: 2 };
        assert!(!s.as_diff(true, 3), "the third joins a room of two");
        assert!(s.as_diff(true, 4), "the fourth makes it summarised");
        assert!(s.as_diff(false, 3), "the fourth leaves: it was summarised");
        assert!(!s.as_diff(false, 2));
    }
}
