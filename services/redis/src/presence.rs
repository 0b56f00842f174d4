//! Cluster-wide presence in Redis.
//!
//! Per room: a hash `user → username` of who is online, the same users in
//! a sorted set (pages by user id in O(page)), and per user a set of
//! connection keys (`node/conn`). Per node: a set of the `room user conn`
//! entries it holds, so that when the node dies the sweeper knows exactly
//! what to remove. Add and remove are Lua scripts: the "first connection"
//! and "last connection" decisions are atomic, so `user_joined` and
//! `user_left` are announced once for the whole cluster.
//!
//! The node also remembers which of its own connections' entries are
//! written ([`Registered`]): after a lost lease, only connections whose
//! entry was written and is now gone must resync; one whose write is still
//! on its way is registering in Redis's current data and is left alone.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{Script, ScriptInvocation};
use roomcast_core::broker::Broker;
use roomcast_core::envelope::Envelope;
use roomcast_core::hub::ConnId;
use roomcast_core::presence::{Joined, Presence, Summary, diff_of};
use roomcast_core::shard::Sharded;
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::{PresenceUser, RoomId, UserId};

use crate::client::{Redis, unavailable};
use crate::envelope;
use crate::scripts::{PRESENCE_ADD, PRESENCE_JOIN, PRESENCE_PAGE, PRESENCE_REMOVE};

#[derive(Debug, Clone)]
pub struct RedisPresence {
    redis: Redis,
    /// Where a failed removal is flagged for the node to reconcile.
    stats: Option<Arc<BackendStats>>,
    registered: Arc<Registered>,
}

/// This process's connections whose presence entry Redis has confirmed
/// (an add or join that returned) and that have not been removed since.
/// Keyed by room and connection (a multiplexed connection has an entry per
/// room). Sharded by connection id; each lock is held for one set
/// operation, never across an `.await`.
#[derive(Debug)]
pub struct Registered(Sharded<HashSet<(RoomId, ConnId)>>);

impl Default for Registered {
    fn default() -> Self {
        Self(Sharded::new(16))
    }
}

impl Registered {
    fn set(&self, room: &RoomId, conn_key: &str, on: bool) {
        let Some(id) = conn_id_of(conn_key) else {
            return;
        };
        let mut shard = self.0.shard(&id).write();
        if on {
            shard.insert((room.clone(), id));
        } else {
            shard.remove(&(room.clone(), id));
        }
    }

    /// Every (room, connection) entry confirmed so far.
    pub fn snapshot(&self) -> HashSet<(RoomId, ConnId)> {
        self.0
            .all()
            .flat_map(|s| s.read().iter().cloned().collect::<Vec<_>>())
            .collect()
    }
}

impl RedisPresence {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            stats: None,
            registered: Arc::default(),
        }
    }

    /// Flags `stats.presence_dirty` when a removal fails.
    pub fn with_stats(redis: Redis, stats: Arc<BackendStats>) -> Self {
        Self {
            stats: Some(stats),
            ..Self::new(redis)
        }
    }

    /// This node's confirmed entries (for lease recovery).
    pub fn registered(&self) -> Arc<Registered> {
        self.registered.clone()
    }

    /// Runs a presence script that answers 1 or 0: the user's first (or
    /// last) connection in the room, or not.
    async fn decide(&self, invocation: ScriptInvocation<'static>) -> Result<bool, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let n: i64 = invocation.invoke_async(&mut c).await.map_err(unavailable)?;
                Ok(n == 1)
            })
            .await
    }

    /// Removes the connection, and with `announce`, publishes the change
    /// when it was the user's last in the room. A failure flags the node to
    /// reconcile: its entry may outlive the connection.
    async fn remove_script(
        &self,
        room: &RoomId,
        user: &UserId,
        conn: &str,
        announce: Option<(Announce, Summary)>,
    ) -> Result<bool, BackendError> {
        let mut invocation = self.invocation(&PRESENCE_REMOVE, room, user, "", conn);
        if let Some((announce, summary)) = announce {
            announce.args(&mut invocation);
            invocation.arg(summary.above);
        }
        // Whatever the outcome, the entry no longer counts as confirmed.
        self.registered.set(room, conn, false);
        let removed = self.decide(invocation).await;
        if removed.is_err()
            && let Some(stats) = &self.stats
        {
            stats.presence_dirty.store(true, Ordering::Release);
        }
        removed
    }

    /// The KEYS and ARGV every presence script takes (see `scripts`).
    /// Connection keys are `node/conn`; the node part files the entry under
    /// that node for the sweeper.
    fn invocation(
        &self,
        script: &'static Script,
        room: &RoomId,
        user: &UserId,
        username: &str,
        conn: &str,
    ) -> ScriptInvocation<'static> {
        let k = &self.redis.keys;
        let mut invocation = script.prepare_invoke();
        invocation
            .key(k.presence_conns(room, user))
            .key(k.presence(room))
            .key(k.node_conns(node_of(conn)))
            .key(k.presence_rooms())
            .key(k.user_conns(user))
            .key(k.events())
            .key(k.presence_order(room))
            .arg(conn)
            .arg(user.as_str())
            .arg(username)
            .arg(node_entry(room, user, conn))
            .arg(room.as_str())
            .arg(self.redis.events_maxlen(false))
            .arg(k.control_channel());
        invocation
    }

    /// Adds the connection and tells what the newcomer learns; with
    /// `announce`, publishes the change when this is the user's first
    /// connection.
    async fn join_script(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
        announce: Option<Announce>,
    ) -> Result<Joined, BackendError> {
        let mut invocation =
            self.invocation(&PRESENCE_JOIN, room, &user.user_id, &user.username, conn);
        invocation.arg(summary.above).arg(summary.page);
        if let Some(a) = announce {
            a.args(&mut invocation);
        }
        let joined = self
            .redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let (first, count, users): (i64, u64, Vec<(String, String)>) =
                    invocation.invoke_async(&mut c).await.map_err(unavailable)?;
                Ok(Joined {
                    first: first == 1,
                    users: users_of(users),
                    count,
                })
            })
            .await?;
        self.registered.set(room, conn, true);
        Ok(joined)
    }

    /// Removes the connection, publishing `left` (or the diff) when it was
    /// the user's last in the room: what a closing connection does, and
    /// what reconciliation does for one that closed during an outage.
    pub async fn leave_script(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
        left: Bytes,
    ) -> Result<bool, BackendError> {
        let channel = self.redis.keys.channel(room);
        let announce = Announce::new(channel, room, user, false, left, None, node_of(conn));
        self.remove_script(room, &user.user_id, conn, Some((announce, summary)))
            .await
    }
}

/// A presence change's announcement as a script publishes it: the room's
/// channel, the exact frame's envelope, and the one-user diff's envelope
/// in two pieces around the count only the script knows.
struct Announce {
    channel: String,
    exact: Vec<u8>,
    diff_head: Vec<u8>,
    diff_tail: String,
}

impl Announce {
    fn new(
        channel: String,
        room: &RoomId,
        user: &PresenceUser,
        joined: bool,
        exact: Bytes,
        exclude: Option<UserId>,
        node: &str,
    ) -> Self {
        let (before, after) = diff_of(room, user, joined, 0).split_at_count();
        let envelope = |frame: Bytes, exclude| {
            envelope::encode_event(&Envelope::event(room.clone(), frame, exclude, node.into()))
        };
        Self {
            channel,
            exact: envelope(exact, exclude),
            diff_head: envelope(Bytes::from(before), None),
            diff_tail: after,
        }
    }

    fn args(self, invocation: &mut ScriptInvocation<'static>) {
        invocation
            .arg(self.channel)
            .arg(self.exact)
            .arg(self.diff_head)
            .arg(self.diff_tail);
    }
}

/// A connection's entry in its node's set (`Keys::node_conns`), which the
/// sweep script, reconciliation and lease recovery read:
/// `<room> <user> <node>/<conn>`.
pub fn node_entry(room: &RoomId, user: &UserId, conn_key: &str) -> String {
    format!("{room} {user} {conn_key}")
}

/// The node part of a `node/conn` connection key.
fn node_of(conn: &str) -> &str {
    conn.split('/').next().unwrap_or(conn)
}

/// The connection id part of a `node/conn` connection key.
fn conn_id_of(conn: &str) -> Option<ConnId> {
    conn.rsplit_once('/')?.1.parse().ok()
}

/// The users of a presence hash's `HGETALL`, ordered by user id.
fn users_of(all: Vec<(String, String)>) -> Vec<PresenceUser> {
    let mut users: Vec<PresenceUser> = all
        .into_iter()
        .filter_map(|(id, username)| {
            Some(PresenceUser {
                user_id: UserId::parse(&id).ok()?,
                username,
            })
        })
        .collect();
    users.sort();
    users
}

#[async_trait]
impl Presence for RedisPresence {
    async fn add(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
    ) -> Result<bool, BackendError> {
        let invocation = self.invocation(&PRESENCE_ADD, room, &user.user_id, &user.username, conn);
        let first = self.decide(invocation).await?;
        self.registered.set(room, conn, true);
        Ok(first)
    }

    async fn remove(&self, room: &RoomId, user: &UserId, conn: &str) -> Result<bool, BackendError> {
        self.remove_script(room, user, conn, None).await
    }

    async fn page(
        &self,
        room: &RoomId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(Vec<PresenceUser>, u64), BackendError> {
        let k = &self.redis.keys;
        let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let (count, users): (u64, Vec<(String, String)>) = PRESENCE_PAGE
                    .key(k.presence(room))
                    .key(k.presence_order(room))
                    .arg(start)
                    .arg(limit)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok((users_of(users), count))
            })
            .await
    }

    async fn join(
        &self,
        room: &RoomId,
        user: &PresenceUser,
        conn: &str,
        summary: Summary,
    ) -> Result<Joined, BackendError> {
        self.join_script(room, user, conn, summary, None).await
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
        // The envelopes the broker would publish, from the node in `conn`.
        let channel = self.redis.keys.channel(room);
        let exclude = Some(user.user_id.clone());
        let announce = Announce::new(channel, room, user, true, joined, exclude, node_of(conn));
        self.join_script(room, user, conn, summary, Some(announce))
            .await
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
        self.leave_script(room, user, conn, summary, left).await
    }

    async fn list(&self, room: &RoomId) -> Result<Vec<PresenceUser>, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let all: Vec<(String, String)> = redis::cmd("HGETALL")
                    .arg(self.redis.keys.presence(room))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(users_of(all))
            })
            .await
    }

    async fn is_online(&self, user: &UserId) -> Result<bool, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let n: u64 = redis::cmd("SCARD")
                    .arg(self.redis.keys.user_conns(user))
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(n > 0)
            })
            .await
    }

    /// Users online across all rooms (a user in two rooms counts twice).
    async fn online_count(&self) -> Result<u64, BackendError> {
        let k = &self.redis.keys;
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let rooms: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(k.presence_rooms())
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                let mut pipe = redis::pipe();
                for r in rooms.iter().filter_map(|r| RoomId::parse(r).ok()) {
                    pipe.cmd("HLEN").arg(k.presence(&r));
                }
                if pipe.is_empty() {
                    // An empty pipeline is a client error, not zero.
                    return Ok(0);
                }
                let lens: Vec<u64> = pipe.query_async(&mut c).await.map_err(unavailable)?;
                Ok(lens.iter().sum())
            })
            .await
    }
}
