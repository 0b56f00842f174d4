//! The node's Prometheus metrics.
//!
//! Names follow Prometheus conventions and are part of the interface:
//! dashboards and alert rules elsewhere use them. Label values are bounded
//! sets (close reasons, frame types); never a room or user id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use roomcast_core::BackendStats;
use roomcast_core::envelope::Envelope;
use roomcast_protocol::Timestamp;

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
    pub messages_delivered: IntCounter,
    pub fanout_targeted: IntCounter,
    pub messages_dropped: IntCounterVec,
    pub fanout_latency: Histogram,
    pub publish_duration: Histogram,
    pub broker_up: IntGauge,
    pub broker_reconnects: IntCounter,
    pub history_backfilled: IntCounter,
    pub presence_sweeps: IntCounter,
    pub presence_swept_users: IntCounter,
    pub presence_sweep_errors: IntCounter,
    pub recoveries: IntCounterVec,
    pub handshakes_refused: IntCounterVec,
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
            broker_reconnects: counter(
                "roomcast_broker_reconnects_total",
                "Times this node re-established its pub/sub connection.",
            ),
            history_backfilled: counter(
                "roomcast_history_backfilled_total",
                "Messages fetched from history to fill a gap in this node's subscription.",
            ),
            presence_sweeps: counter(
                "roomcast_presence_sweeps_total",
                "Dead-node presence sweeps run by this process while leading.",
            ),
            presence_swept_users: counter(
                "roomcast_presence_swept_users_total",
                "Users announced left because their node died.",
            ),
            presence_sweep_errors: counter(
                "roomcast_presence_sweep_errors_total",
                "Dead-node presence sweeps that failed.",
            ),
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
            registry: r,
        };
        m.broker_up.set(1);
        m
    }

    /// Records the fan-out latency of a frame accepted at `published_at`.
    pub fn observe_fanout(&self, published_at: Timestamp) {
        let micros = Timestamp::now().as_micros() - published_at.as_micros();
        // Clocks of two nodes may disagree a little; never record negatives.
        self.fanout_latency.observe(micros.max(0) as f64 / 1e6);
    }

    /// Copies the backend's own counters into their metrics (at scrape time:
    /// the backend counts in plain atomics and knows no metrics crate).
    pub fn sync_backend(&self, stats: &BackendStats) {
        let set = |c: &IntCounter, v: &std::sync::atomic::AtomicU64| {
            c.reset();
            c.inc_by(BackendStats::get(v));
        };
        self.broker_up.set(i64::from(
            stats.broker_up.load(std::sync::atomic::Ordering::Acquire),
        ));
        set(&self.broker_reconnects, &stats.broker_reconnects);
        set(&self.history_backfilled, &stats.history_backfilled);
        set(&self.presence_sweeps, &stats.presence_sweeps);
        set(&self.presence_swept_users, &stats.presence_swept_users);
        set(&self.presence_sweep_errors, &stats.presence_sweep_errors);
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
