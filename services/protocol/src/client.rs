//! Frames a client sends: text frames holding one JSON object.
//!
//! Seed frontends send `{"content": "hi"}` with no `type`, so a frame without
//! `type` is a message. Everything else is a serde enum tagged by `type`.

use serde::Deserialize;

use crate::{ErrorCode, RoomId, UserId};

/// The longest `client_id` echoed back in `ack` and `message`, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// One frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// A chat message. `client_id` is the sender's own id for it, echoed in
    /// `ack` and in the `message` everyone receives.
    Message {
        #[serde(default)]
        content: String,
        #[serde(default)]
        client_id: Option<String>,
        /// The room, on a multiplexed socket (`/ws`); a single-room socket
        /// takes none or its own.
        #[serde(default)]
        room_id: Option<RoomId>,
    },
    /// The sender started or stopped typing. Never stored.
    Typing {
        is_typing: bool,
        #[serde(default)]
        room_id: Option<RoomId>,
    },
    /// Application keep-alive, answered with `pong`.
    Ping,
    /// Multiplexed socket: join a room (`subscribed`, its `presence` and,
    /// with `since`, the replay), as connecting to it alone would.
    Subscribe {
        room_id: RoomId,
        #[serde(default)]
        since: Option<String>,
    },
    /// Multiplexed socket: leave a room (`unsubscribed`).
    Unsubscribe { room_id: RoomId },
    /// A fresh token for the same user, before the current one expires.
    Refresh { token: String },
    /// Multiplexed socket: follow whether these users are online (a
    /// `status` for each now, then one per change).
    Watch { user_ids: Vec<UserId> },
    /// Multiplexed socket: stop following these users.
    Unwatch { user_ids: Vec<UserId> },
}

impl ClientFrame {
    /// The room a frame names, if any.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            ClientFrame::Message { room_id, .. } | ClientFrame::Typing { room_id, .. } => {
                room_id.as_ref()
            }
            ClientFrame::Subscribe { room_id, .. } | ClientFrame::Unsubscribe { room_id } => {
                Some(room_id)
            }
            ClientFrame::Ping
            | ClientFrame::Refresh { .. }
            | ClientFrame::Watch { .. }
            | ClientFrame::Unwatch { .. } => None,
        }
    }
}

/// Why a frame was refused; becomes an `error` frame, the connection stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The refused frame's `client_id`, if one could be read.
    pub client_id: Option<String>,
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            client_id: None,
        }
    }
}

/// The `client_id` of a frame, if it is JSON with a short string `client_id`;
/// best effort, for naming a refused frame in its `error`.
pub fn client_id_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Id {
        #[serde(default)]
        client_id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Id>(text).ok()?.client_id? {
        serde_json::Value::String(s) if s.len() <= MAX_CLIENT_ID_LEN => Some(s),
        _ => None,
    }
}

/// Only what decides how to read the rest. Unknown fields are ignored here,
/// so that a frame of an unknown type is reported as such and not as bad JSON.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// The seed shape: a message with no `type`. Extra fields are tolerated,
/// because old frontends send things like `{"content": "hi", "user": "x"}`.
#[derive(Deserialize)]
struct UntypedMessage {
    #[serde(default)]
    content: Option<serde_json::Value>,
    #[serde(default)]
    client_id: Option<String>,
}

impl ClientFrame {
    /// Parses and checks one text frame. `max_content` is the content limit
    /// in bytes; over it the frame is refused with `too_large`.
    pub fn parse(text: &str, max_content: usize) -> Result<ClientFrame, FrameError> {
        Self::parse_inner(text, max_content).map_err(|mut e| {
            e.client_id = client_id_of(text);
            e
        })
    }

    fn parse_inner(text: &str, max_content: usize) -> Result<ClientFrame, FrameError> {
        let probe: Probe = serde_json::from_str(text).map_err(|e| {
            FrameError::new(
                ErrorCode::InvalidJson,
                format!("expected a JSON object with an optional string \"type\": {e}"),
            )
        })?;
        let frame = match probe.kind.as_deref() {
            None => {
                let m: UntypedMessage = serde_json::from_str(text)
                    .map_err(|e| FrameError::new(ErrorCode::InvalidJson, e.to_string()))?;
                let content = match m.content {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => s,
                    Some(_) => {
                        return Err(FrameError::new(
                            ErrorCode::InvalidJson,
                            "\"content\" must be a string",
                        ));
                    }
                };
                ClientFrame::Message {
                    content,
                    client_id: m.client_id,
                    room_id: None,
                }
            }
            Some(
                "message" | "typing" | "ping" | "subscribe" | "unsubscribe" | "refresh" | "watch"
                | "unwatch",
            ) => serde_json::from_str(text)
                .map_err(|e| FrameError::new(ErrorCode::InvalidJson, e.to_string()))?,
            Some(other) => {
                let shown: String = other.chars().take(32).collect();
                return Err(FrameError::new(
                    ErrorCode::UnknownType,
                    format!(
                        "unknown frame type {shown:?}; expected message, typing, ping, \
                         subscribe, unsubscribe, refresh, watch or unwatch"
                    ),
                ));
            }
        };
        frame.check(max_content)
    }

    fn check(self, max_content: usize) -> Result<ClientFrame, FrameError> {
        if let ClientFrame::Message {
            content, client_id, ..
        } = &self
        {
            if content.trim().is_empty() {
                return Err(FrameError::new(
                    ErrorCode::EmptyContent,
                    "message content is empty",
                ));
            }
            if content.len() > max_content {
                return Err(FrameError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "content is {} bytes; the limit is {max_content}",
                        content.len()
                    ),
                ));
            }
            if client_id
                .as_ref()
                .is_some_and(|c| c.len() > MAX_CLIENT_ID_LEN)
            {
                return Err(FrameError::new(
                    ErrorCode::InvalidJson,
                    format!("client_id is longer than {MAX_CLIENT_ID_LEN} bytes"),
                ));
            }
        }
        Ok(self)
    }
}
