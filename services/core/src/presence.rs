//! Who is online in each room, cluster-wide.
//!
//! Presence counts connections, not users: a user with two tabs has two
//! entries. [`Presence::add`] says whether the entry is the user's first in
//! the room anywhere (announce `user_joined`), [`Presence::remove`] whether it
//! was the last (announce `user_left`). The decision is the backend's, made
//! atomically, so two nodes never both announce.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use roomcast_protocol::{PresenceUser, RoomId, UserId};

use crate::BackendError;
use crate::broker::Broker;
use crate::events::{Event, EventName, MemoryEvents};
use crate::hub::Hub;

/// The cluster-wide key of connection `conn` of `node`: `<node>/<conn>`
/// (node ids cannot contain `/`).
pub fn conn_key(node: &str, conn: u64) -> String {
    format!("{node}/{conn}")
}

/// Cluster-wide presence.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records connection `conn` (unique in the cluster, e.g. `node/17`) of
    /// `user` in `room`. True when it is the user's first there.
    async fn add(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> Result<bool, BackendError>;

    /// Forgets connection `conn`. True when it was the user's last there.
    async fn remove(&self, room: &RoomId, user: &UserId, conn: &str) -> Result<bool, BackendError>;

    /// The users online in `room`, ordered by user id.
    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceUser>, BackendError>;

    /// Users online across all rooms (a user in two rooms counts twice).
    async fn online_count(&self) -> Result<u64, BackendError>;

    /// Whether `user` is online in any room, on any node.
    async fn is_online(&self, user: &UserId) -> Result<bool, BackendError>;

    /// [`add`](Self::add) then [`list`](Self::list), as one step where the
    /// backend can: whether this is the user's first connection in the
    /// room, and everyone online (this connection included).
    async fn join(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> Result<(bool, Vec<PresenceUser>), BackendError> {
        let first = self.add(room, user, conn).await?;
        Ok((first, self.list(room).await?))
    }

    /// [`join`](Self::join), and when this is the user's first connection
    /// in the room, `joined` (its `user_joined` frame) goes to everyone else
    /// in the room, as [`Broker::publish_event`] excluding the user would.
    /// A backend whose presence and broker share one store does both in one
    /// step (Redis: one script, so a connect is one round trip shorter).
    async fn join_announced(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        broker: &dyn Broker,
        joined: Bytes,
    ) -> Result<(bool, Vec<PresenceUser>), BackendError> {
        let (first, users) = self.join(room, user, conn).await?;
        if first {
            broker
                .publish_event(room, joined, Some(user.user_id.clone()))
                .await?;
        }
        Ok((first, users))
    }
}

/// Presence of the embedded backend.
///
/// One mutex for all rooms: presence changes once per connect and
/// disconnect, not per message, and no lock is held across an `.await`.
/// Webhook events are queued under the same lock as the change they
/// report, so they come out in the order the changes happened.
#[derive(Debug, Default)]
pub struct MemoryPresence {
    state: Mutex<State>,
    events: Option<std::sync::Arc<MemoryEvents>>,
    /// Told when a user comes online or goes offline (status followers).
    hub: Option<std::sync::Arc<Hub>>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<RoomId, HashMap<UserId, Online>>,
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
    /// and queues its webhook events in `events`, if any.
    pub fn new(hub: std::sync::Arc<Hub>, events: Option<std::sync::Arc<MemoryEvents>>) -> Self {
        Self {
            state: Mutex::default(),
            events,
            hub: Some(hub),
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
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn add(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> Result<bool, BackendError> {
        let mut state = self.state.lock();
        let State { rooms, users } = &mut *state;
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
            return Ok(false);
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
        Ok(first)
    }

    async fn remove(&self, room: &RoomId, user: &UserId, conn: &str) -> Result<bool, BackendError> {
        let mut state = self.state.lock();
        let State { rooms, users } = &mut *state;
        let Some(members) = rooms.get_mut(room) else {
            return Ok(false);
        };
        let Some(online) = members.get_mut(user) else {
            return Ok(false);
        };
        if !online.conns.remove(conn) {
            return Ok(false);
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
        Ok(last)
    }

    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceUser>, BackendError> {
        let state = self.state.lock();
        let mut users: Vec<PresenceUser> = state
            .rooms
            .get(room)
            .into_iter()
            .flat_map(|u| u.iter())
            .map(|(id, o)| PresenceUser {
                user_id: id.clone(),
                username: o.username.clone(),
            })
            .collect();
        users.sort();
        Ok(users)
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
