//! Coalescing a summarised room's joins and leaves into one `presence_diff`
//! frame per room per interval on this node.
//!
//! Backends announce each change in a summarised room as a one-user
//! `presence_diff` (see `presence`); [`Hub::deliver`](super::Hub::deliver)
//! hands those here instead of fanning them out, and the node's flush task
//! ([`Hub::flush_presence`](super::Hub::flush_presence), every
//! `presence.diff_interval_ms`) sends each room's members one frame with
//! everyone who came and went since the last flush.
//!
//! Two frames per room, because members stand in two places:
//! - a settled member's list was right at the last flush, so it gets the
//!   *net* change: a user who left and came back (a reconnect, a node
//!   drain) is no news and costs nothing;
//! - a member whose `presence` snapshot may have been taken inside the
//!   interval (it joined the hub and its snapshot had not yet come back by
//!   the last flush) cannot know where the interval started, so it gets
//!   each changed user's *last* state. A snapshot is taken after the member
//!   joined the hub, so every change it misses arrives here afterwards, and
//!   applying a user's last state to any earlier snapshot gives the truth.
//!
//! Locking: one mutex over the pending rooms, held for a map operation
//! (absorb) or a swap (take), never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use roomcast_protocol::{PresenceDiffFrame, PresenceUser, RoomId, UserId};

/// The changes waiting for the next flush.
#[derive(Debug, Default)]
pub(super) struct Diffs {
    pending: Mutex<HashMap<RoomId, Pending>>,
    /// Flushes so far. A member whose snapshot came back at generation `g`
    /// is settled from flush `g + 1` on.
    generation: AtomicU64,
}

/// One room's changes since the last flush.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// By user id, so that frames list users in order.
    changes: BTreeMap<UserId, Change>,
    /// The count the last change carried.
    count: u64,
}

#[derive(Debug)]
struct Change {
    username: String,
    /// Online at the last flush (the state before this user's first change).
    was: bool,
    /// Online after its last change.
    now: bool,
}

impl Diffs {
    /// Adds a backend's diff to its room's pending changes.
    pub(super) fn absorb(&self, diff: PresenceDiffFrame) {
        let mut pending = self.pending.lock();
        let room = pending.entry(diff.room_id).or_default();
        for (users, online) in [(diff.joins, true), (diff.leaves, false)] {
            for u in users {
                let change = room.changes.entry(u.user_id).or_insert(Change {
                    username: String::new(),
                    was: !online,
                    now: online,
                });
                change.now = online;
                change.username = u.username;
            }
        }
        room.count = diff.count;
    }

    /// How many users' changes in `room` are pending.
    pub(super) fn pending(&self, room: &RoomId) -> usize {
        self.pending.lock().get(room).map_or(0, |p| p.changes.len())
    }

    /// The current generation (a member settling now is settled after the
    /// next flush).
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Takes every room's pending changes, starting the next generation.
    /// Returns the generation they belong to.
    pub(super) fn take(&self) -> (u64, HashMap<RoomId, Pending>) {
        let mut pending = self.pending.lock();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel);
        (generation, std::mem::take(&mut *pending))
    }
}

impl Pending {
    /// The frames for settled members: the net change (none when there is
    /// none), at most `max` users per frame.
    pub(super) fn net(&self, room: &RoomId, max: usize) -> Vec<PresenceDiffFrame> {
        self.frames(room, max, |c| c.was != c.now)
    }

    /// The frames for members still settling: every changed user's last
    /// state, at most `max` users per frame.
    pub(super) fn last(&self, room: &RoomId, max: usize) -> Vec<PresenceDiffFrame> {
        self.frames(room, max, |_| true)
    }

    /// The changes `keep` selects, in frames of at most `max` users: a
    /// socket's write buffer keeps the capacity of the largest frame it
    /// sent, so one interval's thousand joins must not become one frame of
    /// tens of KiB held by every member of the room.
    fn frames(
        &self,
        room: &RoomId,
        max: usize,
        keep: impl Fn(&Change) -> bool,
    ) -> Vec<PresenceDiffFrame> {
        let kept: Vec<(&UserId, &Change)> = self.changes.iter().filter(|(_, c)| keep(c)).collect();
        kept.chunks(max.max(1))
            .map(|chunk| {
                let (mut joins, mut leaves) = (Vec::new(), Vec::new());
                for (id, c) in chunk {
                    let user = PresenceUser {
                        user_id: (*id).clone(),
                        username: c.username.clone(),
                    };
                    if c.now { &mut joins } else { &mut leaves }.push(user);
                }
                PresenceDiffFrame {
                    room_id: room.clone(),
                    joins,
                    leaves,
                    count: self.count,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(room: &RoomId, user: &str, joined: bool, count: u64) -> PresenceDiffFrame {
        crate::presence::diff_of(
            room,
            &PresenceUser {
                user_id: UserId::parse(user).unwrap(),
                username: user.to_uppercase(),
            },
            joined,
            count,
        )
    }

    fn ids(users: &[PresenceUser]) -> Vec<&str> {
        users.iter().map(|u| u.user_id.as_str()).collect()
    }

    #[test]
    fn a_leave_and_rejoin_is_no_news_to_settled_members_only() {
        let d = Diffs::default();
        let r = RoomId::parse("r").unwrap();
        d.absorb(diff(&r, "b", true, 11));
        d.absorb(diff(&r, "a", false, 10));
        d.absorb(diff(&r, "a", true, 11));
        d.absorb(diff(&r, "c", true, 12));
        d.absorb(diff(&r, "c", false, 11));
        let (generation, mut rooms) = d.take();
        assert_eq!((generation, d.generation()), (0, 1));
        let p = rooms.remove(&r).unwrap();
        let net = p.net(&r, 100);
        assert_eq!(net.len(), 1);
        assert_eq!(
            (ids(&net[0].joins), ids(&net[0].leaves)),
            (vec!["b"], vec![])
        );
        assert_eq!(net[0].count, 11);
        let last = p.last(&r, 100);
        assert_eq!(
            (ids(&last[0].joins), ids(&last[0].leaves)),
            (vec!["a", "b"], vec!["c"])
        );
        // At most `max` users a frame, each with the count.
        let split = p.last(&r, 2);
        assert_eq!(split.len(), 2);
        assert_eq!(
            (ids(&split[0].joins), ids(&split[1].leaves)),
            (vec!["a", "b"], vec!["c"])
        );
        assert!(split.iter().all(|f| f.count == 11));
        assert!(d.take().1.is_empty(), "taken once");
    }

    #[test]
    fn only_net_zero_changes_make_no_frame_for_settled_members() {
        let d = Diffs::default();
        let r = RoomId::parse("r").unwrap();
        d.absorb(diff(&r, "a", false, 9));
        d.absorb(diff(&r, "a", true, 10));
        let p = d.take().1.remove(&r).unwrap();
        assert!(p.net(&r, 100).is_empty());
        assert_eq!(ids(&p.last(&r, 100)[0].joins), ["a"]);
    }
}
