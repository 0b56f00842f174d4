//! What a publish hands to every node serving a room.
//!
//! The frame is encoded once, by the publishing node, and every receiving
//! node passes the same `Bytes` to each local recipient: fan-out to a
//! thousand members costs a thousand reference-count increments, not a
//! thousand serializations.

use std::sync::Arc;

use bytes::Bytes;
use roomcast_protocol::{RoomId, Timestamp, UserId};

/// One frame on its way to a room's members on one node.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub room: RoomId,
    /// The JSON text of the server frame, exactly as sent to clients.
    pub frame: Bytes,
    /// A stored message's offset; 0 for ephemeral events (typing, joined,
    /// left), which have none.
    pub offset: u64,
    /// Connections of this user do not receive it (`typing`, `user_joined`
    /// go "to the others").
    pub exclude_user: Option<UserId>,
    /// The node that accepted it.
    pub origin_node: Arc<str>,
    /// When the origin node accepted it, for the fan-out latency metric.
    pub published_at: Timestamp,
    /// W3C `traceparent` of the publish, so that delivery on every node joins
    /// the publisher's trace.
    pub trace: Option<Arc<str>>,
}

impl Envelope {
    /// An ephemeral frame (typing, joined, left) accepted now by `origin`:
    /// no offset, no trace.
    pub fn event(
        room: RoomId,
        frame: Bytes,
        exclude_user: Option<UserId>,
        origin: Arc<str>,
    ) -> Envelope {
        Envelope {
            room,
            frame,
            offset: 0,
            exclude_user,
            origin_node: origin,
            published_at: Timestamp::now(),
            trace: None,
        }
    }
}
