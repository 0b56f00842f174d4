//! Webhook delivery: the dispatcher that POSTs the backend's queued events
//! (`roomcast_core::events`) to `webhooks.url`.
//!
//! Every edge runs one; the queue's lease lets one of them deliver at a
//! time (the others wait to take over). The leader reads the oldest
//! unacknowledged events, up to `webhooks.max_batch` (a batch forms only
//! when events wait: one event idle, many when busy), POSTs them as
//! `{"time_ms": <now>, "events": [...]}` signed like the hooks
//! (`X-Roomcast-Signature: t=<unix s>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`), and acknowledges them only after a 2xx. A failed POST
//! (error status, no answer within `webhooks.timeout_ms`, unreachable) is
//! retried, the same batch first, with backoff from `retry_min_ms` doubling
//! to `retry_max_ms`; nothing behind it overtakes it. So events arrive at
//! least once and in the order they were recorded (for one room, the order
//! its changes happened); a redelivered event has the same `id`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use roomcast_core::events::{EventJson, EventName, EventQueue, Queued};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::hooks::{HookError, sign};
use crate::metrics::Metrics;

/// A webhook's body.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    pub time_ms: u64,
    pub events: Vec<EventJson<'a>>,
}

/// The node's webhook dispatcher.
pub struct Dispatcher {
    queue: Arc<dyn EventQueue>,
    client: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    secret: Vec<u8>,
    wanted: HashSet<EventName>,
    owner: String,
    max_batch: usize,
    timeout: Duration,
    retry: (Duration, Duration),
    poll: Duration,
    lease: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("url", &self.url)
            .field("owner", &self.owner)
            .finish()
    }
}

impl Dispatcher {
    /// The dispatcher the settings ask for: `None` without `webhooks.url`
    /// or when the backend records no events.
    pub fn new(
        s: &Settings,
        queue: Option<Arc<dyn EventQueue>>,
        node_id: &str,
        metrics: Arc<Metrics>,
    ) -> Option<Dispatcher> {
        let w = &s.webhooks;
        let url = w.url.as_deref()?.parse().ok()?;
        Some(Dispatcher {
            queue: queue?,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
            url,
            secret: w.secret.clone().unwrap_or_default().into_bytes(),
            wanted: s.webhook_events().into_iter().collect(),
            // Unique per process life: a restarted node with the same id is
            // a new owner, and waits for its previous life's lease.
            owner: format!("{node_id}/{}", uuid::Uuid::new_v4().simple()),
            max_batch: w.max_batch,
            timeout: Duration::from_millis(w.timeout_ms),
            retry: (
                Duration::from_millis(w.retry_min_ms),
                Duration::from_millis(w.retry_max_ms),
            ),
            poll: Duration::from_millis(w.poll_ms),
            lease: Duration::from_millis(w.lease_ms),
            metrics,
        })
    }

    /// Delivers until `stop`; then, if leading, makes one last pass over
    /// what waits (bounded by the POST timeout), which is what saves the
    /// drain's own events on the embedded backend.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = self.retry.0;
        while !stop.is_cancelled() {
            let pause = match self.step().await {
                Step::Sent | Step::Skipped => {
                    backoff = self.retry.0;
                    Duration::ZERO
                }
                Step::Idle => self.poll,
                Step::Follower => (self.lease / 4).max(self.poll),
                Step::Failed => {
                    let now = backoff;
                    backoff = (backoff * 2).min(self.retry.1);
                    jitter(now)
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
        if self.metrics.webhook_leader.get() == 1 {
            let deadline = Instant::now() + self.timeout;
            while Instant::now() < deadline
                && matches!(self.step().await, Step::Sent | Step::Skipped)
            {}
        }
        self.metrics.webhook_leader.set(0);
    }

    /// One round: renew the lease, read a batch, deliver it.
    async fn step(&self) -> Step {
        match self.queue.lead(&self.owner, self.lease).await {
            Ok(true) => self.metrics.webhook_leader.set(1),
            Ok(false) => {
                self.metrics.webhook_leader.set(0);
                self.metrics.webhook_queue.set(0);
                return Step::Follower;
            }
            Err(e) => {
                tracing::debug!(error = %e, "webhook lease not renewed");
                return Step::Failed;
            }
        }
        let batch = match self.queue.read(self.max_batch).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read webhook events");
                return Step::Failed;
            }
        };
        if let Ok(n) = self.queue.waiting().await {
            self.metrics.webhook_queue.set(n as i64);
        }
        if batch.is_empty() {
            return Step::Idle;
        }
        let (send, skip): (Vec<&Queued>, Vec<&Queued>) = batch
            .iter()
            .partition(|q| self.wanted.contains(&q.event.name));
        if send.is_empty() {
            return match self.ack(&skip).await {
                true => Step::Skipped,
                false => Step::Failed,
            };
        }
        let started = Instant::now();
        let posted = self.post(&send).await;
        self.metrics
            .hook_duration
            .with_label_values(&["webhook"])
            .observe(started.elapsed().as_secs_f64());
        match posted {
            Ok(()) => {
                self.metrics
                    .hook_calls
                    .with_label_values(&["webhook", "delivered"])
                    .inc();
                self.metrics.webhook_events.inc_by(send.len() as u64);
                // Not acknowledged (Redis unreachable): sent again later,
                // with the same ids.
                self.ack(&batch.iter().collect::<Vec<_>>()).await;
                Step::Sent
            }
            Err(e) => {
                self.metrics
                    .hook_calls
                    .with_label_values(&["webhook", "error"])
                    .inc();
                tracing::warn!(error = %e, events = send.len(), "webhook not delivered; retrying");
                Step::Failed
            }
        }
    }

    async fn ack(&self, events: &[&Queued]) -> bool {
        let ids: Vec<String> = events.iter().map(|q| q.id.clone()).collect();
        match self.queue.ack(&ids).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "webhook events not acknowledged; they will be sent again");
                false
            }
        }
    }

    async fn post(&self, events: &[&Queued]) -> Result<(), HookError> {
        let body = Body {
            time_ms: roomcast_protocol::Timestamp::now().as_micros().max(0) as u64 / 1000,
            events: events.iter().map(|q| q.json()).collect(),
        };
        let body = serde_json::to_vec(&body).expect("webhook bodies serialize");
        let req = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("roomcast/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-roomcast-signature", sign(&self.secret, &body))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HookError::Unreachable(e.to_string()))?;
        let answered = tokio::time::timeout(self.timeout, async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HookError::Unreachable(e.to_string()))?;
            let status = resp.status();
            // Read (and drop) the answer so the connection can be reused.
            let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(HookError::Status(status.as_u16()))
            }
        })
        .await;
        answered.unwrap_or(Err(HookError::Timeout(self.timeout)))
    }
}

/// What one round came to.
enum Step {
    Sent,
    /// Only unwanted events, acknowledged without a POST.
    Skipped,
    Idle,
    Follower,
    Failed,
}

/// `d` give or take a quarter, so that retries from several causes do not
/// fall into step.
fn jitter(d: Duration) -> Duration {
    let spread = d.as_millis() as u64 / 4;
    if spread == 0 {
        return d;
    }
    let r = uuid::Uuid::new_v4().as_u128() as u64 % (2 * spread);
    Duration::from_millis(d.as_millis() as u64 - spread + r)
}
