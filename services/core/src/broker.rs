//! Publishing to a room's members on every node.
//!
//! A chat message is stored and published in one step
//! ([`Broker::publish_message`]): it gets the room's next offset, goes into
//! the history, and goes out to every node serving the room, or none of it
//! happens. Ephemeral frames (typing, joined, left) are published without
//! being stored ([`Broker::publish_event`]).
//!
//! A node receives a room's publishes only while it is subscribed; the edge
//! subscribes when the hub reports a room's first local member and
//! unsubscribes when it reports the last one gone.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use roomcast_protocol::{MessageFrame, RoomId, Timestamp, UserId};

use crate::BackendError;
use crate::envelope::Envelope;
use crate::events::{Event, MemoryEvents};
use crate::history::MemoryHistory;
use crate::hub::{Control, Hub};

/// A message as the sender gave it, before it has an id and an offset.
#[derive(Debug, Clone)]
pub struct MessageDraft {
    pub room: RoomId,
    pub user_id: UserId,
    pub username: String,
    pub content: String,
    pub client_id: Option<String>,
    /// W3C `traceparent` of the publish span, carried to every node.
    pub trace: Option<String>,
}

impl MessageDraft {
    /// The stored message this draft becomes at `offset`.
    pub fn into_message(self, id: String, offset: u64, timestamp: Timestamp) -> MessageFrame {
        MessageFrame {
            id,
            user_id: self.user_id,
            username: self.username,
            content: self.content,
            timestamp,
            room_id: self.room,
            offset,
            client_id: self.client_id,
        }
    }
}

/// What a publish came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stored message (for a duplicate: the first one, as stored then).
    pub message: MessageFrame,
    /// The sender had already published this `client_id` in the room within
    /// the de-duplication window: nothing new was stored or sent.
    pub duplicate: bool,
}

/// A fresh message id.
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Fan-out across nodes.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// `memory` or `redis`, for logs.
    fn kind(&self) -> &'static str;

    /// Stores the message under the room's next offset and publishes it to
    /// every node serving the room, atomically.
    ///
    /// Idempotent: a draft with a `client_id` that its sender already
    /// published in the room within the de-duplication window stores
    /// nothing and returns the first result (same id and offset).
    ///
    /// On [`BackendError::Unavailable`] nothing was stored and nothing was
    /// delivered; on [`BackendError::Indeterminate`] it may have been
    /// (a retry with the same `client_id` settles it).
    async fn publish_message(&self, draft: MessageDraft) -> Result<Published, BackendError>;

    /// Publishes an already-encoded ephemeral frame to every node serving the
    /// room, skipping `exclude_user`'s connections.
    async fn publish_event(
        &self,
        room: &RoomId,
        frame: Bytes,
        exclude_user: Option<UserId>,
    ) -> Result<(), BackendError>;

    /// Queues `frame` to every socket of `user` that takes frames sent to
    /// its user (multiplexed sockets), on every node. Not stored: a user
    /// with no such socket gets nothing.
    async fn send_to_user(&self, user: &UserId, frame: Bytes) -> Result<(), BackendError>;

    /// Closes every socket of `user` on every node: to reconnect
    /// (`reconnect`) or for good.
    async fn disconnect_user(&self, user: &UserId, reconnect: bool) -> Result<(), BackendError>;

    /// Has every multiplexed socket of `user`, on every node, subscribe to
    /// or unsubscribe from a room.
    async fn control_user(&self, user: &UserId, request: Control) -> Result<(), BackendError>;

    /// Starts receiving `room`'s publishes on this node.
    async fn subscribe(&self, room: &RoomId) -> Result<(), BackendError>;

    /// Stops receiving `room`'s publishes (the node has no member left).
    async fn unsubscribe(&self, room: &RoomId) -> Result<(), BackendError>;

    /// Whether publishing and receiving work right now (for `/ready`).
    fn is_healthy(&self) -> bool;
}

/// The embedded broker: this process is the whole cluster, so publishing is
/// storing and handing the frame to the local hub.
#[derive(Debug)]
pub struct MemoryBroker {
    history: Arc<MemoryHistory>,
    hub: Arc<Hub>,
    node: Arc<str>,
    events: Option<Arc<MemoryEvents>>,
}

impl MemoryBroker {
    pub fn new(history: Arc<MemoryHistory>, hub: Arc<Hub>, node: &str) -> Self {
        Self {
            history,
            hub,
            node: node.into(),
            events: None,
        }
    }

    /// Queues a `message_stored` webhook event for every new message.
    pub fn with_events(self, events: Arc<MemoryEvents>) -> Self {
        Self {
            events: Some(events),
            ..self
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish_message(&self, draft: MessageDraft) -> Result<Published, BackendError> {
        let room = draft.room.clone();
        let now = Timestamp::now();
        let trace: Option<Arc<str>> = draft.trace.as_deref().map(Into::into);
        let draft = draft.into_message(new_message_id(), 0, now);
        // Delivery runs inside the room's history lock, so two concurrent
        // publishes reach every member in offset order (and their events
        // are queued in that order).
        let (message, duplicate) = self.history.append(&room, draft, |msg| {
            let frame = msg.to_frame_json();
            if let Some(q) = &self.events {
                q.push(Event::message(&room, frame.clone()));
            }
            self.hub.deliver(&Envelope {
                room: room.clone(),
                frame: Bytes::from(frame),
                offset: msg.offset,
                exclude_user: None,
                origin_node: self.node.clone(),
                published_at: now,
                trace: trace.clone(),
            });
        });
        Ok(Published { message, duplicate })
    }

    async fn publish_event(
        &self,
        room: &RoomId,
        frame: Bytes,
        exclude_user: Option<UserId>,
    ) -> Result<(), BackendError> {
        self.hub.deliver(&Envelope::event(
            room.clone(),
            frame,
            exclude_user,
            self.node.clone(),
        ));
        Ok(())
    }

    async fn send_to_user(&self, user: &UserId, frame: Bytes) -> Result<(), BackendError> {
        self.hub.to_user(user, &frame);
        Ok(())
    }

    async fn disconnect_user(&self, user: &UserId, reconnect: bool) -> Result<(), BackendError> {
        self.hub.kill_user(user, crate::hub::kill_reason(reconnect));
        Ok(())
    }

    async fn control_user(&self, user: &UserId, request: Control) -> Result<(), BackendError> {
        self.hub.control_user(user, &request);
        Ok(())
    }

    async fn subscribe(&self, _room: &RoomId) -> Result<(), BackendError> {
        // The hub's member list is this node's subscription.
        Ok(())
    }

    async fn unsubscribe(&self, _room: &RoomId) -> Result<(), BackendError> {
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        true
    }
}
