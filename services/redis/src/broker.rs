//! The Redis broker: publishing (through the command pool) and the
//! subscription requests it hands to the node's one pub/sub session.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use roomcast_core::broker::{Broker, MessageDraft, new_message_id};
use roomcast_core::envelope::Envelope;
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::{MessageFrame, RoomId, Timestamp, UserId};
use tokio::sync::{mpsc, oneshot};

use crate::client::{Redis, unavailable};
use crate::envelope;
use crate::history::{epoch_candidate, frame_template};
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
    node: Arc<str>,
    history_len: usize,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

/// How long a connection waits for its room's subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisBroker {
    pub fn new(
        redis: Redis,
        node: &str,
        history_len: usize,
        commands: mpsc::UnboundedSender<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            redis,
            node: node.into(),
            history_len,
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

    async fn publish_message(&self, draft: MessageDraft) -> Result<MessageFrame, BackendError> {
        let room = draft.room.clone();
        let now = Timestamp::now();
        let trace = draft.trace.clone();
        let mut msg = draft.into_message(new_message_id(), 0, now);
        let (frame_pre, frame_post) = frame_template(&msg);
        let k = &self.redis.keys;
        let (offset, _epoch): (u64, String) = self
            .redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                PUBLISH
                    .key(k.seq(&room))
                    .key(k.log(&room))
                    .key(k.epoch(&room))
                    .arg(self.history_len)
                    .arg(epoch_candidate())
                    .arg(k.channel(&room))
                    .arg(frame_pre)
                    .arg(frame_post)
                    .arg(envelope::script_prefix())
                    .arg(envelope::script_suffix(&self.node, now, trace.as_deref()))
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        msg.offset = offset;
        Ok(msg)
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

    async fn subscribe(&self, room: &RoomId) -> Result<(), BackendError> {
        if self.shared.subscribed.read().contains(room) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Subscribe(room.clone(), tx))
            .map_err(|_| BackendError::Unavailable("pub/sub session stopped".into()))?;
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BackendError::Unavailable("pub/sub session stopped".into())),
            Err(_) => Err(BackendError::Unavailable("subscribe timed out".into())),
        }
    }

    async fn unsubscribe(&self, room: &RoomId) -> Result<(), BackendError> {
        self.commands
            .send(Command::Unsubscribe(room.clone()))
            .map_err(|_| BackendError::Unavailable("pub/sub session stopped".into()))
    }

    fn is_healthy(&self) -> bool {
        self.shared.stats.broker_up.load(Ordering::Acquire)
    }
}
