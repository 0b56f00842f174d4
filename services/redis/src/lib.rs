//! roomcast on Redis: the store, history, broker and presence traits of
//! `roomcast-core` implemented on one Redis primary (named by a URL, or
//! found and followed through Sentinel), so any number of edge nodes behave
//! as one chat server.
//!
//! - [`client`]: the command connections (lanes) with per-operation deadlines.
//! - [`target`]: where the primary is (a URL, or Sentinel), across failovers.
//! - [`keys`]: every key and channel name.
//! - [`scripts`]: the Lua scripts behind each atomic step.
//! - [`store`], [`history`], [`presence`]: the trait implementations.
//! - [`broker`] and [`pubsub`]: publishing, and the node's one pub/sub
//!   connection with resubscribe, gap backfill and the round-trip health check.
//! - [`liveness`]: node leases and the sweeper for dead nodes' presence.
//! - [`envelope`]: the wire format between nodes.
//! - [`events`]: the webhook events queue (a stream with a consumer group).
//! - [`replicas`]: acknowledging a publish once replicas have it (group commit).

pub mod broker;
pub mod client;
pub mod envelope;
pub mod events;
pub mod history;
pub mod keys;
pub mod liveness;
pub mod presence;
pub mod pubsub;
pub mod replicas;
pub mod scripts;
pub mod store;
pub mod target;

use std::sync::Arc;

use roomcast_core::hub::Hub;
use roomcast_core::{Backend, BackendError, BackendStats};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::Redis;
pub use liveness::Timing;

/// What a node needs to run on Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub target: target::TargetSpec,
    pub key_prefix: String,
    pub node_id: String,
    pub history: roomcast_core::history::HistoryOptions,
    pub pool_size: usize,
    pub timing: Timing,
    /// Hold a presence lease (every edge does).
    pub lease: bool,
    /// Also run the dead-node sweeper in this process.
    pub sweeper: bool,
    /// The webhook events this process's scripts record.
    pub events: roomcast_core::events::Recording,
    /// How the sweeper announces leaves in big rooms.
    pub summary: roomcast_core::presence::Summary,
    /// Acknowledge a publish only once this many replicas have it.
    pub ack: Option<client::AckReplicas>,
}

/// The background tasks of a Redis backend.
#[derive(Debug)]
pub struct RedisTasks {
    pub tracker: TaskTracker,
}

impl RedisTasks {
    /// Waits for the tasks to finish after shutdown was signalled.
    pub async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Builds the backend and starts its tasks (pub/sub session, lease,
/// optional sweeper). Does not wait for Redis: a node whose Redis is down
/// starts and reports not ready until it is up.
pub fn start(
    opts: &RedisOptions,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> Result<(Backend, RedisTasks), BackendError> {
    let target = Arc::new(target::Target::new(opts.target.clone())?);
    let redis = Redis::on(target.clone(), &opts.key_prefix, opts.pool_size)
        .with_recording(opts.events)
        .with_summary(opts.summary)
        .with_ack(opts.ack);
    let stats = Arc::new(BackendStats::default());
    let shared = Arc::new(broker::Shared {
        stats: stats.clone(),
        subscribed: Default::default(),
    });
    let (tx, rx) = mpsc::channel(broker::COMMAND_QUEUE);
    let history = history::RedisHistory::new(redis.clone(), opts.history.clone());
    let presence = presence::RedisPresence::with_stats(redis.clone(), stats.clone());
    let registered = presence.registered();
    let backend = Backend {
        store: Arc::new(store::RedisStore::new(redis.clone())),
        history: Arc::new(history.clone()),
        broker: Arc::new(broker::RedisBroker::new(
            redis.clone(),
            &opts.node_id,
            opts.history.clone(),
            tx,
            shared.clone(),
        )),
        presence: Arc::new(presence),
        events: opts.events.is_on().then(|| {
            Arc::new(events::RedisEvents::new(redis.clone()))
                as Arc<dyn roomcast_core::events::EventQueue>
        }),
        stats: stats.clone(),
    };
    let tracker = TaskTracker::new();
    tracker.spawn(target::watch(target, stats.clone(), shutdown.clone()));
    let session = pubsub::PubSubSession::new(
        redis.clone(),
        Arc::new(history),
        hub.clone(),
        &opts.node_id,
        rx,
        shared,
        shutdown.clone(),
    );
    tracker.spawn(session.run());
    if opts.lease {
        tracker.spawn(liveness::hold_lease(
            redis.clone(),
            opts.node_id.clone(),
            hub,
            registered,
            stats.clone(),
            opts.timing,
            shutdown.clone(),
        ));
    }
    if opts.sweeper {
        tracker.spawn(liveness::run_sweeper(redis, stats, opts.timing, shutdown));
    }
    Ok((backend, RedisTasks { tracker }))
}

/// `PING` on a connection (for readiness checks).
pub async fn redis_ping(c: &mut redis::aio::MultiplexedConnection) -> Result<(), BackendError> {
    redis::cmd("PING")
        .query_async::<String>(c)
        .await
        .map(|_| ())
        .map_err(client::unavailable)
}
