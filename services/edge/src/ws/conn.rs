//! One WebSocket connection: one task from the upgrade to the close.
//!
//! A connection is in one room (`/ws/{room}/{user}`, the contract's shape)
//! or, multiplexed (`/ws`), in the rooms it subscribes to (`subs`). Each
//! room it is in is a subscription with its own hub membership id,
//! presence entry and recovery position; a single-room socket is the
//! one-subscription case, joined before the loop starts.
//!
//! The task owns the socket and `select!`s over four things: frames from the
//! client (handled in `frames`), the connection's outbox (the bounded queue
//! the hub fills, and its kill switch), the heartbeat, and the node's
//! shutdown. Writes go out in
//! batches (feed, feed, ..., one flush), and a batch that cannot be written
//! within the write timeout, or a kill because the queue overflowed, closes
//! the connection 1008 `slow_consumer`: memory stays bounded and nobody else
//! waits for this client.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use roomcast_core::hub::{ConnId, Control, Outbound};
use roomcast_core::outbox::{Next, Outbox};
use roomcast_protocol::{ConnectedFrame, PresenceUser, RoomId, ServerFrame};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::Instrument;

use crate::app::{App, SlotGuard};
use crate::error::{End, FrameRefusal};
use crate::limits::Counted;
use crate::telemetry::ActiveSpan;
use crate::ws::close::close;
use crate::ws::rate::RateLimiter;

mod frames;
mod subs;

pub(crate) type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Frames written per flush at most, so one busy room cannot starve the
/// reads of this connection.
const MAX_BATCH: usize = 64;

/// Who connected to which room, as the handshake decided.
#[derive(Debug)]
pub struct Admission {
    /// `None`: a multiplexed socket, in the rooms it subscribes to. (Moved
    /// into the connection's subscriptions when it starts.)
    pub room: Option<RoomId>,
    pub user: PresenceUser,
    /// The raw `since` parameter.
    pub since: Option<String>,
    /// When the connection's token expires (seconds since the epoch). After
    /// that the connection may still receive, but not send.
    pub token_expires_at: Option<u64>,
    /// The token's `rooms` claim (`None`: any room), for subscriptions.
    pub token_rooms: Option<std::collections::HashSet<RoomId>>,
    /// The rooms the application's connect hook allows (`None`: any).
    pub hook_rooms: Option<Vec<String>>,
    /// This connection's place in the per-user and per-address counts,
    /// held for its life.
    pub seats: (
        Option<Counted<roomcast_protocol::UserId>>,
        Option<Counted<std::net::IpAddr>>,
    ),
}

/// Runs an admitted connection to its end.
///
/// Not an `async fn`: an async fn keeps its arguments in its state for its
/// whole life, next to the `Conn` made from them, which doubled the memory
/// every idle connection holds. Here the arguments are moved into `Conn`
/// first and only `Conn` is captured.
pub fn run(
    app: Arc<App>,
    ws: Ws,
    admission: Admission,
    slot: SlotGuard,
) -> impl Future<Output = ()> + Send {
    let conn_id = app.next_conn_id();
    let room = admission.room.as_ref().map_or("*", RoomId::as_str);
    let span =
        tracing::info_span!("conn", conn = conn_id, room = %room, user = %admission.user.user_id);
    let w = &app.settings.websocket;
    let now = Instant::now();
    let mut c = Conn {
        span: app
            .telemetry
            .connection(room, admission.user.user_id.as_str()),
        rate: RateLimiter::new(w.rate_per_sec, w.rate_burst, w.flood_close_after, now),
        write_timeout: Duration::from_millis(w.write_timeout_ms),
        outbox: Arc::new(Outbox::new(w.outbound_queue)),
        app,
        ws,
        conn_id,
        single: admission.room.is_some(),
        admission,
        last_seen: now,
        subs: Vec::new(),
        watched: Default::default(),
        control: None,
        _slot: slot,
    };
    async move {
        let metrics = &c.app.metrics;
        metrics.connections.inc();
        metrics.connections_opened.inc();
        tracing::debug!("connected");
        // `start` and `finish` run once; boxed, their state does not widen
        // the future every idle connection keeps alive for its whole life.
        let end = match Box::pin(c.start()).await {
            Ok(()) => c.serve().await,
            Err(end) => end,
        };
        Box::pin(c.finish(end)).await;
        c.span.set("roomcast.close_reason", end.label());
        std::mem::replace(&mut c.span, ActiveSpan::none()).end();
        c.app.metrics.connections.dec();
    }
    .instrument(span)
}

struct Conn {
    /// The `ws.connection` trace span (no-op unless tracing is on).
    span: ActiveSpan,
    app: Arc<App>,
    ws: Ws,
    /// Frames the hub queued for this connection, and its kill switch.
    outbox: Arc<Outbox>,
    conn_id: ConnId,
    admission: Admission,
    /// A single-room socket (its room is `subs[0]`), not a multiplexed one.
    single: bool,
    rate: RateLimiter,
    write_timeout: Duration,
    last_seen: Instant,
    /// The rooms this connection is in, ordered by membership id.
    subs: Vec<Sub>,
    /// Users whose status this (multiplexed) socket follows.
    watched: std::collections::HashSet<roomcast_protocol::UserId>,
    /// The application's subscribe/unsubscribe requests for this
    /// (multiplexed) socket's user.
    control: Option<tokio::sync::mpsc::Receiver<Control>>,
    /// The node's connection slot, held for its `Drop`: given back when the
    /// task ends and drops `Conn`.
    _slot: SlotGuard,
}

/// The next control request, or never (a single-room socket takes none).
async fn next_control(rx: &mut Option<tokio::sync::mpsc::Receiver<Control>>) -> Option<Control> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One room a connection is in.
struct Sub {
    /// Its hub membership id ([`Member::conn`]), unique on the node: the
    /// connection's own id for a single-room socket, a fresh one per
    /// subscription of a multiplexed one (so presence, which counts
    /// memberships, and the sweep see one entry per room).
    id: ConnId,
    room: RoomId,
    /// Unique in the cluster: `node/id`.
    conn_key: String,
    /// Messages up to this offset were sent already (replayed, or older than
    /// the subscription); live copies of them are skipped.
    seen_offset: u64,
    in_hub: bool,
    in_presence: bool,
}

impl Conn {
    /// A single-room socket joins its room; a multiplexed one says who it is.
    /// Either is listed as a socket of its user (to be disconnected with
    /// it; a multiplexed one also receives frames sent to the user).
    async fn start(&mut self) -> Result<(), End> {
        if !self.single {
            let (tx, rx) = tokio::sync::mpsc::channel(roomcast_core::hub::CONTROL_QUEUE);
            self.control = Some(rx);
            self.app.hub.add_socket(
                &self.admission.user.user_id,
                self.conn_id,
                self.outbox.clone(),
                tx,
            );
        }
        // The room moves into `subs`: one copy per connection.
        match self.admission.room.take() {
            Some(room) => {
                let since = self.admission.since.clone();
                self.join(room, since, self.conn_id).await
            }
            None => {
                let connected = ServerFrame::Connected(ConnectedFrame {
                    room_id: None,
                    user_id: self.admission.user.user_id.clone(),
                    username: self.admission.user.username.clone(),
                    node_id: self.app.node_id.to_string(),
                    offset: None,
                    epoch: None,
                    recovered: None,
                });
                self.send_frame(connected).await
            }
        }
    }

    async fn serve(&mut self) -> End {
        let interval = self.app.settings.heartbeat_interval();
        let timeout = self.app.settings.heartbeat_timeout();
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Created once and polled by reference: making these futures anew on
        // every wake-up registers and unregisters waiters each time, and the
        // shutdown token is shared by every connection of the node.
        let shutdown = self.app.shutdown.clone();
        let outbox = self.outbox.clone();
        let shutdown = shutdown.cancelled();
        tokio::pin!(shutdown);
        loop {
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => Err(End::Draining),
                // A kill comes out ahead of any queued frame.
                next = outbox.next() => match next {
                    // Boxed: its state (~650 bytes: the batch, the write
                    // deadline) would otherwise widen the future every idle
                    // connection keeps; one allocation per batch written.
                    Next::Frame(out) => Box::pin(self.write_batch(out)).await,
                    Next::Killed(reason) => Err(End::killed(reason)),
                },
                msg = self.ws.next() => match msg {
                    // Boxed: handling a client frame (a publish, an ack) is
                    // the widest state of this loop, and it is rare next to
                    // the time a connection spends waiting.
                    Some(Ok(msg)) => Box::pin(self.on_frame(msg)).await,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read failed");
                        Err(End::from_ws_error(&e))
                    }
                    None => Err(End::PeerGone),
                },
                Some(request) = next_control(&mut self.control) => {
                    Box::pin(self.on_control(request)).await
                }
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() > timeout {
                        Err(End::HeartbeatTimeout)
                    } else {
                        self.send(Message::Ping(Default::default())).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then
    /// flushes once. A write that does not finish in time, or a kill from
    /// the hub meanwhile, is a slow consumer.
    async fn write_batch(&mut self, first: Outbound) -> Result<(), End> {
        let outbox = self.outbox.clone();
        let write_timeout = self.write_timeout;
        let batch = async {
            let mut next = Some(first);
            let mut n = 0;
            while let Some(out) = next.take() {
                // Frames of a room this socket has left since are dropped.
                let fresh = match self.subs.binary_search_by_key(&out.to, |s| s.id) {
                    Ok(_) if out.offset == 0 => true,
                    Ok(i) if out.offset > self.subs[i].seen_offset => {
                        self.subs[i].seen_offset = out.offset;
                        true
                    }
                    Ok(_) => false,
                    // A frame sent to the user (multiplexed sockets only).
                    Err(_) => out.to == self.conn_id && !self.single,
                };
                if fresh {
                    self.app.metrics.observe_fanout(out.published_at);
                    match Utf8Bytes::try_from(out.frame) {
                        Ok(text) => self
                            .ws
                            .feed(Message::Text(text))
                            .await
                            .map_err(|e| End::from_ws_error(&e))?,
                        Err(e) => tracing::error!(error = %e, "dropping a frame that is not UTF-8"),
                    }
                }
                n += 1;
                if n < MAX_BATCH {
                    next = self.outbox.try_pop();
                }
            }
            self.ws.flush().await.map_err(|e| End::from_ws_error(&e))
        };
        tokio::pin!(batch);
        // Almost every batch goes straight into the socket buffer: only a
        // write that has to wait gets a timer (arming one per write is a
        // measurable share of the per-delivery cost).
        if let std::task::Poll::Ready(r) = futures_util::poll!(&mut batch) {
            return r;
        }
        tokio::select! {
            r = tokio::time::timeout(write_timeout, &mut batch) => r.unwrap_or(Err(End::SlowConsumer)),
            reason = outbox.killed() => Err(End::killed(reason)),
        }
    }

    async fn feed(&mut self, text: String) -> Result<(), End> {
        let fut = self.ws.feed(Message::Text(text.into()));
        match tokio::time::timeout(self.write_timeout, fut).await {
            Ok(r) => r.map_err(|e| End::from_ws_error(&e)),
            Err(_) => Err(End::SlowConsumer),
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(self.write_timeout, self.ws.flush()).await {
            Ok(r) => r.map_err(|e| End::from_ws_error(&e)),
            Err(_) => Err(End::SlowConsumer),
        }
    }

    async fn send(&mut self, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(self.write_timeout, self.ws.send(msg)).await {
            Ok(r) => r.map_err(|e| End::from_ws_error(&e)),
            Err(_) => Err(End::SlowConsumer),
        }
    }

    async fn send_frame(&mut self, frame: ServerFrame) -> Result<(), End> {
        self.send(Message::Text(frame.to_json().into())).await
    }

    /// An `error` frame for a refused frame that carried `client_id` (and,
    /// on a multiplexed socket, named `room`).
    async fn send_refusal(
        &mut self,
        why: FrameRefusal,
        client_id: Option<String>,
        room: Option<RoomId>,
    ) -> Result<(), End> {
        let frame = ServerFrame::error_in(why.code(), why.to_string(), client_id, room);
        self.send_frame(frame).await
    }

    /// Closes the socket (if the end calls for it) and leaves every room.
    async fn finish(&mut self, end: End) {
        match end {
            End::PeerClosed | End::PeerGone => {
                tracing::debug!(reason = end.label(), "disconnected")
            }
            End::Draining => tracing::debug!("closing for drain"),
            _ => tracing::info!(reason = end.label(), "closing connection"),
        }
        self.app
            .metrics
            .connections_closed
            .with_label_values(&[end.label()])
            .inc();
        match end.close() {
            Some((code, reason)) => close(&mut self.ws, code, reason, self.write_timeout).await,
            // tungstenite queued the reply to the client's close frame; it
            // goes out only with a flush (without it the client sees 1006).
            None if end == End::PeerClosed => {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.flush()).await;
            }
            None => {}
        }
        self.outbox.close();
        if !self.single {
            self.app
                .hub
                .remove_socket(&self.admission.user.user_id, self.conn_id);
        }
        let watched: Vec<_> = self.watched.iter().cloned().collect();
        self.unwatch(&watched);
        while !self.subs.is_empty() {
            self.leave(self.subs.len() - 1).await;
        }
    }
}
