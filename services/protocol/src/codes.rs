//! Error codes (sent in `error` frames, the connection stays open) and close
//! codes (sent in the WebSocket close frame, the connection ends).

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame. Every variant keeps the connection open:
/// a client that made a mistake is told so and may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a JSON object of the expected shape.
    InvalidJson,
    /// The frame's `type` is not one the server knows.
    UnknownType,
    /// A message with no content, or only white space.
    EmptyContent,
    /// Content over the configured limit (default 64 KiB).
    TooLarge,
    /// Over the per-connection rate; the frame was dropped.
    RateLimited,
    /// The message could not be stored; nothing was sent to anyone.
    Unavailable,
    /// The server does not know whether the message was stored (its store
    /// did not answer in time). It may have been: retry with the same
    /// `client_id`, which never stores a message twice.
    OutcomeUnknown,
    /// Not allowed for this connection.
    Forbidden,
    /// The application (its publish hook) refused the message; nothing was
    /// stored or sent. The `message` says why, in the application's words.
    Rejected,
    /// Multiplexed socket: the room (or the user) does not exist, and
    /// auto-create is off (what close 4004 is for a single-room socket).
    NotFound,
    /// Multiplexed socket: the frame names a room this socket has not
    /// subscribed to.
    NotSubscribed,
    /// Multiplexed socket: at the cap of subscriptions per connection.
    TooManySubscriptions,
    /// A `refresh` token that is missing, invalid, expired or for another
    /// user; the connection keeps its current token.
    Unauthorized,
}

impl ErrorCode {
    /// The code as it appears on the wire, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::EmptyContent => "empty_content",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Rejected => "rejected",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }
}

/// WebSocket close codes the server uses, with the reason each stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the conversation ended normally.
    Normal,
    /// 1001: the peer stopped answering heartbeats (it may reconnect at once).
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    Protocol,
    /// 1007: a text frame that was not UTF-8.
    InvalidPayload,
    /// 1008: policy: sustained flooding, or a consumer too slow to keep up.
    Policy,
    /// 1009: a frame or message over the transport limit (default 1 MiB).
    TooLarge,
    /// 1011: the server failed unexpectedly.
    Internal,
    /// 1012: this node is draining; reconnect (elsewhere) with `since`.
    Restart,
    /// 4001: token missing, invalid or expired.
    Unauthorized,
    /// 4003: not allowed: user differs from the token, origin not allowed,
    /// room not in the token's `rooms` claim.
    Forbidden,
    /// 4004: room or user not found (and auto-create is off).
    NotFound,
    /// 4009: the application disconnected the user; do not reconnect.
    Banned,
    /// 4010: the application disconnected the user; reconnecting is allowed.
    Disconnected,
    /// 4000-4999 as the application's connect hook chose it.
    Application(u16),
}

impl CloseCode {
    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooLarge => 1009,
            CloseCode::Internal => 1011,
            CloseCode::Restart => 1012,
            CloseCode::Unauthorized => 4001,
            CloseCode::Forbidden => 4003,
            CloseCode::NotFound => 4004,
            CloseCode::Banned => 4009,
            CloseCode::Disconnected => 4010,
            CloseCode::Application(code) => code,
        }
    }

    /// The code for a number, if it is one the server uses.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::Protocol,
            CloseCode::InvalidPayload,
            CloseCode::Policy,
            CloseCode::TooLarge,
            CloseCode::Internal,
            CloseCode::Restart,
            CloseCode::Unauthorized,
            CloseCode::Forbidden,
            CloseCode::NotFound,
            CloseCode::Banned,
            CloseCode::Disconnected,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}
