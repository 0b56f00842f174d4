//! The presence service: watches edge nodes' leases in Redis and, when one
//! expires (the node was killed or partitioned), removes its connections
//! from presence and publishes `user_left` for every user with no
//! connection left elsewhere.
//!
//! Several replicas may run; a lock with expiry makes one lead. It also
//! serves `/health`, `/ready` (Redis reachable) and `/metrics`
//! (`roomcast_presence_sweeps_total`, `roomcast_presence_online_users`, ...).
//! The edges run the same sweeper by default and export the same figures;
//! this service is for deployments that turn the edges' sweeper off.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use roomcast_core::BackendStats;
use roomcast_core::presence::Presence;
use roomcast_edge::Settings;
use roomcast_edge::metrics::BackendCounters;
use roomcast_redis::presence::RedisPresence;
use roomcast_redis::{Redis, Timing};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use roomcast_edge::config::ConfigError;

/// Settings of the presence service: the edge's own, loaded and validated
/// the same way (`REDIS_URL` or `ROOMCAST__REDIS__URL`,
/// `ROOMCAST__REDIS__KEY_PREFIX`, `ROOMCAST__PRESENCE__*`, a TOML file), so a
/// deployment names each setting once for both. The names this service read
/// before (`ROOMCAST_KEY_PREFIX`, `PRESENCE_SWEEP_INTERVAL_MS`) still work.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: roomcast_redis::target::TargetSpec,
    pub key_prefix: String,
    pub timing: Timing,
    /// The webhook events the sweep records (those the edges record).
    pub events: roomcast_core::events::Recording,
    /// How the sweep announces leaves in big rooms (as the edges do).
    pub summary: roomcast_core::presence::Summary,
}

impl Options {
    /// From a settings file (optional) and the environment.
    pub fn load(
        file: Option<&std::path::Path>,
        env: &[(String, String)],
    ) -> Result<Options, ConfigError> {
        // This service serves no clients: the edges' rule that production
        // needs auth does not concern it (it reads the same settings, e.g.
        // the edges' ConfigMap, which says ENVIRONMENT=production).
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| k == "ALLOW_UNAUTHENTICATED") {
            env.push(("ALLOW_UNAUTHENTICATED".into(), "true".into()));
        }
        let settings = Settings::load(file, &env)?;
        Self::from_settings(&settings)
    }

    /// From the environment alone.
    pub fn from_env(env: &[(String, String)]) -> Result<Options, ConfigError> {
        Self::load(None, env)
    }

    pub fn from_settings(settings: &Settings) -> Result<Options, ConfigError> {
        let target = settings.redis_target().ok_or_else(|| ConfigError {
            name: "REDIS_URL (redis.url)".into(),
            problem: "required (or REDIS_SENTINELS): the Redis the edge nodes use".into(),
        })?;
        Ok(Options {
            target,
            key_prefix: settings.redis.key_prefix.clone(),
            timing: settings.presence_timing(),
            events: settings.webhook_recording(),
            summary: settings.presence_summary(),
        })
    }
}

struct Service {
    redis: Redis,
    presence: RedisPresence,
    registry: Registry,
    online: IntGauge,
}

/// Sweeps and serves `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<(), ConfigError> {
    let target =
        roomcast_redis::target::Target::new(opts.target.clone()).map_err(|e| ConfigError {
            name: "REDIS_URL / REDIS_SENTINELS".into(),
            problem: e.to_string(),
        })?;
    let target = Arc::new(target);
    let redis = Redis::on(target.clone(), &opts.key_prefix, 4)
        .with_recording(opts.events)
        .with_summary(opts.summary);
    let stats = Arc::new(BackendStats::default());
    let follow = tokio::spawn(roomcast_redis::target::watch(
        target,
        stats.clone(),
        shutdown.clone(),
    ));
    let registry = Registry::new();
    registry
        .register(Box::new(BackendCounters::sweeper(stats.clone())))
        .expect("unique metrics");
    let online = IntGauge::new(
        "roomcast_presence_online_users",
        "Users online cluster-wide (a user in two rooms counts twice).",
    )
    .expect("valid metric");
    registry.register(Box::new(online.clone())).expect("unique");
    let svc = Arc::new(Service {
        presence: RedisPresence::new(redis.clone()),
        redis: redis.clone(),
        registry,
        online,
    });
    let sweeper = tokio::spawn(roomcast_redis::liveness::run_sweeper(
        redis,
        stats,
        opts.timing,
        shutdown.clone(),
    ));
    tracing::info!(addr = ?listener.local_addr().ok(), "roomcast presence service listening");
    let app = Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(svc);
    let token = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "http server failed");
    }
    let _ = sweeper.await;
    let _ = follow.await;
    Ok(())
}

async fn ready(State(svc): State<Arc<Service>>) -> Response {
    let ok = svc
        .redis
        .timed(async {
            let (mut c, _) = svc.redis.connect().await?;
            roomcast_redis::redis_ping(&mut c).await
        })
        .await
        .is_ok();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({"status": if ok { "ready" } else { "redis unavailable" }})),
    )
        .into_response()
}

async fn metrics(State(svc): State<Arc<Service>>) -> Response {
    match svc.presence.online_count().await {
        Ok(n) => svc.online.set(n as i64),
        Err(e) => tracing::warn!(error = %e, "cannot count online users"),
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&svc.registry.gather(), &mut buf);
    ([("content-type", "text/plain; version=0.0.4")], buf).into_response()
}
