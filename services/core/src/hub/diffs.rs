//! Coalescing a summarised room's joins and leaves into one `presence_diff`
//! frame per room per interval on this node.
//!
//! Backends announce each change in a summarised room as a one-user
//! `presence_diff` (see `presence`); [`Hub::deliver`](super::Hub::deliver)
//! hands those here instead of fanning them out, and the node's flush task
//! ([`Hub::flush_presence`](super::Hub::flush_presence), every
//! `presence.diff_interval_ms`) sends each room's members one frame with
//! who came and went since the last flush (at most a page of them listed,
//! the rest counted).
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
    /// The frame for settled members: the net change (`None` when there is
    /// none), listing at most `max` users.
    pub(super) fn net(&self, room: &RoomId, max: usize) -> Option<PresenceDiffFrame> {
        let frame = self.frame(room, max, |c| c.was != c.now);
        (!frame.joins.is_empty() || !frame.leaves.is_empty()).then_some(frame)
    }

    /// The frame for members still settling: every changed user's last
    /// state, listing at most `max` users.
    pub(super) fn last(&self, room: &RoomId, max: usize) -> PresenceDiffFrame {
        self.frame(room, max, |_| true)
    }

    /// The changes `keep` selects, the first `max` (by user id) listed and
    /// the rest counted in `omitted`. A diff goes to every member of the
    /// room each interval: listing everyone who came during a connect storm
    /// or a drain would make each join cost O(room) bytes (5,000 members
    /// joining wrote ~1.25 GB of diffs), and a socket's write buffer keeps
    /// the capacity of the largest frame it sent.
    fn frame(
        &self,
        room: &RoomId,
        max: usize,
        keep: impl Fn(&Change) -> bool,
    ) -> PresenceDiffFrame {
        let (mut joins, mut leaves, mut omitted) = (Vec::new(), Vec::new(), 0u64);
        for (id, c) in self.changes.iter().filter(|(_, c)| keep(c)) {
            if joins.len() + leaves.len() >= max {
                omitted += 1;
                continue;
            }
            let user = PresenceUser {
                user_id: id.clone(),
                username: c.username.clone(),
            };
            if c.now { &mut joins } else { &mut leaves }.push(user);
        }
        PresenceDiffFrame {
            room_id: room.clone(),
            joins,
            leaves,
            omitted: (omitted > 0).then_some(omitted),
            count: self.count,
        }
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
        let net = p.net(&r, 100).unwrap();
        assert_eq!((ids(&net.joins), ids(&net.leaves)), (vec!["b"], vec![]));
        assert_eq!((net.count, net.omitted), (11, None));
        let last = p.last(&r, 100);
        assert_eq!(
            (ids(&last.joins), ids(&last.leaves)),
            (vec!["a", "b"], vec!["c"])
        );
        // At most `max` users listed; the rest counted.
        let capped = p.last(&r, 2);
        assert_eq!(
            (ids(&capped.joins), ids(&capped.leaves)),
            (vec!["a", "b"], vec![])
        );
        assert_eq!((capped.omitted, capped.count), (Some(1), 11));
        assert!(d.take().1.is_empty(), "taken once");
    }

    #[test]
    fn only_net_zero_changes_make_no_frame_for_settled_members() {
        let d = Diffs::default();
        let r = RoomId::parse("r").unwrap();
        d.absorb(diff(&r, "a", false, 9));
        d.absorb(diff(&r, "a", true, 10));
        let p = d.take().1.remove(&r).unwrap();
        assert!(p.net(&r, 100).is_none());
        assert_eq!(ids(&p.last(&r, 100).joins), ["a"]);
    }
}
