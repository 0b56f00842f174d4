//! The node's Prometheus metrics.
//!
//! Names follow Prometheus conventions and are part of the interface:
//! dashboards and alert rules elsewhere use them. Label values are bounded
//! sets (close reasons, frame types); never a room or user id. Every label
//! value known in advance is exported from start-up (as 0), so a healthy
//! node's dashboard shows zeros, not "No data".
//!
//! Counters the backend keeps (plain atomics: it knows no metrics crate) are
//! read live at each scrape by a collector ([`BackendCounters`]), never
//! copied into a metric with reset-and-add: two scrapes at once (the main
//! port and `METRICS_PORT`, or two Prometheus servers) would otherwise see a
//! counter drop to 0, which Prometheus takes for a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use roomcast_core::BackendStats;
use roomcast_core::envelope::Envelope;
use roomcast_protocol::Timestamp;

use crate::error::{End, Refusal};

/// `type` values of `roomcast_messages_received_total`: frames handled, and
/// frames refused (see `FrameRefusal::label`).
pub const RECEIVED_TYPES: [&str; 11] = [
    "message",
    "typing",
    "ping",
    "subscribe",
    "unsubscribe",
    "refresh",
    "watch",
    "binary",
    "rate_limited",
    "forbidden",
    "invalid",
];
/// `reason` values of `roomcast_messages_dropped_total`.
pub const DROPPED_REASONS: [&str; 2] = ["slow_consumer", "rate_limited"];
/// `outcome` values of `roomcast_recoveries_total`.
pub const RECOVERY_OUTCOMES: [&str; 3] = ["recovered", "not_recovered", "invalid"];

/// Buckets from 100 µs to 10 s: a healthy fan-out is sub-millisecond, a sick
/// one takes seconds, and both must be visible.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_opened: IntCounter,
    pub connections_closed: IntCounterVec,
    pub rooms_active: IntGauge,
    pub messages_received: IntCounterVec,
    pub messages_published: IntCounter,
    pub messages_deduplicated: IntCounter,
    pub messages_not_published: IntCounterVec,
    /// When [`Metrics::not_published`] last logged (micros since the epoch).
    not_published_logged: Arc<std::sync::atomic::AtomicI64>,
    pub messages_delivered: IntCounter,
    pub fanout_targeted: IntCounter,
    pub messages_dropped: IntCounterVec,
    pub fanout_latency: Histogram,
    pub publish_duration: Histogram,
    pub broker_up: IntGauge,
    pub online_users: IntGauge,
    pub recoveries: IntCounterVec,
    pub handshakes_refused: IntCounterVec,
    pub requests_refused: IntCounterVec,
    pub hook_calls: IntCounterVec,
    pub hook_duration: prometheus::HistogramVec,
    pub webhook_events: IntCounter,
    pub webhook_queue: IntGauge,
    pub webhook_leader: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new(node: &str) -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid"));
        let counter_vec = |name: &str, help: &str, label: &str| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid"),
            )
        };
        let gauge = |name: &str, help: &str| reg(&r, IntGauge::new(name, help).expect("valid"));
        let histogram = |name: &str, help: &str| {
            reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid"),
            )
        };
        let build = reg(
            &r,
            IntGaugeVec::new(
                Opts::new("roomcast_build_info", "Build of this node; always 1."),
                &["version", "node"],
            )
            .expect("valid"),
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), node])
            .set(1);
        let m = Self {
            connections: gauge(
                "roomcast_connections",
                "Open WebSocket connections on this node.",
            ),
            connections_opened: counter(
                "roomcast_connections_opened_total",
                "WebSocket connections accepted.",
            ),
            connections_closed: counter_vec(
                "roomcast_connections_closed_total",
                "WebSocket connections closed, by reason.",
                "reason",
            ),
            rooms_active: gauge("roomcast_rooms_active", "Rooms with members on this node."),
            messages_received: counter_vec(
                "roomcast_messages_received_total",
                "Frames received from clients, by type.",
                "type",
            ),
            messages_published: counter(
                "roomcast_messages_published_total",
                "Chat messages stored and published by this node.",
            ),
            messages_deduplicated: counter(
                "roomcast_messages_deduplicated_total",
                "Publishes that repeated a client_id already stored (a retry): answered with the first result, stored nothing.",
            ),
            messages_delivered: counter(
                "roomcast_messages_delivered_total",
                "Frames queued to local connections (messages and events).",
            ),
            fanout_targeted: counter(
                "roomcast_messages_fanout_targeted_total",
                "Frames that should have been queued to local connections; delivered falls short of it only by loss.",
            ),
            messages_dropped: counter_vec(
                "roomcast_messages_dropped_total",
                "Frames not delivered, by reason.",
                "reason",
            ),
            fanout_latency: histogram(
                "roomcast_fanout_latency_seconds",
                "From acceptance on the origin node to the socket write on this node.",
            ),
            publish_duration: histogram(
                "roomcast_broker_publish_duration_seconds",
                "Time to store and publish one message.",
            ),
            broker_up: gauge(
                "roomcast_broker_up",
                "1 while this node's broker can publish and receive.",
            ),
            online_users: gauge(
                "roomcast_presence_online_users",
                "Users online cluster-wide (a user in two rooms counts twice), as this node reads it.",
            ),
            messages_not_published: counter_vec(
                "roomcast_messages_not_published_total",
                "Publishes refused to their sender, by outcome: unavailable (nothing was stored), outcome_unknown (maybe stored: no answer in time, a broken connection, replicas not confirming).",
                "outcome",
            ),
            not_published_logged: Arc::default(),
            recoveries: counter_vec(
                "roomcast_recoveries_total",
                "Connections that asked to recover with since, by outcome.",
                "outcome",
            ),
            handshakes_refused: counter_vec(
                "roomcast_handshakes_refused_total",
                "WebSocket handshakes refused before the upgrade, by reason.",
                "reason",
            ),
            requests_refused: counter_vec(
                "roomcast_requests_refused_total",
                "REST requests refused before their handler, by reason (unauthorized, forbidden, rate_limited, cross_site).",
                "reason",
            ),
            hook_calls: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "roomcast_hook_calls_total",
                        "Calls to the application's hooks (connect, publish) and webhook POSTs (webhook), by outcome (allow, deny, accept, replace, reject, delivered, error).",
                    ),
                    &["hook", "outcome"],
                )
                .expect("valid"),
            ),
            hook_duration: reg(
                &r,
                prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "roomcast_hook_duration_seconds",
                        "Time a hook call took, answered or not.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["hook"],
                )
                .expect("valid"),
            ),
            webhook_events: reg(
                &r,
                IntCounter::new(
                    "roomcast_webhook_events_delivered_total",
                    "Webhook events this node delivered (answered 2xx).",
                )
                .expect("valid"),
            ),
            webhook_queue: reg(
                &r,
                IntGauge::new(
                    "roomcast_webhook_queue_length",
                    "Webhook events waiting for delivery, as the dispatching node last saw (0 elsewhere).",
                )
                .expect("valid"),
            ),
            webhook_leader: reg(
                &r,
                IntGauge::new(
                    "roomcast_webhook_leader",
                    "1 on the node that delivers webhooks.",
                )
                .expect("valid"),
            ),
            registry: r,
        };
        m.broker_up.set(1);
        for (vec, labels) in [
            (&m.connections_closed, &End::ALL.map(End::label)[..]),
            (&m.messages_received, &RECEIVED_TYPES[..]),
            (&m.messages_dropped, &DROPPED_REASONS[..]),
            (&m.recoveries, &RECOVERY_OUTCOMES[..]),
            (
                &m.messages_not_published,
                &["unavailable", "outcome_unknown"][..],
            ),
            (&m.handshakes_refused, &Refusal::LABELS[..]),
            (&m.requests_refused, &crate::gate::REFUSED_REASONS[..]),
        ] {
            for label in labels {
                vec.with_label_values(&[label]);
            }
        }
        for (hook, outcomes) in [
            ("connect", &["allow", "deny", "error"][..]),
            ("publish", &["accept", "replace", "reject", "error"][..]),
            ("webhook", &["delivered", "error"][..]),
        ] {
            m.hook_duration.with_label_values(&[hook]);
            for outcome in outcomes {
                m.hook_calls.with_label_values(&[hook, outcome]);
            }
        }
        m
    }

    /// Exports the backend's own counters, read live at each scrape. Called
    /// once per node (a second call for the same metrics is refused and
    /// logged).
    pub fn watch_backend(&self, stats: Arc<BackendStats>) {
        if let Err(e) = self
            .registry
            .register(Box::new(BackendCounters::new(stats)))
        {
            tracing::warn!(error = %e, "backend metrics already registered");
        }
    }

    /// Counts a publish that failed with `e`, and logs it: at most one
    /// warning per node every 10 s, as during a Redis outage every sender
    /// fails at once (each is told, and the counter has them all).
    pub fn not_published(&self, e: &roomcast_core::BackendError) {
        let outcome = if e.may_have_happened() {
            "outcome_unknown"
        } else {
            "unavailable"
        };
        self.messages_not_published
            .with_label_values(&[outcome])
            .inc();
        let now = Timestamp::now().as_micros();
        let last = self.not_published_logged.load(Ordering::Relaxed);
        if now - last >= 10_000_000
            && self
                .not_published_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, outcome, "message not published (further ones for 10 s only counted in roomcast_messages_not_published_total)");
        } else {
            tracing::debug!(error = %e, outcome, "message not published");
        }
    }

    /// Records the fan-out latency of a frame accepted at `published_at`.
    pub fn observe_fanout(&self, published_at: Timestamp) {
        let micros = Timestamp::now().as_micros() - published_at.as_micros();
        // Clocks of two nodes may disagree a little; never record negatives.
        self.fanout_latency.observe(micros.max(0) as f64 / 1e6);
    }

    /// Refreshes the gauges read at scrape time.
    pub fn sync_backend(&self, stats: &BackendStats) {
        self.broker_up
            .set(i64::from(stats.broker_up.load(Ordering::Acquire)));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Metrics {
    pub fn fanned_out(
        &self,
        _env: &Envelope,
        targeted: usize,
        delivered: usize,
        _started: std::time::Instant,
    ) {
        self.fanout_targeted.inc_by(targeted as u64);
        self.messages_delivered.inc_by(delivered as u64);
    }

    pub fn dropped_slow(&self, n: usize) {
        self.messages_dropped
            .with_label_values(&["slow_consumer"])
            .inc_by(n as u64);
    }
}

/// The backend's counters, exported as they stand at each scrape.
pub struct BackendCounters {
    stats: Arc<BackendStats>,
    /// Indices into [`BACKEND_COUNTERS`].
    exported: Vec<usize>,
    descs: Vec<Desc>,
}

type Read = fn(&BackendStats) -> &AtomicU64;

const BACKEND_COUNTERS: [(&str, &str, Read); 8] = [
    (
        "roomcast_history_rewinds_total",
        "Rooms whose Redis stream was found behind what this node had delivered (writes lost by a failover or restart); their clients were told to resync.",
        |s| &s.history_rewinds,
    ),
    (
        "roomcast_redis_primary_changes_total",
        "Times this node followed the Redis primary to a new address (Sentinel failovers seen).",
        |s| &s.redis_primary_changes,
    ),
    (
        "roomcast_broker_reconnects_total",
        "Times this node re-established its pub/sub connection.",
        |s| &s.broker_reconnects,
    ),
    (
        "roomcast_history_backfilled_total",
        "Messages fetched from history to fill a gap in this node's subscription.",
        |s| &s.history_backfilled,
    ),
    (
        "roomcast_broker_room_read_failures_total",
        "Reads of one room's stream by this node's pub/sub session that failed (each is retried for that room alone, a few times).",
        |s| &s.room_read_failures,
    ),
    (
        "roomcast_presence_sweeps_total",
        "Dead-node presence sweeps run by this process while leading.",
        |s| &s.presence_sweeps,
    ),
    (
        "roomcast_presence_swept_users_total",
        "Users announced left because their node died.",
        |s| &s.presence_swept_users,
    ),
    (
        "roomcast_presence_sweep_errors_total",
        "Dead-node presence sweeps that failed.",
        |s| &s.presence_sweep_errors,
    ),
];

impl BackendCounters {
    /// Every backend counter (an edge node).
    pub fn new(stats: Arc<BackendStats>) -> Self {
        Self::only(stats, |_| true)
    }

    /// Only the sweeper's counters (the presence service).
    pub fn sweeper(stats: Arc<BackendStats>) -> Self {
        Self::only(stats, |name| name.starts_with("roomcast_presence_"))
    }

    fn only(stats: Arc<BackendStats>, keep: impl Fn(&str) -> bool) -> Self {
        let exported: Vec<usize> = (0..BACKEND_COUNTERS.len())
            .filter(|i| keep(BACKEND_COUNTERS[*i].0))
            .collect();
        let descs = exported
            .iter()
            .map(|i| {
                let (name, help, _) = BACKEND_COUNTERS[*i];
                Desc::new(name.into(), help.into(), vec![], Default::default())
                    .expect("valid metric")
            })
            .collect();
        Self {
            stats,
            exported,
            descs,
        }
    }
}

impl std::fmt::Debug for BackendCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendCounters")
            .field("exported", &self.exported.len())
            .finish()
    }
}

impl Collector for BackendCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.exported
            .iter()
            .map(|i| &BACKEND_COUNTERS[*i])
            .flat_map(|(name, help, read)| {
                // A fresh counter per scrape, set once: nothing shared is
                // ever reset.
                let c = IntCounter::new(*name, *help).expect("valid metric");
                c.inc_by(read(&self.stats).load(Ordering::Relaxed));
                c.collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FrameRefusal;

    #[test]
    fn every_label_the_node_uses_is_exported_from_start_up() {
        let text = Metrics::new("n").render();
        for end in End::ALL {
            let sample = format!(
                "roomcast_connections_closed_total{{reason=\"{}\"}} 0",
                end.label()
            );
            assert!(text.contains(&sample), "{sample}");
        }
        for refusal in [
            FrameRefusal::Binary,
            FrameRefusal::RateLimited,
            FrameRefusal::TokenExpired,
            FrameRefusal::BadSince,
        ] {
            assert!(RECEIVED_TYPES.contains(&refusal.label()));
        }
        assert!(text.contains("roomcast_messages_dropped_total{reason=\"slow_consumer\"} 0"));
        assert!(text.contains("roomcast_presence_online_users 0"));
    }

    #[test]
    fn backend_counters_are_read_live_and_never_drop() {
        let m = Metrics::new("n");
        let stats = Arc::new(BackendStats::default());
        m.watch_backend(stats.clone());
        BackendStats::add(&stats.broker_reconnects, 3);
        let value = |text: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix("roomcast_broker_reconnects_total "))
                .and_then(|v| v.trim().parse().ok())
                .expect("sample")
        };
        // Scrapes from several threads at once while the counter grows:
        // each sees a value at least as high as before it started.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut last = 0;
                    for _ in 0..200 {
                        let v = value(&m.render());
                        assert!(v >= last && v >= 3, "{v} after {last}");
                        last = v;
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    BackendStats::add(&stats.broker_reconnects, 1);
                }
            });
        });
        assert_eq!(value(&m.render()), 203);
    }
}
