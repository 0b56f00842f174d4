//! The command side: a few long-lived multiplexed connections ("lanes")
//! to the current primary ([`crate::target`]), with a deadline on every
//! operation so that an unreachable Redis turns into a quick `unavailable`
//! instead of a hung request.
//!
//! Why lanes instead of a pool checkout per command: a pool (deadpool-redis
//! was used first) checks every connection it hands out with an `UNWATCH` +
//! `PING` round trip, which doubled the Redis work of every operation. A
//! multiplexed connection is made to be shared: concurrent commands on it
//! are pipelined into one socket. So each lane keeps its connection for as
//! long as it works, and every command rides a clone of it. A command that
//! finds its connection broken marks the lane, and so does one refused as
//! `READONLY` (the primary was demoted: the target is asked to look again);
//! a lane opened under an older primary generation counts as broken too.
//! The next command on a broken lane opens a fresh connection, one at a
//! time per lane (a storm of commands on a dead lane opens one, not
//! thousands). No command here blocks or uses `WATCH`/`MULTI`, which a
//! shared connection would not allow.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use roomcast_core::BackendError;
use roomcast_core::events::Recording;

use crate::keys::Keys;
use crate::target::Target;

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
    lanes: Arc<Lanes>,
    /// The replica barrier's connection (see [`crate::replicas`]): `WAIT`
    /// blocks its connection, so nothing else may queue behind it.
    durable: Arc<Lanes>,
    /// Acknowledge a publish only once this many replicas have it.
    pub ack: Option<AckReplicas>,
    pub keys: Keys,
    /// Where the primary is; the pub/sub session connects through it too.
    pub target: Arc<Target>,
    /// Which webhook events this process's scripts record.
    pub recording: Recording,
    /// How the sweeper and reconciliation announce leaves in big rooms
    /// (connections pass their own to each presence call).
    pub summary: roomcast_core::presence::Summary,
}

/// `redis.ack_replicas`: a publish is acknowledged once `replicas` have it,
/// waiting at most `timeout` (see [`crate::replicas`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

struct Lanes {
    /// The lock is only held to clone or replace an entry, never across an
    /// `.await`.
    slots: Box<[Mutex<Option<Lane>>]>,
    /// One connect at a time per lane (held across the connect: an async
    /// lock).
    connecting: Box<[tokio::sync::Mutex<()>]>,
    next: AtomicUsize,
}

/// A clone of a lane's multiplexed connection: what commands run on. It
/// marks its lane broken when the connection fails under it.
#[derive(Clone)]
pub struct Lane {
    conn: MultiplexedConnection,
    broken: Arc<AtomicBool>,
    /// The primary generation it was opened under.
    generation: u64,
    target: Arc<Target>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .field("generation", &self.generation)
            .finish()
    }
}

impl Lane {
    fn check<T>(&self, r: &Result<T, RedisError>) {
        let Err(e) = r else { return };
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.broken.store(true, Ordering::Relaxed);
        } else if is_read_only(e) {
            // A demoted primary still answering: never write to it again.
            self.broken.store(true, Ordering::Relaxed);
            self.target.suspect();
        }
    }

    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && self.generation == self.target.generation()
    }
}

/// A write refused because the server is a replica (also from inside a
/// script, where the error may come wrapped).
fn is_read_only(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    ) || e.to_string().contains("READONLY")
}

impl Lanes {
    fn new(n: usize) -> Lanes {
        Lanes {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            connecting: (0..n).map(|_| tokio::sync::Mutex::new(())).collect(),
            next: AtomicUsize::new(0),
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
    /// Commands on the Redis at `url`. Nothing connects yet: a Redis that
    /// is down at start shows as not ready, and the node recovers when it
    /// comes up.
    pub fn new(url: &str, prefix: &str, max_lanes: usize) -> Result<Redis, BackendError> {
        let target = Target::new(crate::target::TargetSpec::Url(url.to_owned()))?;
        Ok(Self::on(Arc::new(target), prefix, max_lanes))
    }

    /// Commands on whatever primary `target` names.
    pub fn on(target: Arc<Target>, prefix: &str, max_lanes: usize) -> Redis {
        Redis {
            lanes: Arc::new(Lanes::new(LANES.min(max_lanes).max(1))),
            durable: Arc::new(Lanes::new(1)),
            ack: None,
            keys: Keys::new(prefix),
            target,
            recording: Recording::OFF,
            summary: Default::default(),
        }
    }

    /// The same Redis, acknowledging publishes once `ack` replicas have them.
    pub fn with_ack(self, ack: Option<AckReplicas>) -> Redis {
        Redis { ack, ..self }
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
    /// when that lane has none, it broke, or the primary moved.
    pub async fn conn(&self) -> Result<Lane, BackendError> {
        self.lane_of(&self.lanes).await
    }

    /// The replica barrier's connection.
    pub async fn durable_conn(&self) -> Result<Lane, BackendError> {
        self.lane_of(&self.durable).await
    }

    async fn lane_of(&self, lanes: &Lanes) -> Result<Lane, BackendError> {
        let i = lanes.next.fetch_add(1, Ordering::Relaxed) % lanes.slots.len();
        if let Some(lane) = &*lanes.slots[i].lock()
            && lane.usable()
        {
            return Ok(lane.clone());
        }
        let _one_at_a_time = lanes.connecting[i].lock().await;
        // Someone else may have connected while we waited.
        if let Some(lane) = &*lanes.slots[i].lock()
            && lane.usable()
        {
            return Ok(lane.clone());
        }
        let (conn, generation) = self.connect().await?;
        let lane = Lane {
            conn,
            broken: Arc::default(),
            generation,
            target: self.target.clone(),
        };
        *lanes.slots[i].lock() = Some(lane.clone());
        Ok(lane)
    }

    /// A fresh connection to the current primary, and the generation it
    /// belongs to (also for readiness checks, which must not reuse a lane).
    pub async fn connect(&self) -> Result<(MultiplexedConnection, u64), BackendError> {
        // redis-rs gives multiplexed connections a 500 ms response timeout
        // of its own by default. Under load (a command queued behind large
        // history replies) that fired long before our deadline, failed the
        // command as an I/O error and tore its lane down, turning a slow
        // moment into a cascade. Our deadline is the one: `timed` and
        // `timed_write` bound every operation at OP_TIMEOUT.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(OP_TIMEOUT));
        let connect = async {
            let (client, generation) = self.target.client().await?;
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(unavailable)?;
            Ok((conn, generation))
        };
        tokio::time::timeout(OP_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(unavailable("connecting to redis timed out")))
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
        write_deadline(OP_TIMEOUT, op)
    }

    /// [`Redis::timed_write`] for a write that also waits for replicas:
    /// the deadline grows by the replicas' timeout.
    pub fn timed_durable_write<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> impl Future<Output = Result<T, BackendError>> {
        write_deadline(
            OP_TIMEOUT + self.ack.map_or(Duration::ZERO, |a| a.timeout),
            op,
        )
    }

    /// Runs `op` with the operation deadline. A read (or a write whose
    /// double effect does no harm) that times out counts as not done.
    pub fn timed<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> impl Future<Output = Result<T, BackendError>> {
        deadline(OP_TIMEOUT, op, || {
            BackendError::Unavailable("redis operation timed out".into())
        })
    }
}

/// A write's deadline: past `limit` its outcome is unknown.
fn write_deadline<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, BackendError>>,
) -> impl Future<Output = Result<T, BackendError>> {
    deadline(limit, op, move || {
        BackendError::Indeterminate(format!("no answer from redis within {limit:?}"))
    })
}

/// `op` within `limit`, else the error `late` makes. A combinator, not an
/// `async fn`: no state beyond the timeout's own (these wrap every Redis
/// call, and their futures are large already).
fn deadline<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, BackendError>>,
    late: impl FnOnce() -> BackendError,
) -> impl Future<Output = Result<T, BackendError>> {
    use futures_util::FutureExt;
    tokio::time::timeout(limit, op).map(|r| r.unwrap_or_else(|_| Err(late())))
}
