//! Every way a request, a frame or a connection can be refused or end, and
//! the one place that maps each to what the client sees: an HTTP status and
//! `detail` ([`ApiError`]), an `error` frame's code ([`FrameRefusal`]), or a
//! WebSocket close code ([`Refusal`] after the upgrade, [`End`] for a
//! connection that was serving). Handlers name what happened; only this
//! module decides the wire code.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use roomcast_core::BackendError;
use roomcast_core::hub::KillReason;
use roomcast_protocol::rest::ErrorBody;
use roomcast_protocol::{CloseCode, ErrorCode, FrameError};
use tokio_tungstenite::tungstenite;

use crate::auth::AuthError;

/// A refused REST call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(&'static str),
    /// The body is not JSON at all.
    #[error("{0}")]
    BadRequest(String),
    /// JSON of the wrong shape, or values out of range.
    #[error("{0}")]
    Unprocessable(String),
    /// No credentials, or credentials that do not verify.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit; retry after the given seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// A bounded store is full (the embedded backend's user or room limit).
    #[error("{0}")]
    Full(String),
    #[error("{0}")]
    Unavailable(String),
    /// The backend did not answer in time: the write may have happened.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Not a WebSocket handshake where one is required.
    #[error("{0}")]
    UpgradeRequired(&'static str),
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        if let BackendError::Full(what) = &e {
            return ApiError::Full(what.clone());
        }
        tracing::warn!(error = %e, "backend call failed");
        if e.may_have_happened() {
            ApiError::OutcomeUnknown(
                "backend did not answer in time: the write may have happened; retry with the same Idempotency-Key".into(),
            )
        } else {
            ApiError::Unavailable("backend unavailable, try again".into())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                detail: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        if let ApiError::TooManyRequests(_, secs) = &self {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(*secs));
        }
        resp
    }
}

/// A WebSocket refused after the upgrade, so that a browser client can read
/// the close code (a refused HTTP handshake shows to scripts only as 1006).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(&'static str),
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("{0}")]
    Forbidden(&'static str),
    /// The user holds `limits.connections_per_user` sockets on this node.
    #[error("too many connections for this user; close one first")]
    TooManyConnections,
    /// The application's connect hook said no, with its code and reason.
    #[error("{1}")]
    HookDenied(u16, String),
    /// The connect hook gave no usable answer, and that means deny.
    #[error("connect hook unavailable; try again")]
    HookFailed,
}

impl Refusal {
    pub fn close_code(&self) -> CloseCode {
        match self {
            Refusal::NotFound(_) => CloseCode::NotFound,
            Refusal::Unauthorized(_) => CloseCode::Unauthorized,
            Refusal::Forbidden(_) => CloseCode::Forbidden,
            Refusal::TooManyConnections => CloseCode::Policy,
            Refusal::HookDenied(code, _) => CloseCode::Application(*code),
            Refusal::HookFailed => CloseCode::Internal,
        }
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NotFound(_) => "not_found",
            Refusal::Unauthorized(_) => "auth",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::HookDenied(..) => "hook_denied",
            Refusal::HookFailed => "hook_error",
        }
    }
}

/// Why a client frame was refused; the connection stays open and the client
/// gets an `error` frame with [`code`](Self::code), naming the frame's
/// `client_id` when it had one.
#[derive(Debug, thiserror::Error)]
pub enum FrameRefusal {
    #[error("binary frames are not supported; send JSON text frames")]
    Binary,
    #[error("too many frames; slow down")]
    RateLimited,
    #[error("token expired: reconnect with a fresh token to send")]
    TokenExpired,
    /// Not a frame the protocol knows, or out of its limits.
    #[error("{}", .0.message)]
    Invalid(FrameError),
    #[error("since: expected a message offset (digits)")]
    BadSince,
    /// A message could not be published.
    #[error("{}", publish_message(.0))]
    NotPublished(BackendError),
    /// A typing indicator could not be published.
    #[error("typing not sent; try again")]
    TypingNotSent(BackendError),
    /// The application's publish hook refused the message (its reason).
    #[error("{0}")]
    Rejected(String),
    /// The publish hook gave no usable answer, and that means deny.
    #[error("publish hook unavailable: not stored and not sent; retry")]
    HookFailed,
    /// A subscription's room or user does not exist (and auto-create is off).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A subscription the token's `rooms` claim or the application does not
    /// allow, or a room a single-room socket is not in.
    #[error("{0}")]
    NotAllowed(&'static str),
    /// A frame naming a room this multiplexed socket is not subscribed to
    /// (or naming no room).
    #[error("{0}")]
    NotSubscribed(&'static str),
    #[error("at most {0} subscriptions per connection")]
    TooManySubscriptions(usize),
    #[error("at most {0} watched users per connection")]
    TooManyWatched(usize),
    /// A subscription could not be set up (the backend failed); the
    /// socket stays, without it.
    #[error("subscription not set up; try again")]
    SubscribeFailed,
    /// A `refresh` whose token does not do.
    #[error("refresh refused: {0}")]
    BadRefresh(String),
}

fn publish_message(e: &BackendError) -> &'static str {
    if e.may_have_happened() {
        "the store did not confirm it (no answer in time, or the connection broke): the message may have been stored; retry with the same client_id (it is never stored twice)"
    } else {
        "message not stored and not sent; retry"
    }
}

impl FrameRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameRefusal::Binary | FrameRefusal::BadSince => ErrorCode::InvalidJson,
            FrameRefusal::RateLimited => ErrorCode::RateLimited,
            FrameRefusal::TokenExpired => ErrorCode::Forbidden,
            FrameRefusal::Invalid(e) => e.code,
            FrameRefusal::NotPublished(e) if e.may_have_happened() => ErrorCode::OutcomeUnknown,
            FrameRefusal::NotPublished(_)
            | FrameRefusal::TypingNotSent(_)
            | FrameRefusal::HookFailed => ErrorCode::Unavailable,
            FrameRefusal::Rejected(_) => ErrorCode::Rejected,
            FrameRefusal::NotFound(_) => ErrorCode::NotFound,
            FrameRefusal::NotAllowed(_) => ErrorCode::Forbidden,
            FrameRefusal::NotSubscribed(_) => ErrorCode::NotSubscribed,
            FrameRefusal::TooManySubscriptions(_) | FrameRefusal::TooManyWatched(_) => {
                ErrorCode::TooManySubscriptions
            }
            FrameRefusal::SubscribeFailed => ErrorCode::Unavailable,
            FrameRefusal::BadRefresh(_) => ErrorCode::Unauthorized,
        }
    }

    /// The `type` label of `roomcast_messages_received_total` for the frame.
    pub fn label(&self) -> &'static str {
        match self {
            FrameRefusal::Binary => "binary",
            FrameRefusal::RateLimited => "rate_limited",
            FrameRefusal::TokenExpired => "forbidden",
            FrameRefusal::Invalid(_) | FrameRefusal::BadSince => "invalid",
            FrameRefusal::NotPublished(_)
            | FrameRefusal::Rejected(_)
            | FrameRefusal::HookFailed => "message",
            FrameRefusal::TypingNotSent(_) => "typing",
            FrameRefusal::NotFound(_)
            | FrameRefusal::NotAllowed(_)
            | FrameRefusal::TooManySubscriptions(_)
            | FrameRefusal::SubscribeFailed => "subscribe",
            FrameRefusal::NotSubscribed(_) => "forbidden",
            FrameRefusal::TooManyWatched(_) => "watch",
            FrameRefusal::BadRefresh(_) => "refresh",
        }
    }
}

/// Why a connection ended; [`End::close`] is the one mapping to close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent a close frame (tungstenite answers it).
    PeerClosed,
    /// The client vanished (EOF, reset). Normal on the internet.
    PeerGone,
    Draining,
    /// The node can no longer vouch for this stream; reconnect with since.
    Resync,
    SlowConsumer,
    Flooding,
    TooLarge,
    InvalidUtf8,
    Protocol,
    HeartbeatTimeout,
    Backend,
    /// The application disconnected the user (`reconnect` allowed or not).
    Disconnected,
    Banned,
}

impl End {
    /// Every end, for metrics that list each label from start-up.
    pub const ALL: [End; 13] = [
        End::PeerClosed,
        End::PeerGone,
        End::Draining,
        End::Resync,
        End::SlowConsumer,
        End::Flooding,
        End::TooLarge,
        End::InvalidUtf8,
        End::Protocol,
        End::HeartbeatTimeout,
        End::Backend,
        End::Disconnected,
        End::Banned,
    ];

    pub fn close(self) -> Option<(CloseCode, &'static str)> {
        match self {
            End::PeerClosed | End::PeerGone => None,
            End::Draining => Some((CloseCode::Restart, "node draining; reconnect with since")),
            End::Resync => Some((CloseCode::Restart, "resync; reconnect with since")),
            End::SlowConsumer => Some((CloseCode::Policy, "slow_consumer")),
            End::Flooding => Some((CloseCode::Policy, "rate_limited")),
            End::TooLarge => Some((CloseCode::TooLarge, "frame too large")),
            End::InvalidUtf8 => Some((CloseCode::InvalidPayload, "text frame is not UTF-8")),
            End::Protocol => Some((CloseCode::Protocol, "protocol error")),
            End::HeartbeatTimeout => Some((CloseCode::GoingAway, "heartbeat timeout")),
            End::Backend => Some((CloseCode::Internal, "backend unavailable; reconnect")),
            End::Disconnected => Some((CloseCode::Disconnected, "disconnected; you may reconnect")),
            End::Banned => Some((CloseCode::Banned, "disconnected; do not reconnect")),
        }
    }

    /// The `reason` label of `roomcast_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            End::PeerClosed | End::PeerGone => "normal",
            End::Draining => "drain",
            End::Resync => "resync",
            End::SlowConsumer => "slow_consumer",
            End::Flooding => "rate_limited",
            End::TooLarge => "too_large",
            End::InvalidUtf8 | End::Protocol => "protocol",
            End::HeartbeatTimeout => "heartbeat",
            End::Backend => "error",
            End::Disconnected | End::Banned => "disconnected",
        }
    }

    pub fn killed(reason: KillReason) -> End {
        match reason {
            KillReason::SlowConsumer => End::SlowConsumer,
            KillReason::Resync => End::Resync,
            KillReason::Disconnected => End::Disconnected,
            KillReason::Banned => End::Banned,
        }
    }

    pub fn from_ws_error(e: &tungstenite::Error) -> End {
        use tungstenite::Error as E;
        match e {
            E::Capacity(_) => End::TooLarge,
            E::Utf8(_) => End::InvalidUtf8,
            E::Protocol(_) => End::Protocol,
            _ => End::PeerGone,
        }
    }
}

impl From<BackendError> for End {
    fn from(e: BackendError) -> End {
        tracing::warn!(error = %e, "backend call failed");
        End::Backend
    }
}

impl Refusal {
    /// Every `reason` label a refused handshake is counted under, after the
    /// upgrade (these) or before it (capacity, draining, backend).
    pub const LABELS: [&'static str; 10] = [
        "hook_denied",
        "hook_error",
        "not_found",
        "auth",
        "forbidden",
        "too_many_connections",
        "capacity",
        "address_limit",
        "draining",
        "backend",
    ];
}
