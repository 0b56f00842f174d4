//! Frames from the client: rate limiting (per socket and per user),
//! parsing, and what each one does
//! (publish and ack, typing, ping). Anything refused becomes a
//! [`FrameRefusal`] (the application's publish hook may refuse a message
//! too), which the error module turns into an `error` frame
//! carrying the refused frame's `client_id`. The connection lives on after
//! every refusal except a flood.

use std::time::Instant;

use roomcast_core::broker::MessageDraft;
use roomcast_protocol::{AckFrame, ClientFrame, ServerFrame, TypingFrame, client_id_of};
use tokio_tungstenite::tungstenite::Message;

use super::Conn;
use crate::error::{End, FrameRefusal};
use crate::hooks::{PublishRequest, PublishVerdict};
use crate::ws::rate::Verdict;

impl Conn {
    pub(super) async fn on_frame(&mut self, msg: Message) -> Result<(), End> {
        self.last_seen = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => return self.refuse(FrameRefusal::Binary, None).await,
            Message::Close(_) => return Err(End::PeerClosed),
            // Pings are answered by tungstenite; pongs only prove liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        let now = Instant::now();
        // The socket's own rate, then its user's across all its sockets on
        // this node (ten sockets do not make ten times the rate).
        let mut verdict = self.rate.check(now);
        if verdict == Verdict::Accept
            && self
                .app
                .frames_by_user
                .take(&self.admission.user.user_id, now)
                .is_err()
        {
            verdict = self.rate.refuse(now);
        }
        match verdict {
            Verdict::Accept => {}
            Verdict::Refuse => {
                self.app
                    .metrics
                    .messages_dropped
                    .with_label_values(&["rate_limited"])
                    .inc();
                return self
                    .refuse(FrameRefusal::RateLimited, client_id_of(&text))
                    .await;
            }
            Verdict::Close => return Err(End::Flooding),
        }
        let max = self.app.settings.websocket.max_content_bytes;
        let frame = match ClientFrame::parse(&text, max) {
            Ok(f) => f,
            Err(e) => {
                let client_id = e.client_id.clone();
                return self.refuse(FrameRefusal::Invalid(e), client_id).await;
            }
        };
        if matches!(
            frame,
            ClientFrame::Message { .. } | ClientFrame::Typing { .. }
        ) && self.token_expired()
        {
            return self
                .refuse(FrameRefusal::TokenExpired, client_id_of(&text))
                .await;
        }
        match frame {
            ClientFrame::Message { content, client_id } => {
                self.count("message");
                self.publish(content, client_id).await
            }
            ClientFrame::Typing { is_typing } => {
                self.count("typing");
                let frame = ServerFrame::Typing(TypingFrame {
                    room_id: self.admission.room.clone(),
                    user_id: self.admission.user.user_id.clone(),
                    username: self.admission.user.username.clone(),
                    is_typing,
                });
                let published = self
                    .app
                    .backend
                    .broker
                    .publish_event(
                        &self.admission.room,
                        frame.to_json().into(),
                        Some(self.admission.user.user_id.clone()),
                    )
                    .await;
                match published {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "typing not published");
                        self.send_refusal(FrameRefusal::TypingNotSent(e), None)
                            .await
                    }
                }
            }
            ClientFrame::Ping => {
                self.count("ping");
                self.send_frame(ServerFrame::Pong).await
            }
        }
    }

    fn token_expired(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.admission
            .token_expires_at
            .is_some_and(|exp| now >= exp)
    }

    fn count(&self, kind: &str) {
        self.app
            .metrics
            .messages_received
            .with_label_values(&[kind])
            .inc();
    }

    /// Counts a refused frame under its label and tells the client.
    async fn refuse(&mut self, why: FrameRefusal, client_id: Option<String>) -> Result<(), End> {
        self.count(why.label());
        self.send_refusal(why, client_id).await
    }

    async fn publish(&mut self, content: String, client_id: Option<String>) -> Result<(), End> {
        // The application's publish hook, if it applies to this room, may
        // refuse the message or change it before anything is stored.
        let hooked = self
            .app
            .hooks
            .on_publish(
                &self.app.metrics,
                &PublishRequest {
                    room_id: self.admission.room.as_str(),
                    user_id: self.admission.user.user_id.as_str(),
                    username: &self.admission.user.username,
                    content: &content,
                    client_id: client_id.as_deref(),
                },
            )
            .await;
        let content = match hooked {
            None | Some(Ok(PublishVerdict::Accept)) => content,
            Some(Ok(PublishVerdict::Replace(new))) => {
                let max = self.app.settings.websocket.max_content_bytes;
                if new.trim().is_empty() || new.len() > max {
                    tracing::warn!(
                        "publish hook replaced a message with empty or oversized content"
                    );
                    return self.send_refusal(FrameRefusal::HookFailed, client_id).await;
                }
                new
            }
            Some(Ok(PublishVerdict::Reject(reason))) => {
                return self
                    .send_refusal(FrameRefusal::Rejected(reason), client_id)
                    .await;
            }
            Some(Err(_)) => return self.send_refusal(FrameRefusal::HookFailed, client_id).await,
        };
        let started = Instant::now();
        let mut span = self.app.telemetry.publish(self.admission.room.as_str());
        let draft = MessageDraft {
            room: self.admission.room.clone(),
            user_id: self.admission.user.user_id.clone(),
            username: self.admission.user.username.clone(),
            content,
            client_id: client_id.clone(),
            trace: span.traceparent(),
        };
        let published = self.app.backend.broker.publish_message(draft).await;
        match &published {
            Ok(p) => span.set("roomcast.offset", p.message.offset as i64),
            Err(e) => span.set("error", e.to_string()),
        }
        span.end();
        match published {
            Ok(p) => {
                let m = &self.app.metrics;
                m.publish_duration.observe(started.elapsed().as_secs_f64());
                if p.duplicate {
                    m.messages_deduplicated.inc();
                } else {
                    m.messages_published.inc();
                }
                self.send_frame(ServerFrame::Ack(AckFrame {
                    id: p.message.id,
                    offset: p.message.offset,
                    client_id,
                }))
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "message not published");
                self.send_refusal(FrameRefusal::NotPublished(e), client_id)
                    .await
            }
        }
    }
}
