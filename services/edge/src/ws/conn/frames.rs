//! Frames from the client: rate limiting, parsing, and what each one does
//! (publish and ack, typing, ping), with an `error` frame for anything
//! refused. The connection lives on after every refusal except a flood.

use std::time::Instant;

use roomcast_core::broker::MessageDraft;
use roomcast_protocol::{AckFrame, ClientFrame, ErrorCode, ServerFrame, TypingFrame};
use tokio_tungstenite::tungstenite::Message;

use super::Conn;
use crate::ws::close::End;
use crate::ws::rate::Verdict;

impl Conn {
    pub(super) async fn on_frame(&mut self, msg: Message) -> Result<(), End> {
        self.last_seen = Instant::now();
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.count("binary");
                return self
                    .send_error(
                        ErrorCode::InvalidJson,
                        "binary frames are not supported; send JSON text frames",
                    )
                    .await;
            }
            Message::Close(_) => return Err(End::PeerClosed),
            // Pings are answered by tungstenite; pongs only prove liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        match self.rate.check(Instant::now()) {
            Verdict::Accept => {}
            Verdict::Refuse => {
                self.count("rate_limited");
                self.app
                    .metrics
                    .messages_dropped
                    .with_label_values(&["rate_limited"])
                    .inc();
                let client_id = roomcast_protocol::client_id_of(&text);
                return self
                    .send_error_for(
                        ErrorCode::RateLimited,
                        "too many frames; slow down",
                        client_id,
                    )
                    .await;
            }
            Verdict::Close => return Err(End::Flooding),
        }
        let max = self.app.settings.websocket.max_content_bytes;
        let frame = ClientFrame::parse(&text, max);
        if matches!(
            frame,
            Ok(ClientFrame::Message { .. } | ClientFrame::Typing { .. })
        ) && self.token_expired()
        {
            self.count("forbidden");
            return self
                .send_error(
                    ErrorCode::Forbidden,
                    "token expired: reconnect with a fresh token to send",
                )
                .await;
        }
        match frame {
            Err(e) => {
                self.count("invalid");
                self.send_error_for(e.code, &e.message, e.client_id).await
            }
            Ok(ClientFrame::Message { content, client_id }) => {
                self.count("message");
                self.publish(content, client_id).await
            }
            Ok(ClientFrame::Typing { is_typing }) => {
                self.count("typing");
                let frame = ServerFrame::Typing(TypingFrame {
                    room_id: self.session.room.clone(),
                    user_id: self.session.user.user_id.clone(),
                    username: self.session.user.username.clone(),
                    is_typing,
                });
                let published = self
                    .app
                    .backend
                    .broker
                    .publish_event(
                        &self.session.room,
                        frame.to_json().into(),
                        Some(self.session.user.user_id.clone()),
                    )
                    .await;
                match published {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "typing not published");
                        self.send_error(ErrorCode::Unavailable, "typing not sent; try again")
                            .await
                    }
                }
            }
            Ok(ClientFrame::Ping) => {
                self.count("ping");
                self.send_frame(ServerFrame::Pong).await
            }
        }
    }

    fn token_expired(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.session.token_expires_at.is_some_and(|exp| now >= exp)
    }

    fn count(&self, kind: &str) {
        self.app
            .metrics
            .messages_received
            .with_label_values(&[kind])
            .inc();
    }

    async fn publish(&mut self, content: String, client_id: Option<String>) -> Result<(), End> {
        let draft = MessageDraft {
            room: self.session.room.clone(),
            user_id: self.session.user.user_id.clone(),
            username: self.session.user.username.clone(),
            content,
            client_id: client_id.clone(),
            trace: None,
        };
        let started = Instant::now();
        let mut span = self.app.telemetry.publish(self.session.room.as_str());
        let mut draft = draft;
        draft.trace = span.traceparent();
        let published = self.app.backend.broker.publish_message(draft).await;
        match &published {
            Ok(msg) => span.set("roomcast.offset", msg.offset as i64),
            Err(e) => span.set("error", e.to_string()),
        }
        span.end();
        match published {
            Ok(msg) => {
                let m = &self.app.metrics;
                m.publish_duration.observe(started.elapsed().as_secs_f64());
                m.messages_published.inc();
                self.send_frame(ServerFrame::Ack(AckFrame {
                    id: msg.id,
                    offset: msg.offset,
                    client_id,
                }))
                .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "message not stored");
                self.send_error(
                    ErrorCode::Unavailable,
                    "message not stored and not sent; retry",
                )
                .await
            }
        }
    }
}
