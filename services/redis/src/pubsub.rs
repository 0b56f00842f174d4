//! The node's one pub/sub session.
//!
//! A single task owns the node's pub/sub connection (not one per client):
//! it subscribes to a room's channel while the hub has members in it,
//! reads envelopes, and hands them to the hub in offset order.
//!
//! Loss is not silent. The task keeps a cursor per room (epoch and last
//! offset delivered). A message whose offset skips ahead means publishes
//! were missed (the subscription was down): the gap is backfilled from the
//! room's stream before the newer message is delivered. After a reconnect,
//! every room is resubscribed and caught up the same way, so clients on
//! the same sockets get everything, once, in order. An epoch change means
//! the room's history was lost: its local clients are told to resync.
//!
//! One room's trouble stays that room's: a room whose stream cannot be read
//! when it is first subscribed is refused (its joining client gets an error
//! and retries) while the session and every other room go on; a failure of
//! the pub/sub connection itself, or of the catch-up right after a
//! reconnect (Redis as a whole, most likely), starts the session over. Subscription requests wait in a bounded queue
//! (`broker::COMMAND_QUEUE`); past it a subscribe is refused at once.
//!
//! Health is a round trip, not a PING: every second the task publishes to
//! its node's own channel through the command connections, in a script that
//! also writes a key (so a Redis that relays publishes but refuses the
//! node's work, e.g. while loading its dataset, fails it), and must see it
//! come back on this connection within a few seconds. Until it does, `/ready`
//! is 503 and `roomcast_broker_up` is 0; when it stops, the connection is
//! dropped and re-established with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use roomcast_core::envelope::Envelope;
use roomcast_core::history::History;
use roomcast_core::hub::{Control, Hub, KillReason};
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::{RoomId, Timestamp, UserId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{Command, Shared};
use crate::client::{Redis, unavailable};
use crate::envelope;
use crate::history::RedisHistory;
use crate::scripts::ROUND_TRIP;

/// How often the round trip is tried.
const ROUND_TRIP_EVERY: Duration = Duration::from_secs(1);
/// A round trip not completed in this time means the session is dead.
const ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Frames fetched per backfill read.
const BACKFILL_PAGE: usize = 1000;

/// Where the node stands in a room's stream.
#[derive(Debug, Clone)]
struct Cursor {
    epoch: String,
    last: u64,
}

pub struct PubSubSession {
    redis: Redis,
    history: RedisHistory,
    hub: Arc<Hub>,
    node: String,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    cursors: HashMap<RoomId, Cursor>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for PubSubSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubSession")
            .field("node", &self.node)
            .field("rooms", &self.cursors.len())
            .finish()
    }
}

/// Why a subscription could not start.
#[derive(Debug)]
enum SubscribeFailure {
    /// The pub/sub connection failed: the session starts over.
    Session(BackendError),
    /// The room's stream could not be read: that room alone is refused.
    Room(BackendError),
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
}

impl PubSubSession {
    pub fn new(
        redis: Redis,
        history: RedisHistory,
        hub: Arc<Hub>,
        node: &str,
        commands: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            history,
            redis,
            hub,
            node: node.to_owned(),
            commands,
            shared,
            cursors: HashMap::new(),
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
            self.shared.subscribed.write().clear();
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
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.redis.client.get_async_pubsub())
            .await
            .map_err(|_| PubSubError::ConnectTimeout)??;
        let (mut sink, mut stream) = pubsub.split();
        let node_channel = self.redis.keys.node_channel(&self.node);
        let control_channel = self.redis.keys.control_channel();
        sink.subscribe(&node_channel).await?;
        sink.subscribe(&control_channel).await?;
        // Resubscribe every room this node serves, then fill what was
        // published while we were away.
        let rooms = self.hub.local_rooms();
        self.cursors.retain(|r, _| rooms.contains(r));
        if !rooms.is_empty() {
            let channels: Vec<String> = rooms.iter().map(|r| self.redis.keys.channel(r)).collect();
            sink.subscribe(channels).await?;
        }
        // Right after (re)connecting, a failed catch-up is most likely Redis
        // as a whole (still loading its data, say): start over, with
        // backoff, rather than resync the rooms' clients.
        for room in &rooms {
            self.catch_up(room).await?;
            self.shared.subscribed.write().insert(room.clone());
        }
        let channel_prefix = self.redis.keys.channel_prefix();
        let mut tick = tokio::time::interval(ROUND_TRIP_EVERY);
        let mut waiting_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                cmd = self.commands.recv() => match cmd {
                    None => return Ok(()),
                    Some(Command::Subscribe(room, reply)) => {
                        match self.subscribe(&mut sink, &room).await {
                            Ok(()) => {
                                let _ = reply.send(Ok(()));
                            }
                            // The pub/sub connection itself failed: start over.
                            Err(SubscribeFailure::Session(e)) => {
                                let _ = reply.send(Err(e.clone()));
                                return Err(PubSubError::Backend(e));
                            }
                            // Only this room's stream could not be read: this
                            // room's joiner is refused (and retries), nothing
                            // else is touched. The channel is left again, as
                            // nothing would deliver from it.
                            Err(SubscribeFailure::Room(e)) => {
                                tracing::warn!(%room, error = %e, "cannot start this room's stream; refusing its subscription alone");
                                let _ = reply.send(Err(e));
                                if !self.shared.subscribed.read().contains(&room) {
                                    sink.unsubscribe(self.redis.keys.channel(&room)).await?;
                                }
                            }
                        }
                    }
                    Some(Command::Unsubscribe(room)) => {
                        // A connection may have joined since the last one
                        // left: the hub, not the request, decides. The check
                        // and the removal happen under the write lock: a
                        // joining connection, which joins the hub before it
                        // reads `subscribed`, then either kept the room
                        // subscribed or finds it unsubscribed and asks again.
                        let removed = {
                            let mut subscribed = self.shared.subscribed.write();
                            !self.hub.has_members(&room) && subscribed.remove(&room)
                        };
                        if removed {
                            self.cursors.remove(&room);
                            sink.unsubscribe(self.redis.keys.channel(&room)).await?;
                        }
                    }
                },
                msg = stream.next() => {
                    let Some(msg) = msg else { return Err(PubSubError::Closed) };
                    let channel = msg.get_channel_name();
                    if channel == node_channel {
                        waiting_since = None;
                        self.set_up(true);
                    } else if channel == control_channel {
                        control(&self.hub, msg.get_payload_bytes());
                    } else if let Some(room) = channel.strip_prefix(&channel_prefix).and_then(|r| RoomId::parse(r).ok()) {
                        let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                        self.on_publish(room, payload).await?;
                    }
                }
                _ = tick.tick() => {
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

    async fn subscribe(
        &mut self,
        sink: &mut PubSubSink,
        room: &RoomId,
    ) -> Result<(), SubscribeFailure> {
        if self.shared.subscribed.read().contains(room) {
            return Ok(());
        }
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            sink.subscribe(self.redis.keys.channel(room)),
        )
        .await
        .map_err(|_| {
            SubscribeFailure::Session(BackendError::Unavailable("subscribe timed out".into()))
        })?
        .map_err(|e| SubscribeFailure::Session(unavailable(e)))?;
        // The cursor starts where the stream is now: what comes later
        // arrives on the subscription, which is already active.
        self.catch_up(room).await.map_err(SubscribeFailure::Room)?;
        self.shared.subscribed.write().insert(room.clone());
        Ok(())
    }

    /// Sets the room's cursor (first subscription) or delivers what was
    /// stored after it (resubscription).
    async fn catch_up(&mut self, room: &RoomId) -> Result<(), BackendError> {
        match self.cursors.get(room) {
            None => {
                let pos = self.history.position(room).await?;
                self.cursors.insert(
                    room.clone(),
                    Cursor {
                        epoch: pos.epoch,
                        last: pos.offset,
                    },
                );
                Ok(())
            }
            Some(_) => self.backfill(room, u64::MAX).await,
        }
    }

    /// Delivers stored messages after the room's cursor, up to `until`.
    async fn backfill(&mut self, room: &RoomId, until: u64) -> Result<(), BackendError> {
        loop {
            let Some(cursor) = self.cursors.get(room).cloned() else {
                return Ok(());
            };
            if cursor.last >= until {
                return Ok(());
            }
            let (pos, frames) = self
                .history
                .frames_after(room, cursor.last, BACKFILL_PAGE)
                .await?;
            if pos.epoch != cursor.epoch {
                self.history_reset(room, pos.epoch, pos.offset);
                return Ok(());
            }
            let mut last = cursor.last;
            let mut n = 0;
            for (offset, frame) in frames.into_iter().filter(|(o, _)| *o <= until) {
                if offset != last + 1 {
                    tracing::warn!(%room, from = last + 1, to = offset - 1, "messages trimmed from history before this node could deliver them");
                }
                self.hub.deliver(&Envelope {
                    room: room.clone(),
                    frame: Bytes::from(frame),
                    offset,
                    exclude_user: None,
                    origin_node: "backfill".into(),
                    published_at: Timestamp::now(),
                    trace: None,
                });
                last = offset;
                n += 1;
            }
            if n > 0 {
                tracing::info!(%room, n, "backfilled messages missed by the subscription");
                BackendStats::add(&self.stats().history_backfilled, n);
            }
            let done = n == 0 || last >= pos.offset.min(until);
            if let Some(c) = self.cursors.get_mut(room) {
                c.last = last;
            }
            if done {
                return Ok(());
            }
        }
    }

    /// The room's history was lost (its epoch changed): offsets restarted, so
    /// local clients' positions mean nothing; they must reconnect.
    fn history_reset(&mut self, room: &RoomId, epoch: String, last: u64) {
        let n = self.hub.kill_room(room, KillReason::Resync);
        tracing::warn!(%room, connections = n, "room history was reset; asking its clients to resync");
        self.cursors.insert(room.clone(), Cursor { epoch, last });
    }

    async fn on_publish(&mut self, room: RoomId, payload: Bytes) -> Result<(), BackendError> {
        let received = match envelope::decode(room.clone(), payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%room, error = %e, "dropping a payload that is not an envelope");
                return Ok(());
            }
        };
        let env = received.envelope;
        if env.offset == 0 {
            self.hub.deliver(&env);
            return Ok(());
        }
        let Some(cursor) = self.cursors.get(&room).cloned() else {
            // Not (or no longer) subscribed: a publish in flight.
            return Ok(());
        };
        if received.epoch != cursor.epoch {
            self.history_reset(&room, received.epoch, env.offset);
            return Ok(());
        }
        if env.offset <= cursor.last {
            return Ok(()); // already delivered (by a backfill)
        }
        if env.offset > cursor.last + 1 {
            self.backfill(&room, env.offset - 1).await?;
        }
        self.hub.deliver(&env);
        if let Some(c) = self.cursors.get_mut(&room) {
            c.last = env.offset;
        }
        Ok(())
    }
}

/// Carries out a message of the control channel (`Keys::control_channel`)
/// on this node's sockets: a frame to a user, a user's status change
/// (`s <0/1> <user>`, from the presence scripts), a disconnect, a
/// server-side subscribe (`j <user> <room>`) or unsubscribe (`l ...`). Best effort like every publish: a node whose
/// pub/sub is down misses it (and is not ready meanwhile).
fn control(hub: &Hub, payload: &[u8]) {
    let mut parts = payload.splitn(3, |b| *b == b' ');
    let (Some(kind), Some(a), rest) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let user = |id: &[u8]| {
        std::str::from_utf8(id)
            .ok()
            .and_then(|u| UserId::parse(u).ok())
    };
    match (kind, rest) {
        (b"u", Some(frame)) => {
            if let Some(user) = user(a) {
                hub.to_user(&user, &Bytes::copy_from_slice(frame));
            }
        }
        (b"s", Some(id)) => {
            if let Some(user) = user(id) {
                hub.status_changed(&user, a == b"1");
            }
        }
        (b"j" | b"l", Some(room)) => {
            let room = std::str::from_utf8(room)
                .ok()
                .and_then(|r| RoomId::parse(r).ok());
            if let (Some(user), Some(room)) = (user(a), room) {
                let request = if kind == b"j" {
                    Control::Subscribe(room)
                } else {
                    Control::Unsubscribe(room)
                };
                hub.control_user(&user, &request);
            }
        }
        (b"k", Some(id)) => {
            if let Some(user) = user(id) {
                hub.kill_user(&user, roomcast_core::hub::kill_reason(a == b"1"));
            }
        }
        _ => tracing::debug!("unreadable control message"),
    }
}
