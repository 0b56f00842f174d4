//! The rooms of the node's pub/sub session: where each stands in its
//! stream, and the reads that move it, run off the session's loop.
//!
//! A room is `Live` (its publishes are delivered as they arrive, in offset
//! order) or `Busy`: a task is reading its stream (its first position, the
//! catch-up after a reconnect, or a gap's backfill) and its publishes wait
//! in arrival order until the read is done. So a room's live messages wait
//! for its own reads, never for another room's, and the loop itself never
//! awaits Redis for a room.
//!
//! A failed read is retried for that room alone, with backoff; after
//! `ATTEMPTS` the room gives up: its waiting joiners are refused and, if
//! it had clients already, they are told to resync (they reconnect with
//! `since` and recover from history themselves).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use roomcast_core::hub::{Hub, KillReason};
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::RoomId;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::broker::Shared;
use crate::envelope::Received;

/// Reads of a room before it gives up.
pub(super) const ATTEMPTS: u32 = 6;
/// The first retry's delay; each next one doubles it (50 ms .. 800 ms,
/// about 1.5 s in all, well inside a joiner's subscribe timeout).
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Stream reads in flight at once, over every room: a reconnect into
/// thousands of rooms reads them this many at a time, not all at once.
const READS_IN_FLIGHT: usize = 32;
/// Publishes a busy room holds. Past it, newer publishes are not kept: the
/// room reads them from its stream when its read is done.
const HELD_MAX: usize = 1024;
/// Answers a connection waiting for its room's subscription.
pub(super) type Reply = oneshot::Sender<Result<(), BackendError>>;

/// Where the node stands in a room's stream.
#[derive(Debug, Clone)]
pub(super) struct Cursor {
    pub epoch: String,
    pub last: u64,
    /// The frame delivered at `last` (a shared `Bytes`, not a copy), when
    /// known: a catch-up checks that the stream still holds it there, or
    /// the offsets were reused after Redis lost writes.
    pub frame: Option<bytes::Bytes>,
}

#[derive(Debug)]
enum State {
    Live(Cursor),
    Busy(Busy),
}

#[derive(Debug, Default)]
struct Busy {
    /// Unknown until the room's first read.
    cursor: Option<Cursor>,
    /// The channel's SUBSCRIBE is confirmed on the current connection.
    active: bool,
    /// Publishes that arrived meanwhile, in arrival order.
    held: VecDeque<Received>,
    /// The newest publish not held (past `HELD_MAX`): read it from history.
    overflow_to: u64,
    waiters: Vec<Reply>,
    /// The read in flight, by task id.
    task: Option<u64>,
    attempt: u32,
    /// A catch-up is owed: the connection was re-established after the
    /// read in flight started.
    catch_up: bool,
}

/// A read's result, back on the session's loop.
#[derive(Debug)]
pub(super) struct Done {
    room: RoomId,
    task: u64,
    result: Result<Outcome, BackendError>,
}

pub(super) struct Rooms<S: Streams> {
    states: HashMap<RoomId, State>,
    streams: Arc<S>,
    hub: Arc<Hub>,
    shared: Arc<Shared>,
    /// Unbounded, but each room has at most one read in flight: at most
    /// one message per room.
    done: mpsc::UnboundedSender<Done>,
    reads: Arc<Semaphore>,
    next_task: u64,
}

impl<S: Streams> Rooms<S> {
    pub fn new(
        streams: Arc<S>,
        hub: Arc<Hub>,
        shared: Arc<Shared>,
    ) -> (Self, mpsc::UnboundedReceiver<Done>) {
        let (done, rx) = mpsc::unbounded_channel();
        let rooms = Self {
            states: HashMap::new(),
            streams,
            hub,
            shared,
            done,
            reads: Arc::new(Semaphore::new(READS_IN_FLIGHT)),
            next_task: 0,
        };
        (rooms, rx)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// A connection asks for `room`. True when the room is new to the
    /// session: its channel must be subscribed.
    pub fn request(&mut self, room: &RoomId, reply: Reply) -> bool {
        match self.states.get_mut(room) {
            Some(State::Live(_)) => {
                let _ = reply.send(Ok(()));
                false
            }
            Some(State::Busy(b)) if b.active && b.cursor.is_some() => {
                let _ = reply.send(Ok(()));
                false
            }
            Some(State::Busy(b)) => {
                b.waiters.push(reply);
                false
            }
            None => {
                let busy = Busy {
                    waiters: vec![reply],
                    ..Busy::default()
                };
                self.states.insert(room.clone(), State::Busy(busy));
                true
            }
        }
    }

    /// The last local member of `room` may have left. True when the node
    /// no longer serves it (its channel is to be left). The hub decides,
    /// not the request: a connection may have joined since. The check and
    /// the removal happen under the write lock: a joining connection, which
    /// joins the hub before it reads `subscribed`, then either kept the
    /// room subscribed or finds it unsubscribed and asks again. A room not
    /// yet answered is checked when it is (see `answer`).
    pub fn release(&mut self, room: &RoomId) -> bool {
        let removed = {
            let mut subscribed = self.shared.subscribed.write();
            !self.hub.has_members(room) && subscribed.remove(room)
        };
        if removed {
            self.states.remove(room);
        }
        removed
    }

    /// The connection was (re-)established: every room the hub serves is
    /// to be subscribed again and caught up. Returns them.
    pub fn reconnected(&mut self) -> Vec<RoomId> {
        let local = self.hub.local_rooms();
        self.states.retain(|r, _| local.contains(r));
        for room in &local {
            let state = self
                .states
                .remove(room)
                .unwrap_or(State::Busy(Busy::default()));
            let busy = match state {
                State::Live(c) => Busy {
                    cursor: Some(c),
                    ..Busy::default()
                },
                State::Busy(b) => Busy {
                    active: false,
                    catch_up: true,
                    ..b
                },
            };
            self.states.insert(room.clone(), State::Busy(busy));
        }
        local
    }

    /// The connection was lost: nothing is subscribed any more. Waiting
    /// joiners are refused (they retry); rooms keep their cursors.
    pub fn disconnected(&mut self, why: &BackendError) {
        self.shared.subscribed.write().clear();
        for state in self.states.values_mut() {
            if let State::Busy(b) = state {
                b.active = false;
                for w in b.waiters.drain(..) {
                    let _ = w.send(Err(why.clone()));
                }
            }
        }
    }

    /// The channels of `rooms` are subscribed: start their reads.
    pub fn active(&mut self, rooms: &[RoomId]) -> Vec<RoomId> {
        let mut leave = Vec::new();
        for room in rooms {
            let Some(State::Busy(b)) = self.states.get_mut(room) else {
                continue;
            };
            b.active = true;
            if b.task.is_none() {
                let read = Read::catch_up(b.cursor.clone());
                b.catch_up = false;
                self.start(room, read, Duration::ZERO);
            }
            if self.answer(room) {
                leave.push(room.clone());
            }
        }
        leave
    }

    /// A publish on a room's channel.
    pub fn publish(&mut self, received: Received) {
        let room = received.envelope.room.clone();
        if received.envelope.offset == 0 {
            // Events (presence, typing) have no place in the stream.
            self.hub.deliver(&received.envelope);
            return;
        }
        match self.states.get_mut(&room) {
            // Not (or no longer) subscribed: a publish in flight.
            None => {}
            Some(State::Busy(b)) => {
                if b.held.len() < HELD_MAX {
                    b.held.push_back(received);
                } else {
                    b.overflow_to = b.overflow_to.max(received.envelope.offset);
                }
            }
            Some(State::Live(_)) => {
                let Some(State::Live(c)) = self.states.remove(&room) else {
                    unreachable!("just matched")
                };
                let busy = Busy {
                    cursor: Some(c),
                    active: true,
                    held: VecDeque::from([received]),
                    ..Busy::default()
                };
                self.states.insert(room.clone(), State::Busy(busy));
                self.drain(&room);
            }
        }
    }

    /// A read is done. Returns the rooms whose channel is to be left (the
    /// room gave up, or nobody is left in it).
    pub fn done(&mut self, done: Done) -> Vec<RoomId> {
        let room = done.room;
        let Some(State::Busy(b)) = self.states.get_mut(&room) else {
            return Vec::new();
        };
        if b.task != Some(done.task) {
            return Vec::new(); // a read of an earlier life of the room
        }
        b.task = None;
        match done.result {
            Err(e) => {
                b.attempt += 1;
                BackendStats::add(&self.shared.stats.room_read_failures, 1);
                if b.attempt < ATTEMPTS {
                    tracing::debug!(%room, attempt = b.attempt, error = %e, "room's stream read failed; retrying it alone");
                    let read = Read::catch_up(b.cursor.clone());
                    let delay = RETRY_FIRST * 2u32.pow(b.attempt - 1);
                    self.start(&room, read, delay);
                    return Vec::new();
                }
                tracing::warn!(%room, error = %e, "cannot read this room's stream; giving it up (its joiners are refused, its clients resync)");
                let Some(State::Busy(b)) = self.states.remove(&room) else {
                    unreachable!("just matched")
                };
                for w in b.waiters {
                    let _ = w.send(Err(e.clone()));
                }
                self.shared.subscribed.write().remove(&room);
                if b.cursor.is_some() {
                    // Clients were live in it: they recover on their own.
                    self.hub.kill_room(&room, KillReason::Resync);
                }
                vec![room]
            }
            Ok(outcome) => {
                b.attempt = 0;
                let cursor = match outcome {
                    Outcome::At(c) => c,
                    Outcome::Reset(c) => {
                        history_reset(&self.hub, &room);
                        c
                    }
                };
                b.cursor = Some(cursor.clone());
                if !b.active {
                    return Vec::new(); // `active` starts the catch-up
                }
                if b.catch_up {
                    b.catch_up = false;
                    self.start(&room, Read::catch_up(Some(cursor)), Duration::ZERO);
                    return Vec::new();
                }
                if self.answer(&room) {
                    return vec![room];
                }
                self.drain(&room);
                Vec::new()
            }
        }
    }

    /// Answers the room's waiters once its channel is active and its cursor
    /// known. True when nobody is in the room any more (its channel is to
    /// be left; the room is forgotten).
    fn answer(&mut self, room: &RoomId) -> bool {
        let Some(State::Busy(b)) = self.states.get_mut(room) else {
            return false;
        };
        if !b.active || b.cursor.is_none() {
            return false;
        }
        for w in b.waiters.drain(..) {
            let _ = w.send(Ok(()));
        }
        // Checked under the write lock, as the session's unsubscribe does:
        // a joiner joins the hub before it reads `subscribed`.
        let mut subscribed = self.shared.subscribed.write();
        if self.hub.has_members(room) {
            subscribed.insert(room.clone());
            return false;
        }
        subscribed.remove(room);
        drop(subscribed);
        self.states.remove(room);
        true
    }

    /// Delivers the held publishes that follow on; on a gap, starts its
    /// backfill (and stays busy); with nothing left, the room is live.
    fn drain(&mut self, room: &RoomId) {
        let Some(State::Busy(b)) = self.states.get_mut(room) else {
            return;
        };
        let Some(mut cursor) = b.cursor.clone() else {
            return;
        };
        while let Some(r) = b.held.pop_front() {
            if r.epoch != cursor.epoch {
                history_reset(&self.hub, room);
                cursor = Cursor {
                    epoch: r.epoch,
                    last: r.envelope.offset,
                    frame: None,
                };
                continue;
            }
            let offset = r.envelope.offset;
            if offset <= cursor.last {
                continue; // already delivered (by a backfill)
            }
            if offset > cursor.last + 1 {
                b.held.push_front(r);
                b.cursor = Some(cursor.clone());
                let read = Read::After {
                    from: cursor,
                    until: offset - 1,
                };
                self.start(room, read, Duration::ZERO);
                return;
            }
            self.hub.deliver(&r.envelope);
            cursor.last = offset;
            cursor.frame = Some(r.envelope.frame.clone());
        }
        if b.overflow_to > cursor.last {
            let until = std::mem::take(&mut b.overflow_to);
            b.cursor = Some(cursor.clone());
            self.start(
                room,
                Read::After {
                    from: cursor,
                    until,
                },
                Duration::ZERO,
            );
            return;
        }
        self.states.insert(room.clone(), State::Live(cursor));
    }

    /// Starts a read of `room`'s stream, after `delay`, off the loop.
    fn start(&mut self, room: &RoomId, read: Read, delay: Duration) {
        let Some(State::Busy(b)) = self.states.get_mut(room) else {
            return;
        };
        self.next_task += 1;
        let task = self.next_task;
        b.task = Some(task);
        let (streams, hub, reads, done) = (
            self.streams.clone(),
            self.hub.clone(),
            self.reads.clone(),
            self.done.clone(),
        );
        let shared = self.shared.clone();
        let room = room.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let result = match reads.acquire().await {
                Ok(_permit) => run(&*streams, &hub, &shared.stats, &room, read).await,
                Err(_) => Err(BackendError::Unavailable("session stopped".into())),
            };
            let _ = done.send(Done { room, task, result });
        });
    }
}

/// The room's history was lost (its epoch changed): offsets restarted, so
/// local clients' positions mean nothing; they must reconnect.
fn history_reset(hub: &Hub, room: &RoomId) {
    let n = hub.kill_room(room, KillReason::Resync);
    tracing::warn!(%room, connections = n, "room history was reset; asking its clients to resync");
}

mod read;
#[cfg(test)]
mod tests;

pub use read::Streams;
use read::{Outcome, Read, run};
