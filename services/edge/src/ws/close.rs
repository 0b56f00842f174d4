//! How a connection ends: the reasons ([`End`]), the one mapping from a
//! reason to a close code and a metric label, and the close handshake
//! (including for sockets refused right after the upgrade).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast_core::BackendError;
use roomcast_core::hub::KillReason;
use roomcast_protocol::CloseCode;
use tokio_tungstenite::tungstenite::{self, protocol::CloseFrame};

use crate::app::App;
use crate::error::Refusal;
use crate::ws::conn::Ws;

/// Why a connection ended; [`End::close`] is the one mapping to close codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
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
}

impl End {
    pub(crate) fn close(self) -> Option<(CloseCode, &'static str)> {
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
        }
    }

    /// The `reason` label of `roomcast_connections_closed_total`.
    pub(crate) fn label(self) -> &'static str {
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
        }
    }

    pub(crate) fn killed(reason: KillReason) -> End {
        match reason {
            KillReason::SlowConsumer => End::SlowConsumer,
            KillReason::Resync => End::Resync,
        }
    }

    pub(crate) fn from_ws_error(e: &tungstenite::Error) -> End {
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
        tracing::warn!(error = %e, "backend call failed; closing connection");
        End::Backend
    }
}

/// Sends a close frame and waits briefly for the peer's answer, so the
/// frame is read before the TCP connection goes away. The frame gets
/// `write_timeout` to go out, as any write does: a slow consumer's socket is
/// full, and its close code only arrives if it reads within that time.
pub(crate) async fn close(ws: &mut Ws, code: CloseCode, reason: &str, write_timeout: Duration) {
    let frame = CloseFrame {
        code: code.code().into(),
        reason: truncate(reason, MAX_CLOSE_REASON).into(),
    };
    if tokio::time::timeout(write_timeout, ws.close(Some(frame)))
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
}

/// A close frame is a control frame: 125 bytes of payload, 2 of them the code.
const MAX_CLOSE_REASON: usize = 123;

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Closes a socket whose handshake was refused.
pub async fn refuse(app: Arc<App>, mut ws: Ws, refusal: Refusal) {
    tracing::debug!(reason = %refusal, "refusing connection");
    app.metrics
        .handshakes_refused
        .with_label_values(&[refusal.label()])
        .inc();
    let write_timeout = Duration::from_millis(app.settings.websocket.write_timeout_ms);
    close(
        &mut ws,
        refusal.close_code(),
        &refusal.to_string(),
        write_timeout,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_control_frame() {
        assert_eq!(truncate("short", MAX_CLOSE_REASON), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long, MAX_CLOSE_REASON);
        assert!(cut.len() <= MAX_CLOSE_REASON && cut.len() == 122);
    }
}
