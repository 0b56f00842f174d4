//! The state one node shares between its REST handlers and connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use roomcast_core::Backend;
use roomcast_core::envelope::Envelope;
use roomcast_core::hub::{Hub, HubObserver};
use roomcast_redis::{RedisOptions, RedisTasks};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::Access;
use crate::auth::{Authenticator, Origins};
use crate::config::{ConfigError, Settings};
use crate::limits::{ConnCounts, KeyedBuckets};
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

/// What a node is built from; tests build one on an in-memory backend.
#[derive(Debug, Clone)]
pub struct Deps {
    pub settings: Settings,
    pub node_id: String,
    pub backend: Backend,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub telemetry: Arc<Telemetry>,
}

/// What the hub reports once per envelope goes to metrics and traces.
#[derive(Debug)]
struct NodeObserver {
    metrics: Arc<Metrics>,
    telemetry: Arc<Telemetry>,
}

impl HubObserver for NodeObserver {
    fn fanned_out(
        &self,
        env: &Envelope,
        targeted: usize,
        delivered: usize,
        started: std::time::Instant,
    ) {
        self.metrics.fanned_out(env, targeted, delivered, started);
        self.telemetry.delivered(env, targeted, delivered, started);
    }

    fn dropped_slow(&self, n: usize) {
        self.metrics.dropped_slow(n);
    }
}

/// The node id, its metrics and traces, and the hub they observe.
struct Observed {
    node_id: String,
    metrics: Arc<Metrics>,
    telemetry: Arc<Telemetry>,
    hub: Arc<Hub>,
}

fn observed_hub(settings: &Settings) -> Result<Observed, ConfigError> {
    let node_id = node_id(settings);
    let metrics = Arc::new(Metrics::new(&node_id));
    let telemetry = Telemetry::from_env("roomcast-edge", &node_id)?;
    let hub = Arc::new(Hub::new(Arc::new(NodeObserver {
        metrics: metrics.clone(),
        telemetry: telemetry.clone(),
    })));
    Ok(Observed {
        node_id,
        metrics,
        telemetry,
        hub,
    })
}

impl Deps {
    /// The embedded single-node backend.
    pub fn memory(settings: Settings) -> Result<Deps, ConfigError> {
        let Observed {
            node_id,
            metrics,
            telemetry,
            hub,
        } = observed_hub(&settings)?;
        let limits = (settings.limits.max_users, settings.limits.max_rooms);
        let backend = Backend::memory(
            hub.clone(),
            &node_id,
            settings.history_options(),
            limits,
            settings.webhook_recording(),
        );
        Ok(Deps {
            settings,
            node_id,
            backend,
            hub,
            metrics,
            telemetry,
        })
    }

    /// The Redis backend at `redis.url`. Its background tasks (pub/sub
    /// session, lease, sweeper) run until `backend_shutdown` is cancelled,
    /// which the caller does after the node has drained.
    pub fn redis(
        settings: Settings,
        backend_shutdown: CancellationToken,
    ) -> Result<(Deps, RedisTasks), ConfigError> {
        let Observed {
            node_id,
            metrics,
            telemetry,
            hub,
        } = observed_hub(&settings)?;
        let target = settings.redis_target().ok_or_else(|| ConfigError {
            name: "REDIS_URL (redis.url)".into(),
            problem: "required for the Redis backend".into(),
        })?;
        let opts = RedisOptions {
            target,
            key_prefix: settings.redis.key_prefix.clone(),
            node_id: node_id.clone(),
            history: settings.history_options(),
            pool_size: settings.redis.pool_size,
            timing: settings.presence_timing(),
            lease: true,
            sweeper: settings.presence.sweeper,
            events: settings.webhook_recording(),
            summary: settings.presence_summary(),
            ack: settings.ack_replicas(),
        };
        let (backend, tasks) = roomcast_redis::start(&opts, hub.clone(), backend_shutdown)
            .map_err(|e| ConfigError {
                name: "REDIS_URL / REDIS_SENTINELS".into(),
                problem: e.to_string(),
            })?;
        Ok((
            Deps {
                settings,
                node_id,
                backend,
                hub,
                metrics,
                telemetry,
            },
            tasks,
        ))
    }
}

/// The configured node id, else the host name, else a random one.
pub fn node_id(settings: &Settings) -> String {
    if !settings.server.node_id.is_empty() {
        return settings.server.node_id.clone();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| roomcast_protocol::UserId::parse(h).is_ok());
    host.unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))
}

/// One node's shared state.
#[derive(Debug)]
pub struct App {
    pub settings: Settings,
    pub node_id: Arc<str>,
    pub backend: Backend,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub telemetry: Arc<Telemetry>,
    pub auth: Authenticator,
    pub access: Access,
    pub hooks: crate::hooks::Hooks,
    pub origins: Origins,
    /// Per-caller limits (see `limits`).
    pub rest_by_addr: KeyedBuckets<std::net::IpAddr>,
    pub rest_by_user: KeyedBuckets<roomcast_protocol::UserId>,
    pub frames_by_user: KeyedBuckets<roomcast_protocol::UserId>,
    pub conns_by_user: Arc<ConnCounts<roomcast_protocol::UserId>>,
    pub conns_by_addr: Arc<ConnCounts<std::net::IpAddr>>,
    pub trusted_proxies: Vec<crate::limits::Proxies>,
    pub ws_config: WebSocketConfig,
    /// Set on shutdown: `/ready` answers 503, new sockets are refused.
    draining: AtomicBool,
    /// Open (or being opened) WebSocket connections, for the node's maximum.
    open: AtomicUsize,
    next_conn: AtomicU64,
    /// Cancelled on shutdown; every connection watches it.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

impl App {
    pub fn new(deps: Deps, shutdown: CancellationToken) -> Result<Arc<App>, ConfigError> {
        let s = &deps.settings;
        deps.metrics.watch_backend(deps.backend.stats.clone());
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(s.websocket.read_buffer_bytes)
            .write_buffer_size(s.websocket.write_buffer_bytes)
            // Backpressure point of the socket itself: past this, writes
            // wait, and the write timeout / outbound queue take over.
            .max_write_buffer_size(
                s.websocket
                    .write_buffer_bytes
                    .max(s.websocket.max_frame_bytes)
                    * 2,
            )
            .max_message_size(Some(s.websocket.max_frame_bytes))
            .max_frame_size(Some(s.websocket.max_frame_bytes));
        let l = &s.limits;
        Ok(Arc::new(App {
            auth: Authenticator::from_settings(s)?,
            access: Access::from_settings(s),
            hooks: crate::hooks::Hooks::from_settings(s),
            origins: Origins::from_settings(s),
            rest_by_addr: KeyedBuckets::new(l.rest_rate_per_sec, l.rest_burst),
            rest_by_user: KeyedBuckets::new(l.rest_rate_per_sec, l.rest_burst),
            frames_by_user: KeyedBuckets::new(l.user_frame_rate_per_sec, l.user_frame_burst),
            conns_by_user: ConnCounts::new(l.connections_per_user),
            conns_by_addr: ConnCounts::new(l.connections_per_address),
            // Validated at load: every entry parses.
            trusted_proxies: l
                .trusted_proxies
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            ws_config,
            node_id: deps.node_id.as_str().into(),
            settings: deps.settings,
            backend: deps.backend,
            hub: deps.hub,
            metrics: deps.metrics,
            telemetry: deps.telemetry,
            draining: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            shutdown,
            tasks: TaskTracker::new(),
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) || self.shutdown.is_cancelled()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The client address of a request from `peer`.
    pub fn client_addr(
        &self,
        peer: std::net::IpAddr,
        headers: &http::HeaderMap,
    ) -> std::net::IpAddr {
        crate::limits::client_addr(peer, headers, &self.trusted_proxies)
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes one of the node's connection slots, or `None` at the maximum.
    /// The slot is given back when the returned guard drops.
    pub fn reserve_slot(self: &Arc<Self>) -> Option<SlotGuard> {
        let max = self.settings.server.max_connections;
        let prev = self.open.fetch_add(1, Ordering::AcqRel);
        if prev >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SlotGuard { app: self.clone() })
    }
}

/// One reserved connection slot.
#[derive(Debug)]
pub struct SlotGuard {
    app: Arc<App>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.app.open.fetch_sub(1, Ordering::AcqRel);
    }
}
