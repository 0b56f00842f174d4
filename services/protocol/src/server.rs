//! Frames the server sends, each a JSON object tagged by `type`.
//!
//! `message` is the contract's most rigid shape: exactly
//! `type, id, user_id, username, content, timestamp, room_id, offset`, plus
//! `client_id` only when the sender gave one. The golden tests pin it.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, RoomId, Timestamp, UserId};

/// One frame to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Connected(ConnectedFrame),
    Presence(PresenceFrame),
    Message(MessageFrame),
    UserJoined(UserEventFrame),
    UserLeft(UserEventFrame),
    Typing(TypingFrame),
    Ack(AckFrame),
    Pong,
    Error(ErrorFrame),
    Subscribed(SubscribedFrame),
    Unsubscribed(RoomRef),
    Refreshed(RefreshedFrame),
    UserMessage(UserMessageFrame),
    Status(StatusFrame),
    PresenceDiff(PresenceDiffFrame),
}

impl ServerFrame {
    /// The frame as JSON text. Serializing these types cannot fail (no maps
    /// with non-string keys, no custom serializers that error).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    /// An `error` frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::error_for(code, message, None)
    }

    /// An `error` frame about a frame that carried `client_id`.
    pub fn error_for(
        code: ErrorCode,
        message: impl Into<String>,
        client_id: Option<String>,
    ) -> Self {
        ServerFrame::Error(ErrorFrame {
            code,
            message: message.into(),
            client_id,
            room_id: None,
        })
    }

    /// An `error` frame about a frame that named `room` (multiplexed
    /// sockets), carrying its `client_id` if it had one.
    pub fn error_in(
        code: ErrorCode,
        message: impl Into<String>,
        client_id: Option<String>,
        room: Option<RoomId>,
    ) -> Self {
        ServerFrame::Error(ErrorFrame {
            code,
            message: message.into(),
            client_id,
            room_id: room,
        })
    }
}

/// First frame after the handshake. On a multiplexed socket (`/ws`) it
/// names no room (no `room_id`, `offset`, `epoch`): each subscription gets
/// its own in `subscribed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
    pub user_id: UserId,
    pub username: String,
    pub node_id: String,
    /// The room's latest offset at connect time (0: no message yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Changes only when the room's history was lost; offsets from another
    /// epoch mean nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Present only when the client connected with `since`: false when the
    /// retained history no longer reaches back that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// A user who is online in a room, on any node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PresenceUser {
    pub user_id: UserId,
    pub username: String,
}

/// Everyone online in the room; sent right after `connected`. In a room
/// whose presence is summarised (more members than `presence.summary_above`)
/// `users` is only the first page (by user id) and `count` says how many
/// there are; the rest is paged over REST. Small rooms carry no `count`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceFrame {
    pub room_id: RoomId,
    pub users: Vec<PresenceUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Who came and went in a summarised room since the last diff (one frame
/// per room per `presence.diff_interval_ms` on each node, instead of a
/// `user_joined` / `user_left` per user), at most a page of them: past it,
/// `omitted` says how many more, and `count` stays exact. Apply as set operations: a join
/// adds (or renames) the user, a leave removes it. `count` is the room's
/// member count when the last of these changes was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceDiffFrame {
    pub room_id: RoomId,
    pub joins: Vec<PresenceUser>,
    pub leaves: Vec<PresenceUser>,
    /// How many more users came or went than are listed (a node lists at
    /// most `presence.summary_page` per interval); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<u64>,
    pub count: u64,
}

impl PresenceDiffFrame {
    /// The frame's JSON text split around its `count` (the last field), as
    /// `(before, after)`: a backend that learns the count only where it
    /// publishes (a Redis script) joins `before .. count .. after`.
    pub fn split_at_count(&self) -> (String, String) {
        let json = ServerFrame::PresenceDiff(Self {
            count: u64::MAX,
            ..self.clone()
        })
        .to_json();
        let at = json
            .rfind(&u64::MAX.to_string())
            .expect("the count is in the frame");
        let after = json[at + u64::MAX.to_string().len()..].to_owned();
        let mut before = json;
        before.truncate(at);
        (before, after)
    }
}

/// A stored chat message, as every member and the history API see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    pub id: String,
    pub user_id: UserId,
    pub username: String,
    pub content: String,
    pub timestamp: Timestamp,
    pub room_id: RoomId,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl MessageFrame {
    /// The `message` frame for this message as JSON text, without cloning it
    /// into a [`ServerFrame`] first (this is the per-publish encode).
    pub fn to_frame_json(&self) -> String {
        #[derive(Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Frame<'a> {
            Message(&'a MessageFrame),
        }
        serde_json::to_string(&Frame::Message(self)).expect("message frames always serialize")
    }

    /// The frame's JSON split around its offset, `(before, after)`, for a
    /// store that assigns the offset itself (the Redis publish script puts
    /// it in between). `self.offset` is ignored.
    ///
    /// The frame is serialized with a sentinel offset; the sentinel, with
    /// its unescaped quotes, cannot occur inside a JSON string, and
    /// `offset` is the last field but `client_id`.
    pub fn offset_template(&self) -> (String, String) {
        let sentinel = MessageFrame {
            offset: u64::MAX,
            ..self.clone()
        };
        let json = sentinel.to_frame_json();
        let marker = format!("\"offset\":{}", u64::MAX);
        let at = json
            .rfind(&marker)
            .expect("the sentinel offset is in the frame");
        (
            json[..at + "\"offset\":".len()].to_owned(),
            json[at + marker.len()..].to_owned(),
        )
    }
}

/// `user_joined` / `user_left`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEventFrame {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub username: String,
    pub timestamp: Timestamp,
}

/// Someone started or stopped typing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingFrame {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub username: String,
    pub is_typing: bool,
}

/// To the sender only, once its message is stored and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckFrame {
    pub id: String,
    pub offset: u64,
    /// The sender's `client_id`, or null when it gave none.
    pub client_id: Option<String>,
    /// The message's room, on a multiplexed socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
}

/// A refused frame; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
    /// The refused frame's `client_id`, when it had one (an extension: lets
    /// a client fail exactly the send that was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The room the refused frame named (multiplexed sockets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<RoomId>,
}

/// A subscription on a multiplexed socket is in place: the room's position,
/// as `connected` gives it for a single-room socket. Its `presence` and
/// (with `since`) replay follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribedFrame {
    pub room_id: RoomId,
    pub offset: u64,
    pub epoch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// A frame about one room and nothing else (`unsubscribed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRef {
    pub room_id: RoomId,
}

/// A `refresh` was accepted: the connection now lives on the new token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshedFrame {
    /// When the new token expires (seconds since the epoch), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A frame the application sent to one user (`POST /users/{id}/messages`),
/// on every multiplexed socket of that user: direct messages,
/// notifications, app events. Not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMessageFrame {
    pub user_id: UserId,
    /// The application's payload, as it gave it.
    pub data: serde_json::Value,
    pub timestamp: Timestamp,
}

/// Whether a watched user is online (in some room, on some node): one when
/// the socket starts watching, then one per change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFrame {
    pub user_id: UserId,
    pub online: bool,
}
