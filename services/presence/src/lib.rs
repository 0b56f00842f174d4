//! The presence service: watches edge nodes' leases in Redis and, when one
//! expires (the node was killed or partitioned), removes its connections
//! from presence and publishes `user_left` for every user with no
//! connection left elsewhere.
//!
//! Several replicas may run; a lock with expiry makes one lead. It also
//! serves `/health`, `/ready` (Redis reachable) and `/metrics`
//! (`roomcast_presence_sweeps_total`, `roomcast_presence_online_users`, ...).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, IntCounter, IntGauge, Registry, TextEncoder};
use roomcast_core::BackendStats;
use roomcast_redis::presence::RedisPresence;
use roomcast_redis::{Redis, Timing};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Settings of the presence service.
#[derive(Debug, Clone)]
pub struct Options {
    pub redis_url: String,
    pub key_prefix: String,
    pub timing: Timing,
}

/// A setting that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

impl Options {
    /// From the environment: `REDIS_URL` (required), `ROOMCAST_KEY_PREFIX`,
    /// `PRESENCE_SWEEP_INTERVAL_MS`.
    pub fn from_env(env: &[(String, String)]) -> Result<Options, ConfigError> {
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.trim().to_owned())
        };
        let redis_url = get("REDIS_URL")
            .filter(|u| !u.is_empty())
            .ok_or(ConfigError {
                name: "REDIS_URL",
                problem: "required: the Redis the edge nodes use".into(),
            })?;
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            return Err(ConfigError {
                name: "REDIS_URL",
                problem: "expected a redis:// or rediss:// URL".into(),
            });
        }
        let mut timing = Timing::default();
        if let Some(v) = get("PRESENCE_SWEEP_INTERVAL_MS") {
            let ms: u64 = v.parse().ok().filter(|ms| *ms > 0).ok_or(ConfigError {
                name: "PRESENCE_SWEEP_INTERVAL_MS",
                problem: format!("expected milliseconds above 0, got {v:?}"),
            })?;
            timing.sweep_every = Duration::from_millis(ms);
        }
        Ok(Options {
            redis_url,
            key_prefix: get("ROOMCAST_KEY_PREFIX").unwrap_or_else(|| "roomcast".into()),
            timing,
        })
    }
}

struct Service {
    redis: Redis,
    presence: RedisPresence,
    stats: Arc<BackendStats>,
    registry: Registry,
    sweeps: IntCounter,
    swept: IntCounter,
    online: IntGauge,
}

/// Sweeps and serves `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    opts: Options,
    shutdown: CancellationToken,
) -> Result<(), ConfigError> {
    let redis = Redis::new(&opts.redis_url, &opts.key_prefix, 4).map_err(|e| ConfigError {
        name: "REDIS_URL",
        problem: e.to_string(),
    })?;
    let registry = Registry::new();
    let counter = |n: &str, h: &str| {
        let c = IntCounter::new(n, h).expect("valid metric");
        registry.register(Box::new(c.clone())).expect("unique");
        c
    };
    let sweeps = counter(
        "roomcast_presence_sweeps_total",
        "Dead-node sweeps run while leading.",
    );
    let swept = counter(
        "roomcast_presence_swept_users_total",
        "Users announced left because their node died.",
    );
    let online = IntGauge::new(
        "roomcast_presence_online_users",
        "Users online, cluster-wide (per room).",
    )
    .expect("valid metric");
    registry.register(Box::new(online.clone())).expect("unique");
    let stats = Arc::new(BackendStats::default());
    let svc = Arc::new(Service {
        presence: RedisPresence::new(redis.clone()),
        redis: redis.clone(),
        stats: stats.clone(),
        registry,
        sweeps,
        swept,
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
    Ok(())
}

async fn ready(State(svc): State<Arc<Service>>) -> Response {
    let ok = svc
        .redis
        .timed(async {
            let mut c = svc.redis.checked_conn().await?;
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
    let set = |c: &IntCounter, v| {
        c.reset();
        c.inc_by(v);
    };
    set(&svc.sweeps, BackendStats::get(&svc.stats.presence_sweeps));
    set(
        &svc.swept,
        BackendStats::get(&svc.stats.presence_swept_users),
    );
    match svc.presence.online_count().await {
        Ok(n) => svc.online.set(n as i64),
        Err(e) => tracing::warn!(error = %e, "cannot count online users"),
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&svc.registry.gather(), &mut buf);
    ([("content-type", "text/plain; version=0.0.4")], buf).into_response()
}
