//! Presence of the embedded backend: one process's memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use roomcast_protocol::{PresenceUser, RoomId, ServerFrame, UserId};

use super::{Joined, Presence, Summary, diff_of, frame_bytes};
use crate::BackendError;
use crate::broker::Broker;
use crate::envelope::Envelope;
use crate::events::{Event, EventName, MemoryEvents};
use crate::hub::Hub;

/// Presence of the embedded backend.
///
/// One mutex for all rooms: presence changes once per connect and
/// disconnect, not per message, and no lock is held across an `.await`.
/// Webhook events, and the announcements of joins and leaves (delivered
/// straight into the hub, a synchronous push), happen under the same lock
/// as the change they report, so they come out in the order the changes
/// happened. Each room's members are kept ordered by user id, so a page
/// costs O(page).
#[derive(Debug, Default)]
pub struct MemoryPresence {
    state: Mutex<State>,
    events: Option<Arc<MemoryEvents>>,
    /// Told when a user comes online or goes offline (status followers),
    /// and where joins and leaves are announced.
    hub: Option<Arc<Hub>>,
    node: Arc<str>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<RoomId, BTreeMap<UserId, Online>>,
    /// Connections of each user in any room (for user online/offline).
    users: HashMap<UserId, usize>,
}

#[derive(Debug)]
struct Online {
    username: String,
    conns: HashSet<String>,
}

impl MemoryPresence {
    /// Presence that tells `hub` when a user comes online or goes offline,
    /// announces joins and leaves into it as node `node`, and queues its
    /// webhook events in `events`, if any.
    pub fn new(hub: Arc<Hub>, node: &str, events: Option<Arc<MemoryEvents>>) -> Self {
        Self {
            state: Mutex::default(),
            events,
            hub: Some(hub),
            node: node.into(),
        }
    }

    /// Delivers an announcement to the room's members (but `exclude`).
    fn announce(&self, room: &RoomId, frame: Bytes, exclude: Option<&UserId>) {
        if let Some(hub) = &self.hub {
            hub.deliver(&Envelope::event(
                room.clone(),
                frame,
                exclude.cloned(),
                self.node.clone(),
            ));
        }
    }

    /// The announcement of `user`'s join (`exact`: its `user_joined` frame,
    /// to the others) or leave (`user_left`, to everyone), or the one-user
    /// diff in a room `summary` summarises; `count` members are left.
    fn announce_change(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        joined: bool,
        count: u64,
        summary: Summary,
        exact: Bytes,
    ) {
        if summary.as_diff(joined, count) {
            let diff = diff_of(room, user, joined, count);
            self.announce(room, frame_bytes(ServerFrame::PresenceDiff(diff)), None);
        } else {
            let exclude = joined.then_some(&user.user_id);
            self.announce(room, exact, exclude);
        }
    }

    fn count(state: &State, room: &RoomId) -> u64 {
        state.rooms.get(room).map_or(0, |m| m.len() as u64)
    }

    /// The first `limit` members after `after` (by user id).
    fn page_of(
        state: &State,
        room: &RoomId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Vec<PresenceUser> {
        let Some(members) = state.rooms.get(room) else {
            return Vec::new();
        };
        let range = match after {
            Some(a) => members
                .range::<UserId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => members.range::<UserId, _>(..),
        };
        range
            .take(limit)
            .map(|(id, o)| PresenceUser {
                user_id: id.clone(),
                username: o.username.clone(),
            })
            .collect()
    }

    /// What a newcomer learns: everyone, or the count and the first page.
    fn snapshot(state: &State, room: &RoomId, first: bool, summary: Summary) -> Joined {
        let count = Self::count(state, room);
        let limit = if summary.summarised(count) {
            summary.page
        } else {
            usize::MAX
        };
        Joined {
            first,
            users: Self::page_of(state, room, None, limit),
            count,
        }
    }

    fn status(&self, user: &UserId, online: bool) {
        if let Some(hub) = &self.hub {
            hub.status_changed(user, online);
        }
    }

    fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(q) = &self.events {
            q.push(event());
        }
    }

    /// Adds the connection and takes the newcomer's snapshot under one
    /// lock, announcing a first connection with `joined` (or the diff).
    fn join_with(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
        joined: Option<Bytes>,
    ) -> Joined {
        let mut state = self.state.lock();
        let first = self.add_locked(&mut state, room, user, conn);
        let snapshot = Self::snapshot(&state, room, first, summary);
        if let Some(joined) = joined.filter(|_| first) {
            self.announce_change(room, user, true, snapshot.count, summary, joined);
        }
        snapshot
    }

    fn add_locked(
        &self,
        state: &mut State,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> bool {
        let State { rooms, users } = state;
        let occupied = !rooms.contains_key(room);
        let online = rooms
            .entry(room.clone())
            .or_default()
            .entry(user.user_id.clone())
            .or_insert_with(|| Online {
                username: user.username.clone(),
                conns: HashSet::new(),
            });
        // Re-adding a connection that is already there is no news.
        if !online.conns.insert(conn.to_owned()) {
            return false;
        }
        let first = online.conns.len() == 1;
        let anywhere = users.entry(user.user_id.clone()).or_default();
        *anywhere += 1;
        let id = &user.user_id;
        if *anywhere == 1 {
            self.emit(|| Event::user(EventName::UserOnline, id));
            self.status(id, true);
        }
        if occupied {
            self.emit(|| Event::room(EventName::RoomOccupied, room));
        }
        if first {
            self.emit(|| Event::member(EventName::MemberJoined, room, id, &user.username));
        }
        first
    }

    fn remove_locked(&self, state: &mut State, room: &RoomId, user: &UserId, conn: &str) -> bool {
        let State { rooms, users } = state;
        let Some(members) = rooms.get_mut(room) else {
            return false;
        };
        let Some(online) = members.get_mut(user) else {
            return false;
        };
        if !online.conns.remove(conn) {
            return false;
        }
        let last = online.conns.is_empty();
        if last {
            let username = members.remove(user).map(|o| o.username).unwrap_or_default();
            self.emit(|| Event::member(EventName::MemberLeft, room, user, &username));
            if members.is_empty() {
                rooms.remove(room);
                self.emit(|| Event::room(EventName::RoomVacated, room));
            }
        }
        if let Some(n) = users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                users.remove(user);
                self.emit(|| Event::user(EventName::UserOffline, user));
                self.status(user, false);
            }
        }
        last
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn add(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> Result<bool, BackendError> {
        Ok(self.add_locked(&mut self.state.lock(), room, user, conn))
    }

    async fn remove(&self, room: &RoomId, user: &UserId, conn: &str) -> Result<bool, BackendError> {
        Ok(self.remove_locked(&mut self.state.lock(), room, user, conn))
    }

    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceUser>, BackendError> {
        Ok(Self::page_of(&self.state.lock(), room, None, usize::MAX))
    }

    async fn page(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(Vec<PresenceUser>, u64), BackendError> {
        let state = self.state.lock();
        Ok((
            Self::page_of(&state, room, after, limit),
            Self::count(&state, room),
        ))
    }

    async fn join(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
    ) -> Result<Joined, BackendError> {
        Ok(self.join_with(room, user, conn, summary, None))
    }

    async fn join_announced(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
        _broker: &dyn Broker,
        joined: Bytes,
    ) -> Result<Joined, BackendError> {
        Ok(self.join_with(room, user, conn, summary, Some(joined)))
    }

    async fn leave_announced(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
        _broker: &dyn Broker,
        left: Bytes,
    ) -> Result<bool, BackendError> {
        let mut state = self.state.lock();
        let last = self.remove_locked(&mut state, room, &user.user_id, conn);
        if last {
            let count = Self::count(&state, room);
            self.announce_change(room, user, false, count, summary, left);
        }
        Ok(last)
    }

    async fn is_online(&self, user: &UserId) -> Result<bool, BackendError> {
        Ok(self.state.lock().users.contains_key(user))
    }

    async fn online_count(&self) -> Result<u64, BackendError> {
        Ok(self
            .state
            .lock()
            .rooms
            .values()
            .map(|u| u.len() as u64)
            .sum())
    }
}
