//! The close handshake, for connections that end (their reason and code
//! come from [`End`](crate::error::End)) and for sockets refused right after
//! the upgrade.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use roomcast_protocol::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::app::App;
use crate::error::Refusal;
use crate::ws::conn::Ws;

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
