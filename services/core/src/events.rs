//! Webhook events: what the application's backend hears about (a room
//! occupied or vacated, a member joined or left, a message stored, a user
//! online or offline anywhere), and the durable queue they wait in until a
//! dispatcher has delivered them.
//!
//! Events are recorded by the backend in the same step as the decision
//! they report (Redis: inside the presence, publish and sweep scripts), so
//! an event exists exactly when its change happened, once for the whole
//! cluster, and a node that crashes right after loses none. Delivery is the
//! dispatcher's (`roomcast-edge`'s `webhooks`): one leader at a time reads
//! the oldest unacknowledged events, posts them, and acknowledges them
//! only after the application answered 2xx. What one leader read and did
//! not acknowledge (it failed, or died) is read again first by the next.
//!
//! This module owns the event names and the JSON of one event.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use roomcast_protocol::{RoomId, UserId};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::BackendError;

/// What an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    /// A room's first member came online (anywhere in the cluster).
    RoomOccupied,
    /// A room's last member went offline.
    RoomVacated,
    /// A user's first connection in a room.
    MemberJoined,
    /// A user's last connection in a room ended (or its node died).
    MemberLeft,
    /// A message was stored (and published).
    MessageStored,
    /// A user's first connection anywhere.
    UserOnline,
    /// A user's last connection anywhere ended.
    UserOffline,
}

impl EventName {
    pub const ALL: [EventName; 7] = [
        EventName::RoomOccupied,
        EventName::RoomVacated,
        EventName::MemberJoined,
        EventName::MemberLeft,
        EventName::MessageStored,
        EventName::UserOnline,
        EventName::UserOffline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventName::RoomOccupied => "room_occupied",
            EventName::RoomVacated => "room_vacated",
            EventName::MemberJoined => "member_joined",
            EventName::MemberLeft => "member_left",
            EventName::MessageStored => "message_stored",
            EventName::UserOnline => "user_online",
            EventName::UserOffline => "user_offline",
        }
    }

    pub fn parse(s: &str) -> Option<EventName> {
        Self::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

/// One event's facts. Which fields are set depends on the name: rooms
/// have `room_id`, members `room_id`, `user_id`, `username`, users
/// `user_id`, stored messages `room_id` and `message` (the frame's JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: EventName,
    pub room: Option<RoomId>,
    pub user: Option<UserId>,
    pub username: Option<String>,
    pub message: Option<String>,
}

impl Event {
    pub fn room(name: EventName, room: &RoomId) -> Event {
        Event {
            name,
            room: Some(room.clone()),
            user: None,
            username: None,
            message: None,
        }
    }

    pub fn member(name: EventName, room: &RoomId, user: &UserId, username: &str) -> Event {
        Event {
            user: Some(user.clone()),
            username: Some(username.to_owned()),
            ..Event::room(name, room)
        }
    }

    pub fn user(name: EventName, user: &UserId) -> Event {
        Event {
            name,
            room: None,
            user: Some(user.clone()),
            username: None,
            message: None,
        }
    }

    pub fn message(room: &RoomId, frame: String) -> Event {
        Event {
            message: Some(frame),
            ..Event::room(EventName::MessageStored, room)
        }
    }
}

/// An event in the queue: its id (unique and increasing in the queue:
/// `<ms>-<n>`, the application's key to drop a redelivered duplicate) and
/// when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: String,
    pub time_ms: u64,
    pub event: Event,
}

/// The JSON of one event in a webhook's body.
#[derive(Debug, Serialize)]
pub struct EventJson<'a> {
    pub id: &'a str,
    pub name: EventName,
    pub time_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a RawValue>,
}

impl Queued {
    /// This event as the webhook body carries it. A stored frame that is
    /// not JSON (it always is) is left out rather than sent broken.
    pub fn json(&self) -> EventJson<'_> {
        let e = &self.event;
        EventJson {
            id: &self.id,
            name: e.name,
            time_ms: self.time_ms,
            room_id: e.room.as_ref().map(RoomId::as_str),
            user_id: e.user.as_ref().map(UserId::as_str),
            username: e.username.as_deref(),
            message: e
                .message
                .as_deref()
                .and_then(|m| serde_json::from_str::<&RawValue>(m).ok()),
        }
    }
}

/// Which events a backend records (nothing unless webhooks are on: a queue
/// no one drains would only grow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recording {
    /// Room, member and user events.
    pub presence: bool,
    /// `message_stored` (one more write per message).
    pub messages: bool,
    /// Undelivered events kept at most; past it the oldest are dropped
    /// (counted; approximate on Redis, which trims in whole blocks).
    pub max_queue: usize,
}

impl Recording {
    pub const OFF: Recording = Recording {
        presence: false,
        messages: false,
        max_queue: 0,
    };

    pub fn is_on(&self) -> bool {
        self.presence || self.messages
    }
}

/// The queue of undelivered events, shared by the cluster.
#[async_trait]
pub trait EventQueue: Send + Sync + 'static {
    /// Up to `max` unacknowledged events, oldest first, beginning with any
    /// that were read before and never acknowledged.
    async fn read(&self, max: usize) -> Result<Vec<Queued>, BackendError>;

    /// Removes delivered events.
    async fn ack(&self, ids: &[String]) -> Result<(), BackendError>;

    /// Takes or renews the dispatcher's lease for `ttl`: true while `owner`
    /// is the one that delivers.
    async fn lead(&self, owner: &str, ttl: Duration) -> Result<bool, BackendError>;

    /// Events waiting (read or not).
    async fn waiting(&self) -> Result<u64, BackendError>;
}

/// The embedded backend's queue. It lives and dies with the process, as
/// everything else of the embedded backend does.
#[derive(Debug)]
pub struct MemoryEvents {
    recording: Recording,
    inner: Mutex<MemoryQueue>,
}

#[derive(Debug, Default)]
struct MemoryQueue {
    events: VecDeque<Queued>,
    last_id: (u64, u64),
    leader: Option<(String, Instant)>,
}

impl MemoryEvents {
    pub fn new(recording: Recording) -> Self {
        Self {
            recording,
            inner: Mutex::default(),
        }
    }

    pub fn recording(&self) -> Recording {
        self.recording
    }

    /// Queues `event` if its kind is recorded.
    pub fn push(&self, event: Event) {
        let wanted = if event.name == EventName::MessageStored {
            self.recording.messages
        } else {
            self.recording.presence
        };
        if !wanted {
            return;
        }
        let now = roomcast_protocol::Timestamp::now().as_micros().max(0) as u64 / 1000;
        let mut q = self.inner.lock();
        // Ids as Redis makes them: milliseconds, then a sequence number
        // within the millisecond, never going backwards.
        let (ms, n) = q.last_id;
        let id = if now > ms { (now, 0) } else { (ms, n + 1) };
        q.last_id = id;
        if q.events.len() >= self.recording.max_queue.max(1) {
            q.events.pop_front();
        }
        q.events.push_back(Queued {
            id: format!("{}-{}", id.0, id.1),
            time_ms: now,
            event,
        });
    }
}

#[async_trait]
impl EventQueue for MemoryEvents {
    async fn read(&self, max: usize) -> Result<Vec<Queued>, BackendError> {
        Ok(self.inner.lock().events.iter().take(max).cloned().collect())
    }

    async fn ack(&self, ids: &[String]) -> Result<(), BackendError> {
        let mut q = self.inner.lock();
        q.events.retain(|e| !ids.contains(&e.id));
        Ok(())
    }

    async fn lead(&self, owner: &str, ttl: Duration) -> Result<bool, BackendError> {
        let mut q = self.inner.lock();
        let now = Instant::now();
        let free = match &q.leader {
            None => true,
            Some((o, until)) => o == owner || *until <= now,
        };
        if free {
            q.leader = Some((owner.to_owned(), now + ttl));
        }
        Ok(free)
    }

    async fn waiting(&self) -> Result<u64, BackendError> {
        Ok(self.inner.lock().events.len() as u64)
    }
}
