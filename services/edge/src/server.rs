//! The accept loop and the drain.
//!
//! hyper 1 serves each TCP connection (HTTP/1.1 with upgrades, a deadline
//! for the request head, a cap on its size). On shutdown the node drains:
//! `/ready` turns 503, the listener closes, every WebSocket gets 1012 so its
//! client reconnects elsewhere, in-flight HTTP requests finish, and all of it
//! is bounded by the grace period.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::app::{App, Deps};
use crate::config::ConfigError;
use crate::rest;

/// Serves `listener` until `shutdown` is cancelled, then drains.
pub async fn run(
    listener: TcpListener,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<(), ConfigError> {
    let app = App::new(deps, shutdown.clone())?;
    if app.settings.is_production() && app.origins.is_open() {
        tracing::warn!(
            "auth.allow_any_origin is on: any origin may open sockets and call the API with credentials"
        );
    }
    if !app.auth.enabled() {
        tracing::warn!(
            "AUTH IS OFF: no JWT_SECRET or JWT_PUBLIC_KEY_FILE, so anyone may connect as any user and call every route (fine for development; production refuses this unless ALLOW_UNAUTHENTICATED=true)"
        );
    }
    tracing::info!(
        node = %app.node_id,
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        backend = app.backend.broker.kind(),
        auth = app.auth.enabled(),
        "roomcast edge listening"
    );
    // Webhooks keep flowing through the drain (its connections' events are
    // events too) and get one last pass after it; so do big rooms'
    // coalesced presence diffs.
    let after_drain = CancellationToken::new();
    let diffs = tokio::spawn(flush_presence_diffs(app.clone(), after_drain.clone()));
    let webhooks = crate::webhooks::Dispatcher::new(
        &app.settings,
        app.backend.events.clone(),
        &app.node_id,
        app.metrics.clone(),
    )
    .map(|d| tokio::spawn(d.run(after_drain.clone())));
    let router = rest::router(app.clone());
    if let Some(port) = app.settings.server.metrics_port {
        let addr = format!("{}:{port}", app.settings.server.host);
        let metrics = TcpListener::bind(&addr).await.map_err(|e| ConfigError {
            name: "METRICS_PORT (server.metrics_port)".into(),
            problem: format!("cannot listen on {addr}: {e}"),
        })?;
        let router = rest::metrics_router(app.clone());
        let token = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(metrics, router)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            app.settings.server.handshake_timeout_ms,
        ))
        .max_buf_size(app.settings.server.max_header_bytes.max(8192));
    let write_deadline = Duration::from_millis(app.settings.server.write_deadline_ms);
    // HTTP connections (not the upgraded sockets, which `app.tasks` holds).
    let http_conns = TaskTracker::new();

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Every request learns its TCP peer (for per-address limits).
                let service = router.clone().map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(crate::limits::Peer(peer));
                    req
                });
                let stream = crate::deadline::WriteDeadline::new(stream, write_deadline);
                let conn = http
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .with_upgrades();
                let shutdown = shutdown.clone();
                http_conns.spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        _ = shutdown.cancelled() => {
                            // Finish the request in flight, take no more.
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                });
            }
        }
    }

    app.start_draining();
    drop(listener);
    let grace = Duration::from_millis(app.settings.server.shutdown_grace_ms);
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
    app.tasks.close();
    http_conns.close();
    let drained = tokio::time::timeout(grace, async {
        tokio::join!(http_conns.wait(), app.tasks.wait());
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("grace period over; exiting with connections still open"),
    }
    after_drain.cancel();
    if let Some(task) = webhooks {
        let _ = task.await;
    }
    let _ = diffs.await;
    Ok(())
}

/// Sends summarised rooms' coalesced joins and leaves every
/// `presence.diff_interval_ms` (see `roomcast_core::hub::Hub::flush_presence`),
/// and once more when `stop` is cancelled.
async fn flush_presence_diffs(app: std::sync::Arc<App>, stop: CancellationToken) {
    let every = Duration::from_millis(app.settings.presence.diff_interval_ms);
    let max_users = app.settings.presence.diff_max;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        app.hub.flush_presence(max_users);
    }
    app.hub.flush_presence(max_users);
}
