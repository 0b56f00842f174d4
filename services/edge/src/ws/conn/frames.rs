//! Frames from the client: rate limiting (per socket and per user),
//! parsing, and what each one does
//! (publish and ack, typing, ping; subscriptions and token refresh are in
//! `subs`). Anything refused becomes a
//! [`FrameRefusal`] (the application's publish hook may refuse a message
//! too), which the error module turns into an `error` frame
//! carrying the refused frame's `client_id`. The connection lives on after
//! every refusal except a flood.

use std::time::Instant;

use roomcast_core::broker::MessageDraft;
use roomcast_protocol::{AckFrame, ClientFrame, RoomId, ServerFrame, TypingFrame, client_id_of};
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
            Message::Binary(_) => return self.refuse(FrameRefusal::Binary, None, None).await,
            Message::Close(_) => return Err(End::PeerClosed),
            // Pings are answered by tungstenite; pongs only prove liveness.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        let max = self.app.settings.websocket.max_content_bytes;
        let parsed = ClientFrame::parse(&text, max);
        // A multiplexed socket subscribes to its rooms in one burst when it
        // (re)connects: subscribes do not spend the frame rate (the
        // subscription cap bounds them; a subscribe/unsubscribe loop is
        // bounded by the unsubscribes, which do).
        if !matches!(parsed, Ok(ClientFrame::Subscribe { .. })) && !self.spend_rate(&text).await? {
            return Ok(());
        }
        let frame = match parsed {
            Ok(f) => f,
            Err(e) => {
                let client_id = e.client_id.clone();
                return self.refuse(FrameRefusal::Invalid(e), client_id, None).await;
            }
        };
        let named = frame.room().cloned().filter(|_| !self.single);
        if matches!(
            frame,
            ClientFrame::Message { .. }
                | ClientFrame::Typing { .. }
                | ClientFrame::Subscribe { .. }
        ) && self.token_expired()
        {
            return self
                .refuse(FrameRefusal::TokenExpired, client_id_of(&text), named)
                .await;
        }
        match frame {
            ClientFrame::Message {
                content,
                client_id,
                room_id,
            } => {
                self.count("message");
                match self.room_of(room_id) {
                    Ok(room) => self.publish(room, content, client_id).await,
                    Err(why) => self.refuse(why, client_id, named).await,
                }
            }
            ClientFrame::Typing { is_typing, room_id } => {
                self.count("typing");
                match self.room_of(room_id) {
                    Ok(room) => self.typing(room, is_typing).await,
                    Err(why) => self.refuse(why, None, named).await,
                }
            }
            ClientFrame::Ping => {
                self.count("ping");
                self.send_frame(ServerFrame::Pong).await
            }
            ClientFrame::Subscribe { room_id, since } => {
                self.count("subscribe");
                self.subscribe(room_id, since).await
            }
            ClientFrame::Unsubscribe { room_id } => {
                self.count("unsubscribe");
                self.unsubscribe(room_id).await
            }
            ClientFrame::Refresh { token } => {
                self.count("refresh");
                self.refresh(&token).await
            }
            ClientFrame::Watch { user_ids } => {
                self.count("watch");
                self.watch(user_ids).await
            }
            ClientFrame::Unwatch { user_ids } => {
                self.count("watch");
                self.unwatch(&user_ids);
                Ok(())
            }
        }
    }

    /// Takes one frame from the socket's rate and its user's: true when
    /// the frame may go on. Past either rate the frame is refused (the
    /// client is told) or, flooding, the socket ends.
    async fn spend_rate(&mut self, text: &str) -> Result<bool, End> {
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
            Verdict::Accept => Ok(true),
            Verdict::Refuse => {
                self.app
                    .metrics
                    .messages_dropped
                    .with_label_values(&["rate_limited"])
                    .inc();
                self.refuse(FrameRefusal::RateLimited, client_id_of(text), None)
                    .await?;
                Ok(false)
            }
            Verdict::Close => Err(End::Flooding),
        }
    }

    /// The room a message or typing frame is for: a single-room socket's
    /// own (it may name it, and no other); on a multiplexed socket, the
    /// subscribed room it names.
    fn room_of(&self, named: Option<RoomId>) -> Result<RoomId, FrameRefusal> {
        let own = self.subs.first().map(|s| &s.room).filter(|_| self.single);
        match (self.single, named) {
            (true, None) => own
                .cloned()
                .ok_or(FrameRefusal::NotSubscribed("not in a room")),
            (true, Some(r)) if own == Some(&r) => Ok(r),
            (true, Some(_)) => Err(FrameRefusal::NotAllowed(
                "this socket is in one room: send without room_id, or open a multiplexed socket (/ws)",
            )),
            (false, None) => Err(FrameRefusal::NotSubscribed(
                "a multiplexed socket must name the room (room_id)",
            )),
            (false, Some(r)) if self.subs.iter().any(|s| s.room == r) => Ok(r),
            (false, Some(_)) => Err(FrameRefusal::NotSubscribed(
                "not subscribed to this room: subscribe first",
            )),
        }
    }

    /// `room_id` for frames to this socket about `room`: named on a
    /// multiplexed socket, left out on a single-room one (the contract's
    /// shapes).
    pub(super) fn tag(&self, room: &RoomId) -> Option<RoomId> {
        (!self.single).then(|| room.clone())
    }

    async fn typing(&mut self, room: RoomId, is_typing: bool) -> Result<(), End> {
        let frame = ServerFrame::Typing(TypingFrame {
            room_id: room.clone(),
            user_id: self.admission.user.user_id.clone(),
            username: self.admission.user.username.clone(),
            is_typing,
        });
        let published = self
            .app
            .backend
            .broker
            .publish_event(
                &room,
                frame.to_json().into(),
                Some(self.admission.user.user_id.clone()),
            )
            .await;
        match published {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "typing not published");
                let tag = self.tag(&room);
                self.send_refusal(FrameRefusal::TypingNotSent(e), None, tag)
                    .await
            }
        }
    }

    pub(super) fn token_expired(&self) -> bool {
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
    pub(super) async fn refuse(
        &mut self,
        why: FrameRefusal,
        client_id: Option<String>,
        room: Option<RoomId>,
    ) -> Result<(), End> {
        self.count(why.label());
        self.send_refusal(why, client_id, room).await
    }

    async fn publish(
        &mut self,
        room: RoomId,
        content: String,
        client_id: Option<String>,
    ) -> Result<(), End> {
        let tag = self.tag(&room);
        // The application's publish hook, if it applies to this room, may
        // refuse the message or change it before anything is stored.
        let hooked = self
            .app
            .hooks
            .on_publish(
                &self.app.metrics,
                &PublishRequest {
                    room_id: room.as_str(),
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
                    return self
                        .send_refusal(FrameRefusal::HookFailed, client_id, tag)
                        .await;
                }
                new
            }
            Some(Ok(PublishVerdict::Reject(reason))) => {
                return self
                    .send_refusal(FrameRefusal::Rejected(reason), client_id, tag)
                    .await;
            }
            Some(Err(_)) => {
                return self
                    .send_refusal(FrameRefusal::HookFailed, client_id, tag)
                    .await;
            }
        };
        let started = Instant::now();
        let mut span = self.app.telemetry.publish(room.as_str());
        let draft = MessageDraft {
            room: room.clone(),
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
                    room_id: tag,
                }))
                .await
            }
            Err(e) => {
                self.app.metrics.not_published(&e);
                self.send_refusal(FrameRefusal::NotPublished(e), client_id, tag)
                    .await
            }
        }
    }
}
