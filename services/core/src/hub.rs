//! This node's rooms and the local connections in each.
//!
//! The hub is where fan-out happens on a node: given an [`Envelope`], it
//! pushes the same `Bytes` into the bounded outbound queue of every local
//! member of the room. It never awaits: a full queue means that connection's
//! consumer is too slow, so the connection is told to close
//! ([`KillReason::SlowConsumer`]) instead of the hub waiting for it or
//! letting memory grow. One slow client never delays the others.
//!
//! Locking: member lists live in [`Sharded`] `RwLock`s. Delivery takes a
//! read lock (deliveries to rooms of one shard run in parallel); join and
//! leave take a write lock. No lock is ever held across an `.await`: every
//! operation here is synchronous (a push into a bounded [`Outbox`]), which is
//! why the hub can use blocking locks safely inside async tasks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use roomcast_protocol::{RoomId, ServerFrame, Timestamp, UserId};

use crate::envelope::Envelope;
use crate::outbox::{Outbox, PushError};
use crate::shard::Sharded;

/// How every `presence_diff` frame starts (serde writes the tag first).
const DIFF_PREFIX: &[u8] = br#"{"type":"presence_diff""#;

/// Queues `out`, or, when the queue is full, closes its consumer as too
/// slow ([`KillReason::SlowConsumer`]): the one place every push from the
/// hub applies that rule. The error says which happened.
fn offer(outbox: &Outbox, out: Outbound) -> Result<(), PushError> {
    let pushed = outbox.push(out);
    if let Err(PushError::Full) = pushed {
        outbox.kill(KillReason::SlowConsumer);
    }
    pushed
}

/// A connection's id, unique on this node.
pub type ConnId = u64;

/// One frame queued for one connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// JSON text, shared with every other recipient.
    pub frame: Bytes,
    /// The message's offset, 0 for events. Lets a recovering connection skip
    /// what it already replayed from history.
    pub offset: u64,
    pub published_at: Timestamp,
    /// The member it was queued for ([`Member::conn`]): a connection that
    /// is a member of several rooms (a multiplexed socket, one member id
    /// per subscription) tells its rooms apart by it.
    pub to: ConnId,
}

/// Why the hub (or anything else outside the connection) ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KillReason {
    /// Its outbound queue was full: the client does not read fast enough.
    SlowConsumer = 1,
    /// This node can no longer vouch for the connection's stream (its room's
    /// history was reset, or the node lost its presence lease): the client
    /// must reconnect and resynchronize with `since`.
    Resync = 2,
    /// The application disconnected the user and allows it to reconnect.
    Disconnected = 3,
    /// The application disconnected the user for good (do not reconnect).
    Banned = 4,
}

/// The kill reason of an application's disconnect.
pub fn kill_reason(reconnect: bool) -> KillReason {
    if reconnect {
        KillReason::Disconnected
    } else {
        KillReason::Banned
    }
}

/// A local connection's membership of one room, as the hub sees it: an id
/// (unique on the node; a socket in several rooms has one per room), a
/// user, an outbox (shared by all of one socket's memberships).
#[derive(Debug, Clone)]
pub struct Member {
    pub conn: ConnId,
    pub user: UserId,
    pub outbox: Arc<Outbox>,
    /// The presence-diff generation in which its `presence` snapshot came
    /// back ([`Hub::settle`]); `u64::MAX` until then (see `diffs`).
    settled_at: u64,
}

impl Member {
    pub fn new(conn: ConnId, user: UserId, outbox: Arc<Outbox>) -> Self {
        Self {
            conn,
            user,
            outbox,
            settled_at: u64::MAX,
        }
    }
}

/// What a node's owner wants to know about fan-out (the edge feeds its
/// Prometheus metrics and traces from this; the hub itself knows neither).
/// Called once per envelope per node, never per recipient.
pub trait HubObserver: Send + Sync + 'static {
    /// `env` was fanned out on this node, starting at `started`: `targeted`
    /// local connections should have got it, `delivered` did.
    fn fanned_out(
        &self,
        env: &Envelope,
        targeted: usize,
        delivered: usize,
        started: std::time::Instant,
    );
    /// `n` frames were not queued because the recipient was too slow (each
    /// such recipient is being closed).
    fn dropped_slow(&self, n: usize);
}

/// An observer that counts nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl HubObserver for NoObserver {
    fn fanned_out(&self, _: &Envelope, _: usize, _: usize, _: std::time::Instant) {}
    fn dropped_slow(&self, _: usize) {}
}

mod diffs;
mod pages;
mod users;

use users::UserSocket;
pub use users::{CONTROL_QUEUE, Control};

/// This node's rooms.
pub struct Hub {
    rooms: Sharded<HashMap<RoomId, Vec<Member>>>,
    /// Every local multiplexed socket, by user. (Single-room sockets are
    /// found through the rooms: they are never sent to as a user, and a
    /// disconnect is rare enough to scan for them.)
    users: Sharded<HashMap<UserId, Vec<UserSocket>>>,
    /// Local sockets following a user's status, by the user followed.
    watchers: Sharded<HashMap<UserId, Vec<UserSocket>>>,
    active_rooms: AtomicUsize,
    observer: Arc<dyn HubObserver>,
    /// Summarised rooms' joins and leaves waiting for the next flush.
    diffs: diffs::Diffs,
    /// Summarised rooms' first presence page, for this generation's
    /// newcomers.
    pages: pages::Pages,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("active_rooms", &self.rooms_active())
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(Arc::new(NoObserver))
    }
}

impl Hub {
    pub fn new(observer: Arc<dyn HubObserver>) -> Self {
        Self {
            rooms: Sharded::new(64),
            users: Sharded::new(64),
            watchers: Sharded::new(64),
            active_rooms: AtomicUsize::new(0),
            observer,
            diffs: diffs::Diffs::default(),
            pages: Sharded::new(64),
        }
    }

    /// Adds a connection to a room. True when it is the room's first local
    /// member, i.e. the node must now subscribe to the room.
    pub fn join(&self, room: &RoomId, mut member: Member) -> bool {
        member.settled_at = u64::MAX;
        let mut shard = self.rooms.shard(room).write();
        let members = shard.entry(room.clone()).or_default();
        members.push(member);
        let first = members.len() == 1;
        if first {
            self.active_rooms.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Removes a connection. True when the room has no local member left,
    /// i.e. the node may unsubscribe.
    pub fn leave(&self, room: &RoomId, conn: ConnId) -> bool {
        let mut shard = self.rooms.shard(room).write();
        let Some(members) = shard.get_mut(room) else {
            return false;
        };
        let Some(i) = members.iter().position(|m| m.conn == conn) else {
            return false;
        };
        members.swap_remove(i);
        if members.is_empty() {
            shard.remove(room);
            drop(shard);
            self.active_rooms.fetch_sub(1, Ordering::Relaxed);
            self.forget_page(room);
            return true;
        }
        false
    }

    /// Marks member `conn` of `room` as holding the room's presence from
    /// now on (its `presence` snapshot came back): from the flush after the
    /// next, it gets net presence diffs.
    pub fn settle(&self, room: &RoomId, conn: ConnId) {
        let generation = self.diffs.generation();
        let mut shard = self.rooms.shard(room).write();
        if let Some(m) = shard
            .get_mut(room)
            .and_then(|ms| ms.iter_mut().find(|m| m.conn == conn))
        {
            m.settled_at = generation;
        }
    }

    /// Sends every summarised room's pending joins and leaves to its local
    /// members: per room, one `presence_diff` frame listing at most
    /// `max_users` users (see `diffs`). Called by the node every
    /// `presence.diff_interval_ms`. Returns how many frames were queued.
    pub fn flush_presence(&self, max_users: usize) -> usize {
        let (generation, rooms) = self.diffs.take();
        let encode = |f: roomcast_protocol::PresenceDiffFrame| -> Bytes {
            Bytes::from(ServerFrame::PresenceDiff(f).to_json())
        };
        let mut queued = 0;
        for (room, pending) in rooms {
            let net = pending.net(&room, max_users).map(encode);
            let mut last = None;
            let shard = self.rooms.shard(&room).read();
            let Some(members) = shard.get(&room) else {
                continue;
            };
            let mut slow = 0;
            for m in members {
                let frame = if m.settled_at >= generation {
                    last.get_or_insert_with(|| encode(pending.last(&room, max_users)))
                } else if let Some(net) = &net {
                    net
                } else {
                    continue;
                };
                let out = Outbound {
                    frame: frame.clone(),
                    offset: 0,
                    published_at: Timestamp::now(),
                    to: m.conn,
                };
                match offer(&m.outbox, out) {
                    Ok(()) => queued += 1,
                    Err(PushError::Full) => slow += 1,
                    Err(PushError::Closed) => {}
                }
            }
            drop(shard);
            if slow > 0 {
                self.observer.dropped_slow(slow);
            }
        }
        queued
    }

    /// How many users' changes in `room` wait for the next flush.
    pub fn pending_presence(&self, room: &RoomId) -> usize {
        self.diffs.pending(room)
    }

    /// Whether any local connection is in `room`.
    pub fn has_members(&self, room: &RoomId) -> bool {
        self.rooms.shard(room).read().contains_key(room)
    }

    /// Rooms with at least one local member.
    pub fn rooms_active(&self) -> usize {
        self.active_rooms.load(Ordering::Relaxed)
    }

    /// Every room with local members (to resubscribe after a reconnect).
    pub fn local_rooms(&self) -> Vec<RoomId> {
        self.rooms
            .all()
            .flat_map(|s| s.read().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Every local connection: its room, user and id.
    pub fn local_connections(&self) -> Vec<(RoomId, UserId, ConnId)> {
        let mut out = Vec::new();
        for shard in self.rooms.all() {
            for (room, members) in shard.read().iter() {
                out.extend(
                    members
                        .iter()
                        .map(|m| (room.clone(), m.user.clone(), m.conn)),
                );
            }
        }
        out
    }

    /// Asks every local connection of `room` to close with `reason`.
    pub fn kill_room(&self, room: &RoomId, reason: KillReason) -> usize {
        let shard = self.rooms.shard(room).read();
        let members = shard.get(room).map_or(&[][..], |m| &m[..]);
        members.iter().for_each(|m| m.outbox.kill(reason));
        members.len()
    }

    /// Asks every local connection to close with `reason`.
    pub fn kill_all(&self, reason: KillReason) -> usize {
        self.kill_where(|_, _| true, reason)
    }

    /// Asks the local connections `doomed` says yes to (by room and id) to
    /// close with `reason`; how many.
    pub fn kill_where(
        &self,
        doomed: impl Fn(&RoomId, ConnId) -> bool,
        reason: KillReason,
    ) -> usize {
        let mut n = 0;
        for shard in self.rooms.all() {
            for (room, members) in shard.read().iter() {
                for m in members.iter().filter(|m| doomed(room, m.conn)) {
                    m.outbox.kill(reason);
                    n += 1;
                }
            }
        }
        n
    }

    /// Queues `env` to every local member of its room (but the excluded
    /// user). Returns how many got it.
    pub fn deliver(&self, env: &Envelope) -> usize {
        if env.offset == 0 && env.frame.starts_with(DIFF_PREFIX) {
            // A summarised room's join or leave: coalesced, sent at the
            // next flush. (A diff that does not parse is no announcement.)
            if let Ok(ServerFrame::PresenceDiff(diff)) = serde_json::from_slice(&env.frame) {
                self.diffs.absorb(diff);
            }
            return 0;
        }
        let started = std::time::Instant::now();
        let shard = self.rooms.shard(&env.room).read();
        let Some(members) = shard.get(&env.room) else {
            return 0;
        };
        let (mut targeted, mut delivered, mut slow) = (0, 0, 0);
        for m in members {
            if env.exclude_user.as_ref() == Some(&m.user) {
                continue;
            }
            targeted += 1;
            let out = Outbound {
                frame: env.frame.clone(),
                offset: env.offset,
                published_at: env.published_at,
                to: m.conn,
            };
            match offer(&m.outbox, out) {
                Ok(()) => delivered += 1,
                Err(PushError::Full) => slow += 1,
                // The connection is on its way out and will leave the room.
                Err(PushError::Closed) => {}
            }
        }
        drop(shard);
        self.observer.fanned_out(env, targeted, delivered, started);
        if slow > 0 {
            self.observer.dropped_slow(slow);
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: ConnId, user: &str, cap: usize) -> (Member, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(cap));
        (
            Member::new(conn, UserId::parse(user).unwrap(), outbox.clone()),
            outbox,
        )
    }

    fn env(room: &RoomId, exclude: Option<&str>) -> Envelope {
        Envelope {
            room: room.clone(),
            frame: Bytes::from_static(b"{}"),
            offset: 1,
            exclude_user: exclude.map(|u| UserId::parse(u).unwrap()),
            origin_node: "n".into(),
            published_at: Timestamp::now(),
            trace: None,
        }
    }

    #[test]
    fn first_join_and_last_leave_are_reported() {
        let hub = Hub::default();
        let room = RoomId::parse("r").unwrap();
        let (a, _ra) = member(1, "a", 4);
        let (b, _rb) = member(2, "b", 4);
        assert!(hub.join(&room, a));
        assert!(!hub.join(&room, b));
        assert_eq!(hub.rooms_active(), 1);
        assert!(!hub.leave(&room, 1));
        assert!(!hub.leave(&room, 99), "unknown conn is no leave");
        assert!(hub.leave(&room, 2));
        assert_eq!(hub.rooms_active(), 0);
        assert!(!hub.has_members(&room));
    }

    #[test]
    fn delivers_shared_bytes_except_to_the_excluded_user() {
        let hub = Hub::default();
        let room = RoomId::parse("r").unwrap();
        let (a, ra) = member(1, "a", 4);
        let (b, rb) = member(2, "b", 4);
        hub.join(&room, a);
        hub.join(&room, b);
        assert_eq!(hub.deliver(&env(&room, Some("a"))), 1);
        assert!(ra.try_pop().is_none());
        assert_eq!(&rb.try_pop().unwrap().frame[..], b"{}");
    }

    #[test]
    fn kill_where_spares_the_others() {
        let hub = Hub::default();
        let room = RoomId::parse("r").unwrap();
        let (old, old_ctl) = member(3, "a", 4);
        let (new, new_ctl) = member(7, "b", 4);
        hub.join(&room, old);
        hub.join(&room, new);
        assert_eq!(hub.kill_where(|_, c| c == 3, KillReason::Resync), 1);
        assert_eq!(old_ctl.reason(), Some(KillReason::Resync));
        assert_eq!(new_ctl.reason(), None);
    }

    #[test]
    fn a_full_queue_kills_only_that_connection() {
        let hub = Hub::default();
        let room = RoomId::parse("r").unwrap();
        let (slow, slow_ctl) = member(1, "slow", 1);
        let (fast, fast_ctl) = member(2, "fast", 8);
        hub.join(&room, slow);
        hub.join(&room, fast);
        hub.deliver(&env(&room, None));
        assert_eq!(slow_ctl.reason(), None);
        hub.deliver(&env(&room, None));
        assert_eq!(slow_ctl.reason(), Some(KillReason::SlowConsumer));
        assert_eq!(fast_ctl.reason(), None);
        assert!(fast_ctl.try_pop().is_some() && fast_ctl.try_pop().is_some());
    }
}
