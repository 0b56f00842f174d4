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
#[derive(Debug, Default)]
pub struct MemoryPresence {
    rooms: Mutex<HashMap<RoomId, HashMap<UserId, Online>>>,
}

#[derive(Debug)]
struct Online {
    username: String,
    conns: HashSet<String>,
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn add(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> Result<bool, BackendError> {
        let mut rooms = self.rooms.lock();
        let online = rooms
            .entry(room.clone())
            .or_default()
            .entry(user.user_id.clone())
            .or_insert_with(|| Online {
                username: user.username.clone(),
                conns: HashSet::new(),
            });
        // Re-adding a connection that is already there is no news.
        Ok(online.conns.insert(conn.to_owned()) && online.conns.len() == 1)
    }

    async fn remove(&self, room: &RoomId, user: &UserId, conn: &str) -> Result<bool, BackendError> {
        let mut rooms = self.rooms.lock();
        let Some(users) = rooms.get_mut(room) else {
            return Ok(false);
        };
        let Some(online) = users.get_mut(user) else {
            return Ok(false);
        };
        if !online.conns.remove(conn) || !online.conns.is_empty() {
            return Ok(false);
        }
        users.remove(user);
        if users.is_empty() {
            rooms.remove(room);
        }
        Ok(true)
    }

    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceUser>, BackendError> {
        let rooms = self.rooms.lock();
        let mut users: Vec<PresenceUser> = rooms
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

    async fn online_count(&self) -> Result<u64, BackendError> {
        Ok(self.rooms.lock().values().map(|u| u.len() as u64).sum())
    }
}
