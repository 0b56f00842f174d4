//! The Redis broker: publishing (through the command pool) and the
//! subscription requests it hands to the node's one pub/sub session.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use roomcast_core::broker::{Broker, MessageDraft, Published, new_message_id};
use roomcast_core::envelope::Envelope;
use roomcast_core::history::{HistoryOptions, age_cutoff};
use roomcast_core::hub::Control;
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::{MessageFrame, RoomId, Timestamp, UserId};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Redis, write_error};
use crate::envelope::{self, ScriptHeader};
use crate::history::epoch_candidate;
use crate::scripts::PUBLISH;

/// A request to the pub/sub session.
#[derive(Debug)]
pub enum Command {
    /// Subscribe (if not yet) and establish the room's cursor; answer when
    /// this node receives the room's publishes.
    Subscribe(RoomId, oneshot::Sender<Result<(), BackendError>>),
    /// Unsubscribe if the hub has no member in the room any more.
    Unsubscribe(RoomId),
}

/// What the broker and the session share.
#[derive(Debug, Default)]
pub struct Shared {
    pub stats: Arc<BackendStats>,
    /// Rooms whose subscription is active, with a cursor.
    pub subscribed: RwLock<HashSet<RoomId>>,
}

#[derive(Debug)]
pub struct RedisBroker {
    redis: Redis,
    /// With `redis.ack_replicas`: where publishes wait for the replicas.
    replicas: Option<crate::replicas::Replicas>,
    node: Arc<str>,
    history: HistoryOptions,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

/// Subscription requests waiting for the pub/sub session at most. Past it a
/// subscribe is refused at once (`unavailable`: the joining client retries)
/// instead of the queue growing without bound in a reconnect storm.
pub const COMMAND_QUEUE: usize = 65_536;

/// How long a connection waits for its room's subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisBroker {
    pub fn new(
        redis: Redis,
        node: &str,
        history: HistoryOptions,
        commands: mpsc::Sender<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        let replicas = redis
            .ack
            .map(|ack| crate::replicas::Replicas::start(redis.clone(), ack));
        Self {
            redis,
            replicas,
            node: node.into(),
            history,
            commands,
            shared,
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish_message(&self, draft: MessageDraft) -> Result<Published, BackendError> {
        let room = draft.room.clone();
        let now = Timestamp::now();
        let trace = draft.trace.clone();
        let msg = draft.into_message(new_message_id(), 0, now);
        let (frame_pre, frame_post) = msg.offset_template();
        let header = ScriptHeader::new(&self.node, now, trace.as_deref());
        let k = &self.redis.keys;
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .key(k.seq(&room))
            .key(k.log(&room))
            .key(k.epoch(&room))
            .key(k.events())
            .key(k.log_bytes(&room));
        if let Some(client_id) = &msg.client_id {
            invocation.key(k.published(&room, &msg.user_id, client_id));
        }
        let keep = self.history.for_room(&room);
        let cutoff = age_cutoff(keep.max_age).map_or(0, |t| t.as_micros().max(1));
        invocation
            .arg(keep.max_len)
            .arg(epoch_candidate())
            .arg(k.channel(&room))
            .arg(frame_pre)
            .arg(frame_post)
            .arg(header.head)
            .arg(header.mid)
            .arg(header.tail)
            .arg(self.history.dedupe_window.as_millis() as u64)
            .arg(&msg.id)
            .arg(now.as_micros())
            .arg(self.redis.events_maxlen(true))
            .arg(room.as_str())
            .arg(keep.max_bytes.unwrap_or(0))
            .arg(cutoff)
            .arg(keep.max_age.map_or(0, |a| a.as_millis() as u64))
            .arg(u8::from(self.redis.ack.is_some()));
        let reply: redis::Value = self
            .redis
            .timed_write(async {
                let mut c = self.redis.conn().await?;
                invocation.invoke_async(&mut c).await.map_err(write_error)
            })
            .await?;
        let Some(replicas) = &self.replicas else {
            return published(msg, reply);
        };
        // Stored on the primary; published and acknowledged only once the
        // replicas have it too. Past their timeout the outcome is unknown
        // (stored, maybe lost in a failover): a retry with the same
        // client_id waits, and publishes, again; until then the room's next
        // message backfills it.
        replicas.wait().await?;
        // A repeat publishes again: nodes drop an offset they delivered, so
        // only one that missed it shows it.
        if let Some(envelope) = envelope_of(&reply) {
            self.redis
                .publish(k.channel(&room), envelope)
                .await
                .map_err(|e| {
                    BackendError::Indeterminate(format!(
                        "stored on the replicas; publishing failed: {e}"
                    ))
                })?;
        }
        published(msg, reply)
    }

    async fn publish_event(
        &self,
        room: &RoomId,
        frame: Bytes,
        exclude_user: Option<UserId>,
    ) -> Result<(), BackendError> {
        let payload = envelope::encode_event(&Envelope::event(
            room.clone(),
            frame,
            exclude_user,
            self.node.clone(),
        ));
        self.redis
            .publish(self.redis.keys.channel(room), payload)
            .await
    }

    async fn send_to_user(&self, user: &UserId, frame: Bytes) -> Result<(), BackendError> {
        let mut payload = format!("u {user} ").into_bytes();
        payload.extend_from_slice(&frame);
        self.redis
            .publish(self.redis.keys.control_channel(), payload)
            .await
    }

    async fn disconnect_user(&self, user: &UserId, reconnect: bool) -> Result<(), BackendError> {
        let payload = format!("k {} {user}", u8::from(reconnect));
        self.redis
            .publish(self.redis.keys.control_channel(), payload)
            .await
    }

    async fn control_user(&self, user: &UserId, request: Control) -> Result<(), BackendError> {
        let payload = match request {
            Control::Subscribe(room) => format!("j {user} {room}"),
            Control::Unsubscribe(room) => format!("l {user} {room}"),
        };
        self.redis
            .publish(self.redis.keys.control_channel(), payload)
            .await
    }

    async fn subscribe(&self, room: &RoomId) -> Result<(), BackendError> {
        if self.shared.subscribed.read().contains(room) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .try_send(Command::Subscribe(room.clone(), tx))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BackendError::Unavailable(
                    "pub/sub session busy: too many subscriptions waiting".into(),
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    BackendError::Unavailable("pub/sub session stopped".into())
                }
            })?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BackendError::Unavailable("pub/sub session stopped".into())),
            Err(_) => Err(BackendError::Unavailable("subscribe timed out".into())),
        }
    }

    async fn unsubscribe(&self, room: &RoomId) -> Result<(), BackendError> {
        // Waits for room in the queue: an unsubscribe must not be lost (the
        // node would stay subscribed to a room it no longer serves).
        self.commands
            .send(Command::Unsubscribe(room.clone()))
            .await
            .map_err(|_| BackendError::Unavailable("pub/sub session stopped".into()))
    }

    fn is_healthy(&self) -> bool {
        self.shared.stats.broker_up.load(Ordering::Acquire)
    }
}

/// The envelope a publish that waits for replicas sends itself: the last
/// item of the script's reply (`None` when empty: a repeat whose frame was
/// trimmed from history).
fn envelope_of(reply: &redis::Value) -> Option<&[u8]> {
    let redis::Value::Array(items) = reply else {
        return None;
    };
    match items.last() {
        Some(redis::Value::BulkString(b)) if !b.is_empty() && items.len() >= 4 => Some(b),
        _ => None,
    }
}

/// Reads the publish script's reply (see [`PUBLISH`]).
fn published(mut msg: MessageFrame, reply: redis::Value) -> Result<Published, BackendError> {
    let corrupt = |what: &str| BackendError::Corrupt(format!("publish reply: {what}"));
    let redis::Value::Array(items) = reply else {
        return Err(corrupt("not an array"));
    };
    let (kind, offset): (i64, u64) = match items.as_slice() {
        [k, o, ..] => (
            redis::from_redis_value_ref(k).map_err(|_| corrupt("kind"))?,
            redis::from_redis_value_ref(o).map_err(|_| corrupt("offset"))?,
        ),
        _ => return Err(corrupt("too short")),
    };
    msg.offset = offset;
    if kind == 0 {
        return Ok(Published {
            message: msg,
            duplicate: false,
        });
    }
    let text = |i: usize| -> Result<String, BackendError> {
        items
            .get(i)
            .ok_or_else(|| corrupt("too short"))
            .and_then(|v| redis::from_redis_value_ref(v).map_err(|_| corrupt("field")))
    };
    let frame = text(3)?;
    let message = if frame.is_empty() {
        // Trimmed from history since: the first result as far as it is known.
        let micros: i64 = text(5)?.parse().map_err(|_| corrupt("timestamp"))?;
        MessageFrame {
            id: text(4)?,
            timestamp: Timestamp::from_micros(micros),
            ..msg
        }
    } else {
        match serde_json::from_str::<roomcast_protocol::ServerFrame>(&frame) {
            Ok(roomcast_protocol::ServerFrame::Message(m)) => m,
            _ => return Err(corrupt("stored frame")),
        }
    };
    Ok(Published {
        message,
        duplicate: true,
    })
}
