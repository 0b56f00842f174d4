//! Users, rooms and room membership: the durable directory every node shares.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;
use roomcast_protocol::rest::{Room, User};
use roomcast_protocol::{RoomId, Timestamp, UserId};

use crate::BackendError;

/// What a connect may create when its room or user does not exist yet.
#[derive(Debug, Clone, Default)]
pub struct AdmitPolicy {
    pub create_room: bool,
    /// Create a missing user with this username.
    pub create_user_as: Option<String>,
}

/// The outcome of [`Store::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// No such room, and the policy did not allow creating it.
    NoRoom,
    /// No such user, and the policy did not allow creating it.
    NoUser,
    /// The user (as stored) is now a member of the room.
    Member(User),
}

/// The directory of users and rooms.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Everything a connect needs from the directory, as one step: the room
    /// and the user exist (or are created as `policy` allows) and the user
    /// is recorded as a member. Backends where each call is a round trip
    /// override it with a single one.
    async fn admit(
        &self,
        room: &RoomId,
        user: &UserId,
        policy: &AdmitPolicy,
    ) -> Result<Admitted, BackendError> {
        if self.get_room(room).await?.is_none() {
            if !policy.create_room {
                return Ok(Admitted::NoRoom);
            }
            self.ensure_room(room).await?;
        }
        let stored = match (self.get_user(user).await?, &policy.create_user_as) {
            (Some(u), _) => u,
            (None, Some(name)) => self.ensure_user(user, name).await?,
            (None, None) => return Ok(Admitted::NoUser),
        };
        self.add_member(room, user).await?;
        Ok(Admitted::Member(stored))
    }

    /// Creates a user with a fresh UUID.
    async fn create_user(&self, username: &str) -> Result<User, BackendError>;
    /// The user with this id, created with `username` if there is none
    /// (auto-create, and users named by a valid token).
    async fn ensure_user(&self, id: &UserId, username: &str) -> Result<User, BackendError>;
    async fn get_user(&self, id: &UserId) -> Result<Option<User>, BackendError>;
    /// All users, oldest first.
    async fn list_users(&self) -> Result<Vec<User>, BackendError>;

    /// Creates a room with a fresh UUID.
    async fn create_room(&self, name: &str) -> Result<Room, BackendError>;
    /// The room with this id, created (named after its id) if there is none.
    async fn ensure_room(&self, id: &RoomId) -> Result<Room, BackendError>;
    async fn get_room(&self, id: &RoomId) -> Result<Option<Room>, BackendError>;
    /// All rooms, oldest first.
    async fn list_rooms(&self) -> Result<Vec<Room>, BackendError>;

    /// Records that `user` joined `room` (REST join, or a connect).
    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), BackendError>;
    /// Whether `user` ever joined `room`.
    async fn is_member(&self, room: &RoomId, user: &UserId) -> Result<bool, BackendError>;
}

/// The in-memory directory of the embedded backend, holding at most
/// `max_users` users and `max_rooms` rooms (past either, creating one is
/// [`BackendError::Full`]).
///
/// One mutex: directory calls are rare next to message traffic, and no
/// lock is held across an `.await` (every method is synchronous inside).
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Directory>,
    max_users: usize,
    max_rooms: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(usize::MAX, usize::MAX)
    }
}

impl MemoryStore {
    pub fn new(max_users: usize, max_rooms: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_users,
            max_rooms,
        }
    }
}

fn full(what: &str, setting: &str) -> BackendError {
    BackendError::Full(format!("{what} limit reached ({setting})"))
}

#[derive(Debug, Default)]
struct Directory {
    users: HashMap<UserId, User>,
    rooms: HashMap<RoomId, Room>,
    members: HashMap<RoomId, HashSet<UserId>>,
}

fn oldest_first<T: Clone, K>(items: impl Iterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<T>
where
    K: Ord,
{
    let mut v: Vec<T> = items.collect();
    v.sort_by_key(|t| key(t));
    v
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_user(&self, username: &str) -> Result<User, BackendError> {
        let user = User {
            id: UserId::random(),
            username: username.to_owned(),
            created_at: Timestamp::now(),
        };
        let mut d = self.inner.lock();
        if d.users.len() >= self.max_users {
            return Err(full("user", "limits.max_users"));
        }
        d.users.insert(user.id.clone(), user.clone());
        Ok(user)
    }

    async fn ensure_user(&self, id: &UserId, username: &str) -> Result<User, BackendError> {
        let mut d = self.inner.lock();
        if d.users.len() >= self.max_users && !d.users.contains_key(id) {
            return Err(full("user", "limits.max_users"));
        }
        Ok(d.users
            .entry(id.clone())
            .or_insert_with(|| User {
                id: id.clone(),
                username: username.to_owned(),
                created_at: Timestamp::now(),
            })
            .clone())
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, BackendError> {
        Ok(self.inner.lock().users.get(id).cloned())
    }

    async fn list_users(&self) -> Result<Vec<User>, BackendError> {
        let d = self.inner.lock();
        Ok(oldest_first(d.users.values().cloned(), |u| {
            (u.created_at, u.id.clone())
        }))
    }

    async fn create_room(&self, name: &str) -> Result<Room, BackendError> {
        let room = Room {
            id: RoomId::random(),
            name: name.to_owned(),
            created_at: Timestamp::now(),
        };
        let mut d = self.inner.lock();
        if d.rooms.len() >= self.max_rooms {
            return Err(full("room", "limits.max_rooms"));
        }
        d.rooms.insert(room.id.clone(), room.clone());
        Ok(room)
    }

    async fn ensure_room(&self, id: &RoomId) -> Result<Room, BackendError> {
        let mut d = self.inner.lock();
        if d.rooms.len() >= self.max_rooms && !d.rooms.contains_key(id) {
            return Err(full("room", "limits.max_rooms"));
        }
        Ok(d.rooms
            .entry(id.clone())
            .or_insert_with(|| Room {
                id: id.clone(),
                name: id.to_string(),
                created_at: Timestamp::now(),
            })
            .clone())
    }

    async fn get_room(&self, id: &RoomId) -> Result<Option<Room>, BackendError> {
        Ok(self.inner.lock().rooms.get(id).cloned())
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, BackendError> {
        let d = self.inner.lock();
        Ok(oldest_first(d.rooms.values().cloned(), |r| {
            (r.created_at, r.id.clone())
        }))
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), BackendError> {
        self.inner
            .lock()
            .members
            .entry(room.clone())
            .or_default()
            .insert(user.clone());
        Ok(())
    }

    async fn is_member(&self, room: &RoomId, user: &UserId) -> Result<bool, BackendError> {
        Ok(self
            .inner
            .lock()
            .members
            .get(room)
            .is_some_and(|m| m.contains(user)))
    }
}
