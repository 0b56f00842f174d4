//! The node's one pub/sub session.
//!
//! A single task owns the node's pub/sub connection (not one per client):
//! it subscribes to a room's channel while the hub has members in it,
//! reads envelopes, and hands them to the hub in offset order.
//!
//! Loss is not silent. The session keeps a cursor per room (epoch and last
//! offset delivered, see [`rooms`]). A message whose offset skips ahead
//! means publishes were missed (the subscription was down): the gap is
//! backfilled from the room's stream before the newer message is
//! delivered. After a reconnect, every room is resubscribed and caught up
//! the same way, so clients on the same sockets get everything, once, in
//! order. An epoch change means the room's history was lost: its local
//! clients are told to resync.
//!
//! The loop never waits on one room. Subscriptions are sent in batches
//! (every request queued by then in one SUBSCRIBE, one command in flight
//! at a time, so a subscribe and an unsubscribe of a room keep their
//! order), and every read of a room's stream runs in a task of its own
//! while that room's publishes wait for it. A room whose stream cannot be
//! read is retried alone, then refused (its joining client gets an error
//! and retries) while the session and every other room go on; only a
//! failure of the pub/sub connection itself starts the session over.
//! Subscription requests wait in a bounded queue (`broker::COMMAND_QUEUE`);
//! past it a subscribe is refused at once.
//!
//! The session connects to the primary the target names
//! ([`crate::target`]) and starts over when it moves (a Sentinel failover),
//! catching every room up from the new primary's streams; a room whose
//! stream is found behind what the node delivered lost writes in the
//! failover, and its clients are told to resync.
//!
//! Health is a round trip, not a PING: every second the task publishes to
//! its node's own channel through the command connections, in a script that
//! also writes a key (so a Redis that relays publishes but refuses the
//! node's work, e.g. while loading its dataset, fails it), and must see it
//! come back on this connection within a few seconds. Until it does, `/ready`
//! is 503 and `roomcast_broker_up` is 0; when it stops, the connection is
//! dropped and re-established with backoff.

mod control;
pub mod rooms;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use redis::aio::PubSubSink;
use roomcast_core::hub::Hub;
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::{RoomId, Timestamp};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{Command, Shared};
use crate::client::{Redis, unavailable};
use crate::envelope;
use crate::scripts::ROUND_TRIP;
use rooms::{Done, Rooms, Streams};

/// How often the round trip is tried.
const ROUND_TRIP_EVERY: Duration = Duration::from_secs(1);
/// A round trip not completed in this time means the session is dead.
const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const CHANNELS_PER_COMMAND: usize = 1000;
/// Subscription requests taken off the queue per turn of the loop, so a
/// storm of them cannot starve the delivery of publishes.
const REQUESTS_PER_TURN: usize = 1024;

/// A SUBSCRIBE or UNSUBSCRIBE waiting for its turn on the connection.
#[derive(Debug)]
enum SinkOp {
    Subscribe(Vec<RoomId>),
    Unsubscribe(Vec<RoomId>),
}

type InFlight = FuturesUnordered<BoxFuture<'static, (SinkOp, Result<(), BackendError>)>>;

pub struct PubSubSession<S: Streams> {
    redis: Redis,
    hub: Arc<Hub>,
    node: String,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    rooms: Rooms<S>,
    done: mpsc::UnboundedReceiver<Done>,
    shutdown: CancellationToken,
}

impl<S: Streams> std::fmt::Debug for PubSubSession<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubSession")
            .field("node", &self.node)
            .field("rooms", &self.rooms.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
enum PubSubError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("pub/sub connection closed")]
    Closed,
    #[error("round trip not completed in {0:?}")]
    RoundTrip(Duration),
    #[error("the redis primary moved")]
    PrimaryMoved,
}

impl<S: Streams> PubSubSession<S> {
    pub fn new(
        redis: Redis,
        streams: Arc<S>,
        hub: Arc<Hub>,
        node: &str,
        commands: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        let (rooms, done) = Rooms::new(streams, hub.clone(), shared.clone());
        Self {
            redis,
            hub,
            node: node.to_owned(),
            commands,
            shared,
            rooms,
            done,
            shutdown,
        }
    }

    fn stats(&self) -> &BackendStats {
        &self.shared.stats
    }

    fn set_up(&self, up: bool) {
        let was = self.stats().broker_up.swap(up, Ordering::AcqRel);
        if was != up {
            if up {
                tracing::info!("pub/sub round trip ok: broker up");
            } else {
                tracing::warn!("broker down");
            }
        }
    }

    /// Runs until shutdown, reconnecting with backoff.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = self.serve().await;
            self.set_up(false);
            let why = match &result {
                Err(e) => BackendError::Unavailable(format!("pub/sub reconnecting: {e}")),
                Ok(()) => BackendError::Unavailable("pub/sub session stopped".into()),
            };
            self.rooms.disconnected(&why);
            if self.shutdown.is_cancelled() {
                return;
            }
            match result {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "pub/sub session lost; reconnecting"),
            }
            BackendStats::add(&self.stats().broker_reconnects, 1);
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            let jitter = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 100);
            let wake = tokio::time::sleep(backoff + jitter);
            tokio::pin!(wake);
            // While down, refuse subscriptions at once instead of making
            // connections wait for a session that is not there.
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    _ = self.shutdown.cancelled() => return,
                    cmd = self.commands.recv() => match cmd {
                        Some(Command::Subscribe(_, reply)) => {
                            let _ = reply.send(Err(BackendError::Unavailable("pub/sub reconnecting".into())));
                        }
                        Some(Command::Unsubscribe(_)) => {}
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn serve(&mut self) -> Result<(), PubSubError> {
        let (client, generation) = self.redis.target.client().await?;
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| PubSubError::ConnectTimeout)??;
        let (mut sink, mut stream) = pubsub.split();
        let node_channel = self.redis.keys.node_channel(&self.node);
        let control_channel = self.redis.keys.control_channel();
        sink.subscribe(&node_channel).await?;
        sink.subscribe(&control_channel).await?;
        // Resubscribe every room this node serves; each is caught up (what
        // was published while we were away) once its channel is active.
        let mut queue: VecDeque<SinkOp> = VecDeque::new();
        push(&mut queue, SinkOp::Subscribe(self.rooms.reconnected()));
        let mut in_flight: InFlight = FuturesUnordered::new();
        let channel_prefix = self.redis.keys.channel_prefix();
        let mut tick = tokio::time::interval(ROUND_TRIP_EVERY);
        let mut waiting_since: Option<Instant> = None;
        loop {
            if in_flight.is_empty()
                && let Some(op) = next_op(&mut queue)
            {
                in_flight.push(self.send(&sink, op));
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                Some((op, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    // The pub/sub connection itself failed: start over.
                    result?;
                    if let SinkOp::Subscribe(rooms) = op {
                        let leave = self.rooms.active(&rooms);
                        push(&mut queue, SinkOp::Unsubscribe(leave));
                    }
                }
                Some(done) = self.done.recv() => {
                    let leave = self.rooms.done(done);
                    push(&mut queue, SinkOp::Unsubscribe(leave));
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    // Take what else is queued, to send as one command.
                    let mut cmds = vec![cmd];
                    while cmds.len() < REQUESTS_PER_TURN {
                        match self.commands.try_recv() {
                            Ok(c) => cmds.push(c),
                            Err(_) => break,
                        }
                    }
                    let (mut join, mut leave) = (Vec::new(), Vec::new());
                    for cmd in cmds {
                        match cmd {
                            Command::Subscribe(room, reply) => {
                                if self.rooms.request(&room, reply) {
                                    join.push(room);
                                }
                            }
                            Command::Unsubscribe(room) => {
                                if self.rooms.release(&room) {
                                    leave.push(room);
                                }
                            }
                        }
                    }
                    push(&mut queue, SinkOp::Unsubscribe(leave));
                    push(&mut queue, SinkOp::Subscribe(join));
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { return Err(PubSubError::Closed) };
                    let channel = msg.get_channel_name();
                    if channel == node_channel {
                        waiting_since = None;
                        self.set_up(true);
                    } else if channel == control_channel {
                        control::control(&self.hub, msg.get_payload_bytes());
                    } else if let Some(room) = channel.strip_prefix(&channel_prefix).and_then(|r| RoomId::parse(r).ok()) {
                        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                        match envelope::decode(room.clone(), payload) {
                            Ok(received) => self.rooms.publish(received),
                            Err(e) => tracing::warn!(%room, error = %e, "dropping a payload that is not an envelope"),
                        }
                    }
                }
                _ = tick.tick() => {
                    // A failover: what this connection hears may be a
                    // demoted primary's; start over on the new one.
                    if self.redis.target.generation() != generation {
                        return Err(PubSubError::PrimaryMoved);
                    }
                    if let Some(since) = waiting_since {
                        if since.elapsed() > ROUND_TRIP_DEADLINE {
                            return Err(PubSubError::RoundTrip(ROUND_TRIP_DEADLINE));
                        }
                    } else {
                        waiting_since = Some(Instant::now());
                    }
                    self.send_round_trip(node_channel.clone());
                }
            }
        }
    }

    /// Sends one SUBSCRIBE or UNSUBSCRIBE on a clone of the connection's
    /// sink; the loop goes on meanwhile.
    fn send(
        &self,
        sink: &PubSubSink,
        op: SinkOp,
    ) -> BoxFuture<'static, (SinkOp, Result<(), BackendError>)> {
        let mut sink = sink.clone();
        let keys = self.redis.keys.clone();
        Box::pin(async move {
            let (subscribe, rooms) = match &op {
                SinkOp::Subscribe(r) => (true, r),
                SinkOp::Unsubscribe(r) => (false, r),
            };
            let channels: Vec<String> = rooms.iter().map(|r| keys.channel(r)).collect();
            let sent = async {
                if subscribe {
                    sink.subscribe(channels).await
                } else {
                    sink.unsubscribe(channels).await
                }
            };
            let result = match tokio::time::timeout(CONNECT_TIMEOUT, sent).await {
                Ok(r) => r.map_err(unavailable),
                Err(_) => Err(BackendError::Unavailable("(un)subscribe timed out".into())),
            };
            (op, result)
        })
    }

    /// Publishes to our own channel through the command connections, off
    /// this task so a slow Redis cannot stall deliveries. It goes out with
    /// a write ([`ROUND_TRIP`]): a Redis that accepts publishes but not the
    /// node's work (still loading, out of memory, read-only) is not healthy.
    fn send_round_trip(&self, channel: String) {
        let redis = self.redis.clone();
        let health = redis.keys.node_health(&self.node);
        tokio::spawn(async move {
            let sent = redis
                .timed(async {
                    let mut c = redis.conn().await?;
                    ROUND_TRIP
                        .key(health)
                        .arg(channel)
                        .arg(Timestamp::now().as_micros())
                        .arg(ROUND_TRIP_DEADLINE.as_millis() as u64 * 2)
                        .invoke_async::<()>(&mut c)
                        .await
                        .map_err(unavailable)
                })
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "round-trip publish failed");
            }
        });
    }
}

/// Queues `op`, merged into the last queued one of the same kind (order
/// between a room's subscribe and unsubscribe is kept: they never merge
/// across each other).
fn push(queue: &mut VecDeque<SinkOp>, op: SinkOp) {
    match (queue.back_mut(), op) {
        (_, SinkOp::Subscribe(r) | SinkOp::Unsubscribe(r)) if r.is_empty() => {}
        (Some(SinkOp::Subscribe(q)), SinkOp::Subscribe(r))
        | (Some(SinkOp::Unsubscribe(q)), SinkOp::Unsubscribe(r)) => q.extend(r),
        (_, op) => queue.push_back(op),
    }
}

/// The next command to send: at most [`CHANNELS_PER_COMMAND`] channels, the
/// rest of a larger batch staying first in line.
fn next_op(queue: &mut VecDeque<SinkOp>) -> Option<SinkOp> {
    let mut op = queue.pop_front()?;
    let (SinkOp::Subscribe(rooms) | SinkOp::Unsubscribe(rooms)) = &mut op;
    if rooms.len() > CHANNELS_PER_COMMAND {
        let rest = rooms.split_off(CHANNELS_PER_COMMAND);
        queue.push_front(match op {
            SinkOp::Subscribe(_) => SinkOp::Subscribe(rest),
            SinkOp::Unsubscribe(_) => SinkOp::Unsubscribe(rest),
        });
    }
    Some(op)
}
