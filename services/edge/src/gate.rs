//! What every REST request passes before its handler, in order: CORS (a
//! cross-site request that would change state, from an origin that is not
//! allowed, is refused here and nothing runs), who the caller is, the
//! caller's rate limits (per client address and per user; the application
//! backend is exempt), and the access table ([`crate::access`]). A refusal
//! is counted in `roomcast_requests_refused_total{reason}`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Method, StatusCode, header};

use crate::access::{Caller, Op};
use crate::app::App;
use crate::error::ApiError;
use crate::limits::Peer;

/// `reason` values of `roomcast_requests_refused_total`.
pub const REFUSED_REASONS: [&str; 4] = ["unauthorized", "forbidden", "rate_limited", "cross_site"];

fn refuse(app: &App, reason: &'static str, error: ApiError) -> Response {
    app.metrics
        .requests_refused
        .with_label_values(&[reason])
        .inc();
    error.into_response()
}

/// Whether a method can change state (a "simple" cross-site form post or
/// `text/plain` fetch reaches the handler before any preflight would).
fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// CORS for the allowed origins (`FRONTEND_URL`; see `auth::Origins`),
/// credentials allowed. A disallowed origin gets no CORS headers, so the
/// browser withholds the response; and its state-changing requests are
/// refused with 403 before the handler runs.
pub async fn cors(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let allowed = app.origins.allows(
        origin.as_ref().and_then(|o| o.to_str().ok()),
        host.as_deref(),
    );
    if !allowed && unsafe_method(req.method()) {
        return refuse(
            &app,
            "cross_site",
            ApiError::Forbidden("origin not allowed".into()),
        );
    }
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let request_headers = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned();
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let (Some(origin), true) = (origin, allowed) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(crate::rest::PAGE_HEADERS),
        );
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                request_headers.unwrap_or_else(|| {
                    HeaderValue::from_static("authorization, content-type, idempotency-key")
                }),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
    }
    resp
}

/// The `token` query parameter, if any (tokens may come as for sockets).
fn query_token(req: &Request) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| v.to_owned())
    })
}

/// Identifies the caller, applies its limits and the access table, and
/// hands the [`Caller`] to the handler (as a request extension).
pub async fn admit(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let op = Op::of(req.method(), &path);
    if matches!(op, Op::Public | Op::Socket | Op::Unknown) {
        // Probes, the page, and sockets (admitted by their own handshake).
        return next.run(req).await;
    }
    if op == Op::Metrics {
        // Scrapers send no credentials; only where it is served matters.
        return match app.access.decide(&Caller::Anonymous, op) {
            Ok(()) => next.run(req).await,
            Err(denied) => denied.error.into_response(),
        };
    }
    let token = query_token(&req);
    let caller = match app
        .access
        .identify(&app.auth, req.headers(), token.as_deref())
    {
        Ok(c) => c,
        Err(e) => return refuse(&app, "unauthorized", e),
    };
    if !matches!(caller, Caller::Server) {
        let now = Instant::now();
        let peer = req.extensions().get::<Peer>().map(|p| p.0.ip());
        if let Some(peer) = peer {
            let addr = app.client_addr(peer, req.headers());
            if let Err(wait) = app.rest_by_addr.take(&addr, now) {
                return refuse(&app, "rate_limited", too_many(wait));
            }
        }
        if let Caller::User(id) = &caller
            && let Err(wait) = app.rest_by_user.take(&id.user_id, now)
        {
            return refuse(&app, "rate_limited", too_many(wait));
        }
    }
    // (`/metrics`, the one refusal not counted, took its own path above.)
    if let Err(denied) = app.access.decide(&caller, op) {
        tracing::debug!(caller = denied.caller, %path, reason = denied.reason, "request refused");
        return refuse(&app, denied.reason, denied.error);
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn too_many(wait: u64) -> ApiError {
    ApiError::TooManyRequests("too many requests; slow down".into(), wait)
}
