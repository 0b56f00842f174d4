//! Users, rooms and memberships in Redis: a hash per user and room, a
//! sorted set of each by creation time (for listings, oldest first), a set
//! of members per room.

use async_trait::async_trait;
use redis::AsyncCommands;
use roomcast_core::BackendError;
use roomcast_core::store::{AdmitPolicy, Admitted, Store};
use roomcast_protocol::rest::{Room, User};
use roomcast_protocol::{RoomId, Timestamp, UserId};

use crate::client::{Redis, unavailable};
use crate::scripts::{ADMIT, ENSURE_ENTITY};

#[derive(Debug, Clone)]
pub struct RedisStore {
    redis: Redis,
}

impl RedisStore {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// Gets or creates the entity at `key` (listed in `index`) atomically;
    /// its name and creation time.
    async fn ensure(
        &self,
        key: String,
        index: String,
        id: &str,
        name: &str,
        created: Timestamp,
    ) -> Result<(String, Timestamp), BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let (name, created): (String, i64) = ENSURE_ENTITY
                    .key(key)
                    .key(index)
                    .arg(id)
                    .arg(name)
                    .arg(created.as_micros())
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok((name, Timestamp::from_micros(created)))
            })
            .await
    }

    async fn fetch(&self, key: String) -> Result<Option<(String, Timestamp)>, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let (name, created): (Option<String>, Option<i64>) = redis::cmd("HMGET")
                    .arg(key)
                    .arg("name")
                    .arg("created_at")
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(name
                    .zip(created)
                    .map(|(n, c)| (n, Timestamp::from_micros(c))))
            })
            .await
    }

    /// Ids in an index, oldest first, with their names and times.
    async fn list(
        &self,
        index: String,
        key_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, String, Timestamp)>, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let ids: Vec<String> = c.zrange(index, 0, -1).await.map_err(unavailable)?;
                let mut pipe = redis::pipe();
                let mut listed = Vec::new();
                for id in ids {
                    if let Some(key) = key_of(&id) {
                        pipe.cmd("HMGET").arg(key).arg("name").arg("created_at");
                        listed.push(id);
                    }
                }
                if listed.is_empty() {
                    return Ok(Vec::new());
                }
                let rows: Vec<(Option<String>, Option<i64>)> =
                    pipe.query_async(&mut c).await.map_err(unavailable)?;
                Ok(listed
                    .into_iter()
                    .zip(rows)
                    .filter_map(|(id, (n, t))| Some((id, n?, Timestamp::from_micros(t?))))
                    .collect())
            })
            .await
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn admit(
        &self,
        room: &RoomId,
        user: &UserId,
        policy: &AdmitPolicy,
    ) -> Result<Admitted, BackendError> {
        let k = &self.redis.keys;
        let now = Timestamp::now().as_micros();
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let reply: redis::Value = ADMIT
                    .key(k.room(room))
                    .key(k.rooms())
                    .key(k.user(user))
                    .key(k.users())
                    .key(k.members(room))
                    .arg(room.as_str())
                    .arg(if policy.create_room { "1" } else { "0" })
                    .arg(user.as_str())
                    .arg(if policy.create_user_as.is_some() {
                        "1"
                    } else {
                        "0"
                    })
                    .arg(policy.create_user_as.as_deref().unwrap_or(""))
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                let (code, rest): (i64, Vec<redis::Value>) = match reply {
                    redis::Value::Array(mut items) if !items.is_empty() => {
                        let code = redis::from_redis_value(items.remove(0)).map_err(unavailable)?;
                        (code, items)
                    }
                    other => return Err(BackendError::Corrupt(format!("admit: {other:?}"))),
                };
                match code {
                    0 => Ok(Admitted::NoRoom),
                    1 => Ok(Admitted::NoUser),
                    _ => {
                        let (username, created): (String, i64) =
                            redis::from_redis_value(redis::Value::Array(rest))
                                .map_err(unavailable)?;
                        Ok(Admitted::Member(User {
                            id: user.clone(),
                            username,
                            created_at: Timestamp::from_micros(created),
                        }))
                    }
                }
            })
            .await
    }

    async fn create_user(&self, username: &str) -> Result<User, BackendError> {
        self.ensure_user(&UserId::random(), username).await
    }

    async fn ensure_user(&self, id: &UserId, username: &str) -> Result<User, BackendError> {
        let k = &self.redis.keys;
        let (username, created_at) = self
            .ensure(
                k.user(id),
                k.users(),
                id.as_str(),
                username,
                Timestamp::now(),
            )
            .await?;
        Ok(User {
            id: id.clone(),
            username,
            created_at,
        })
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, BackendError> {
        Ok(self
            .fetch(self.redis.keys.user(id))
            .await?
            .map(|(username, created_at)| User {
                id: id.clone(),
                username,
                created_at,
            }))
    }

    async fn list_users(&self) -> Result<Vec<User>, BackendError> {
        let keys = self.redis.keys.clone();
        let rows = self
            .list(keys.users(), |id| {
                UserId::parse(id).ok().map(|u| keys.user(&u))
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, username, created_at)| {
                Some(User {
                    id: UserId::parse(&id).ok()?,
                    username,
                    created_at,
                })
            })
            .collect())
    }

    async fn create_room(&self, name: &str) -> Result<Room, BackendError> {
        let id = RoomId::random();
        let k = &self.redis.keys;
        let (name, created_at) = self
            .ensure(k.room(&id), k.rooms(), id.as_str(), name, Timestamp::now())
            .await?;
        Ok(Room {
            id,
            name,
            created_at,
        })
    }

    async fn ensure_room(&self, id: &RoomId) -> Result<Room, BackendError> {
        let k = &self.redis.keys;
        let (name, created_at) = self
            .ensure(
                k.room(id),
                k.rooms(),
                id.as_str(),
                id.as_str(),
                Timestamp::now(),
            )
            .await?;
        Ok(Room {
            id: id.clone(),
            name,
            created_at,
        })
    }

    async fn get_room(&self, id: &RoomId) -> Result<Option<Room>, BackendError> {
        Ok(self
            .fetch(self.redis.keys.room(id))
            .await?
            .map(|(name, created_at)| Room {
                id: id.clone(),
                name,
                created_at,
            }))
    }

    async fn list_rooms(&self) -> Result<Vec<Room>, BackendError> {
        let keys = self.redis.keys.clone();
        let rows = self
            .list(keys.rooms(), |id| {
                RoomId::parse(id).ok().map(|r| keys.room(&r))
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, created_at)| {
                Some(Room {
                    id: RoomId::parse(&id).ok()?,
                    name,
                    created_at,
                })
            })
            .collect())
    }

    async fn add_member(&self, room: &RoomId, user: &UserId) -> Result<(), BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                c.sadd::<_, _, ()>(self.redis.keys.members(room), user.as_str())
                    .await
                    .map_err(unavailable)
            })
            .await
    }

    async fn is_member(&self, room: &RoomId, user: &UserId) -> Result<bool, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                c.sismember(self.redis.keys.members(room), user.as_str())
                    .await
                    .map_err(unavailable)
            })
            .await
    }
}
