//! The command side: a few long-lived multiplexed connections ("lanes")
//! drawn from a deadpool, with a deadline on every operation so that an
//! unreachable Redis turns into a quick `unavailable` instead of a hung
//! request.
//!
//! Why lanes instead of a pool checkout per command: deadpool-redis checks
//! every connection it hands out with an `UNWATCH` + `PING` round trip, which
//! doubled the Redis work of every operation (a connect makes four). A
//! multiplexed connection is made to be shared: concurrent commands on it
//! are pipelined into one socket. So each lane keeps its pool object for as
//! long as the connection works, and every command rides a clone of it. A
//! command that finds its connection broken marks the lane; the next
//! command on that lane takes a fresh (checked) connection from the pool,
//! and the broken one goes back to be recycled, which discards it. No
//! command here blocks or uses `WATCH`/`MULTI`, which a shared connection
//! would not allow.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::{Connection, Pool, PoolConfig, Runtime, Timeouts};
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use roomcast_core::BackendError;
use roomcast_core::events::Recording;

use crate::keys::Keys;

/// Lanes per process (at most the pool size). Fewer lanes pipeline more
/// commands per syscall on both ends (measured on a connect storm: one lane
/// ~3% faster than four); two keep one slow reply (a long history page)
/// from holding up every other command. Redis runs one command at a time
/// whatever the number.
const LANES: usize = 2;

/// How long one Redis operation may take before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Maps a driver error to the backend error callers understand.
pub fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Maps the error of a write that was sent: Redis's own refusal (an error
/// reply: read-only replica, loading, out of memory, a script error) means
/// it did nothing; anything else (the connection broke, the reply could not
/// be read) leaves the outcome unknown.
pub fn write_error(e: RedisError) -> BackendError {
    if e.is_connection_refusal() {
        // Never connected: nothing was sent.
        return unavailable(e);
    }
    match e.kind() {
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => unavailable(e),
        // An I/O error on an established connection cannot say whether the
        // request left before the connection broke.
        _ => BackendError::Indeterminate(e.to_string()),
    }
}

/// Shared handle to Redis for commands (not pub/sub).
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    lanes: Arc<Lanes>,
    pub keys: Keys,
    pub client: redis::Client,
    /// Which webhook events this process's scripts record.
    pub recording: Recording,
    /// How the sweeper and reconciliation announce leaves in big rooms
    /// (connections pass their own to each presence call).
    pub summary: roomcast_core::presence::Summary,
}

struct Lanes {
    /// The lock is only held to clone or replace an entry, never across an
    /// `.await`.
    slots: Box<[Mutex<Option<Held>>]>,
    next: AtomicUsize,
}

/// A lane's pool object (so the pool counts it as in use) and the lane.
type Held = (Arc<Connection>, Lane);

/// A clone of a lane's multiplexed connection: what commands run on. It
/// marks its lane broken when the connection fails under it.
#[derive(Clone)]
pub struct Lane {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish()
    }
}

impl Lane {
    fn check<T>(&self, r: &Result<T, RedisError>) {
        if let Err(e) = r
            && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
        {
            self.broken.store(true, Ordering::Relaxed);
        }
    }
}

impl ConnectionLike for Lane {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.conn.req_packed_command(cmd).await;
            self.check(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.check(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl Redis {
    /// Builds the pool. Nothing connects yet: a Redis that is down at start
    /// shows as not ready, and the node recovers when it comes up.
    pub fn new(url: &str, prefix: &str, max_size: usize) -> Result<Redis, BackendError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        // redis-rs gives multiplexed connections a 500 ms response timeout
        // of its own by default. Under load (a command queued behind large
        // history replies) that fired long before our deadline, failed the
        // command as an I/O error and tore its lane down, turning a slow
        // moment into a cascade. Our deadline is the one: `timed` and
        // `timed_write` bound every operation at OP_TIMEOUT.
        let conn_config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(OP_TIMEOUT));
        let manager =
            deadpool_redis::Manager::new_with_config(url, conn_config).map_err(unavailable)?;
        let mut pool = PoolConfig::new(max_size);
        pool.timeouts = Timeouts {
            wait: Some(OP_TIMEOUT),
            create: Some(OP_TIMEOUT),
            recycle: Some(OP_TIMEOUT),
        };
        let pool = Pool::builder(manager)
            .config(pool)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        let lanes = Lanes {
            slots: (0..LANES.min(max_size).max(1))
                .map(|_| Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        };
        Ok(Redis {
            pool,
            lanes: Arc::new(lanes),
            keys: Keys::new(prefix),
            client,
            recording: Recording::OFF,
            summary: Default::default(),
        })
    }

    /// The same Redis, with scripts recording the webhook events `r` names.
    pub fn with_recording(self, r: Recording) -> Redis {
        Redis {
            recording: r,
            ..self
        }
    }

    pub fn with_summary(self, summary: roomcast_core::presence::Summary) -> Redis {
        Redis { summary, ..self }
    }

    /// The events-stream maxlen a script takes: `0` when the events of
    /// this kind (`messages`, or presence) are not recorded.
    pub fn events_maxlen(&self, messages: bool) -> String {
        let r = &self.recording;
        let on = if messages { r.messages } else { r.presence };
        if on {
            r.max_queue.max(1).to_string()
        } else {
            "0".to_owned()
        }
    }

    /// A connection to run commands on: the next lane's, or a fresh one
    /// from the pool when that lane has none or it broke.
    pub async fn conn(&self) -> Result<Lane, BackendError> {
        let slots = &self.lanes.slots;
        let slot = &slots[self.lanes.next.fetch_add(1, Ordering::Relaxed) % slots.len()];
        if let Some((_, lane)) = &*slot.lock()
            && !lane.broken.load(Ordering::Relaxed)
        {
            return Ok(lane.clone());
        }
        let obj = self.pool.get().await.map_err(unavailable)?;
        let lane = Lane {
            conn: (*obj).clone(),
            broken: Arc::default(),
        };
        // Two commands may both have found the lane empty: the last one's
        // connection stays, the other goes back to the pool when its
        // clones are dropped.
        *slot.lock() = Some((Arc::new(obj), lane.clone()));
        Ok(lane)
    }

    /// A connection of its own from the pool, checked with a `PING` on the
    /// way out (for readiness checks, which must see a fresh connection).
    pub async fn checked_conn(&self) -> Result<Connection, BackendError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// `PUBLISH channel payload`, with the operation deadline.
    pub async fn publish(
        &self,
        channel: String,
        payload: impl redis::ToRedisArgs + Send + Sync,
    ) -> Result<(), BackendError> {
        self.timed(async {
            let mut c = self.conn().await?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)
        })
        .await
    }

    /// Runs a write with the operation deadline. Past it the write may still
    /// be carried out (it may sit in Redis's input buffer, or Redis may be
    /// frozen), so a timeout is [`BackendError::Indeterminate`], not
    /// "unavailable".
    pub fn timed_write<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> impl Future<Output = Result<T, BackendError>> {
        deadline(op, || {
            BackendError::Indeterminate(format!("no answer from redis within {OP_TIMEOUT:?}"))
        })
    }

    /// Runs `op` with the operation deadline. A read (or a write whose
    /// double effect does no harm) that times out counts as not done.
    pub fn timed<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> impl Future<Output = Result<T, BackendError>> {
        deadline(op, || {
            BackendError::Unavailable("redis operation timed out".into())
        })
    }
}

/// `op` within [`OP_TIMEOUT`], else the error `late` makes. A combinator,
/// not an `async fn`: no state beyond the timeout's own (these wrap every
/// Redis call, and their futures are large already).
fn deadline<T>(
    op: impl Future<Output = Result<T, BackendError>>,
    late: impl FnOnce() -> BackendError,
) -> impl Future<Output = Result<T, BackendError>> {
    use futures_util::FutureExt;
    tokio::time::timeout(OP_TIMEOUT, op).map(|r| r.unwrap_or_else(|_| Err(late())))
}
