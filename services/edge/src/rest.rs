//! The REST API: users, rooms, joins, history, presence, server-side
//! publish, health, readiness and metrics. Shapes are the contract's
//! (`roomcast_protocol::rest`); errors are `{"detail": ...}`. Who may call
//! what is decided before a handler runs (`gate`, `access`); a handler only
//! applies what depends on the body (a user joins only as itself).

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use roomcast_core::broker::MessageDraft;
use roomcast_core::history::{HistoryQuery, Since};
use roomcast_protocol::rest::{
    CreateRoom, CreateUser, JoinResponse, PresencePage, PresenceResponse, PublishMessage,
    validate_name,
};
use roomcast_protocol::{MessageFrame, RoomId, UserId};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::access::Caller;
use crate::app::App;
use crate::error::ApiError;
use crate::{control, gate, ws};

/// Every route of the node.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/messages", post(control::send))
        .route("/users/{id}/disconnect", post(control::disconnect))
        .route("/users/{id}/status", get(control::status))
        .route("/users/{id}/subscribe", post(control::subscribe))
        .route("/users/{id}/unsubscribe", post(control::unsubscribe))
        .route("/rooms", post(create_room).get(list_rooms))
        .route("/rooms/{id}", get(get_room))
        .route("/rooms/{id}/join", post(join_room))
        .route("/rooms/{id}/messages", get(history).post(publish))
        .route("/rooms/{id}/presence", get(presence))
        .route("/", get(page))
        .route("/chat", get(page))
        .route("/client.js", get(client_js))
        .route("/session.js", get(session_js))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws::handshake::multiplexed))
        .route("/ws/{room_id}/{user_id}", get(ws::handshake::by_path))
        .route("/api/v1/chats/{room_id}/ws", get(ws::handshake::by_token))
        .fallback(|| async { ApiError::NotFound("Not Found") })
        // Outermost first: CORS, then the caller, its limits and the access
        // table, then the handler (see `gate`).
        .layer(middleware::from_fn_with_state(app.clone(), gate::admit))
        .layer(middleware::from_fn_with_state(app.clone(), gate::cors))
        .with_state(app)
}

/// Headers of a history page that a page script may read (exposed to
/// allowed origins): `X-Roomcast-Truncated: 1` when the byte bound ended the
/// page early, and with `since`, `X-Roomcast-Next-Since: <offset>` to read on.
pub const PAGE_HEADERS: &str = "x-roomcast-truncated, x-roomcast-next-since";

/// Only `/metrics`, for `METRICS_PORT`.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("Not Found") })
        .with_state(app)
}

/// Reads a JSON body: not JSON at all is 400, the wrong shape 422.
fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

fn name(field: &str, value: &str) -> Result<String, ApiError> {
    validate_name(field, value).map_err(ApiError::Unprocessable)
}

fn room_id(id: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(id).map_err(|_| ApiError::NotFound("Room not found"))
}

async fn existing_room(app: &App, id: &str) -> Result<RoomId, ApiError> {
    let id = room_id(id)?;
    match app.backend.store.get_room(&id).await? {
        Some(_) => Ok(id),
        None => Err(ApiError::NotFound("Room not found")),
    }
}

async fn create_user(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateUser = json_body(&body)?;
    let user = app
        .backend
        .store
        .create_user(&name("username", &req.username)?)
        .await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn list_users(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(Json(app.backend.store.list_users().await?).into_response())
}

async fn get_user(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = UserId::parse(&id).map_err(|_| ApiError::NotFound("User not found"))?;
    match app.backend.store.get_user(&id).await? {
        Some(u) => Ok(Json(u).into_response()),
        None => Err(ApiError::NotFound("User not found")),
    }
}

async fn create_room(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateRoom = json_body(&body)?;
    let room = app
        .backend
        .store
        .create_room(&name("name", &req.name)?)
        .await?;
    Ok((StatusCode::CREATED, Json(room)).into_response())
}

async fn list_rooms(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(Json(app.backend.store.list_rooms().await?).into_response())
}

async fn get_room(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match app.backend.store.get_room(&room_id(&id)?).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::NotFound("Room not found")),
    }
}

async fn join_room(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: roomcast_protocol::rest::JoinRoom = json_body(&body)?;
    app.access.may_act_as(&caller, &req.user_id)?;
    // A token's name wins over the body's.
    let token_name = match &caller {
        Caller::User(id) => id.username.clone(),
        _ => None,
    };
    let store = &app.backend.store;
    let room = room_id(&id)?;
    if store.get_room(&room).await?.is_none() {
        if !app.settings.join_auto_rooms() {
            return Err(ApiError::NotFound("Room not found"));
        }
        store.ensure_room(&room).await?;
    }
    if store.get_user(&req.user_id).await?.is_none() {
        if !app.settings.join_auto_users() {
            return Err(ApiError::NotFound("User not found"));
        }
        let username = match (token_name, &req.username) {
            (Some(t), _) => t,
            (None, Some(u)) => name("username", u)?,
            (None, None) => req.user_id.to_string(),
        };
        store.ensure_user(&req.user_id, &username).await?;
    }
    store.add_member(&room, &req.user_id).await?;
    Ok(Json(JoinResponse {
        room_id: room,
        user_id: req.user_id,
        joined: true,
    })
    .into_response())
}

/// A page size from the query (`default` when absent or empty): an integer
/// from 1 to 1000, the bound of every paged listing.
fn limit_param(raw: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match raw {
        None | Some("") => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=roomcast_core::history::MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::Unprocessable("limit: expected an integer from 1 to 1000".into())
            }),
    }
}

#[derive(Deserialize)]
struct HistoryParams {
    since: Option<String>,
    limit: Option<String>,
}

async fn history(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    params: Result<Query<HistoryParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::Unprocessable(e.body_text()))?;
    let room = existing_room(&app, &id).await?;
    let limit = limit_param(p.limit.as_deref(), 50)?;
    let since = match p.since.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Since::parse(s).map_err(ApiError::Unprocessable)?),
    };
    let query = HistoryQuery {
        since,
        limit,
        max_bytes: app.settings.history.max_page_bytes,
    };
    let page = app.backend.history.read(&room, query).await?;
    // The frames are already JSON text: join them into an array instead of
    // parsing each one back only to serialize it again.
    let mut body = String::from("[");
    for (i, m) in page.messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&m.to_frame_json());
    }
    body.push(']');
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if page.truncated {
        let h = resp.headers_mut();
        h.insert("x-roomcast-truncated", http::HeaderValue::from_static("1"));
        if since.is_some()
            && let Some(last) = page.messages.last()
        {
            h.insert(
                "x-roomcast-next-since",
                http::HeaderValue::from(last.offset),
            );
        }
    }
    Ok(resp)
}

#[derive(Deserialize)]
struct PresenceParams {
    limit: Option<String>,
    after: Option<String>,
}

/// Everyone online (the contract's shape), or with `limit` / `after`, one
/// page by user id with the count and the next page's `after`.
async fn presence(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    params: Result<Query<PresenceParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::Unprocessable(e.body_text()))?;
    let room = existing_room(&app, &id).await?;
    if p.limit.is_none() && p.after.is_none() {
        let users = app.backend.presence.list(&room).await?;
        return Ok(Json(PresenceResponse {
            room_id: room,
            users,
        })
        .into_response());
    }
    let limit = limit_param(p.limit.as_deref(), 100)?;
    let after = match p.after.as_deref() {
        None | Some("") => None,
        Some(a) => {
            Some(UserId::parse(a).map_err(|e| ApiError::Unprocessable(format!("after: {e}")))?)
        }
    };
    let (users, count) = app
        .backend
        .presence
        .page(&room, after.as_ref(), limit)
        .await?;
    let next_after = (users.len() == limit)
        .then(|| users.last().map(|u| u.user_id.clone()))
        .flatten();
    Ok(Json(PresencePage {
        room_id: room,
        users,
        count,
        next_after,
    })
    .into_response())
}

async fn publish(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Only the server key reaches here (the access table).
    let room = existing_room(&app, &id).await?;
    let req: PublishMessage = json_body(&body)?;
    if req.content.trim().is_empty() {
        return Err(ApiError::Unprocessable("content must not be empty".into()));
    }
    let max = app.settings.websocket.max_content_bytes;
    if req.content.len() > max {
        return Err(ApiError::Unprocessable(format!(
            "content is {} bytes; the limit is {max}",
            req.content.len()
        )));
    }
    let user_id = req
        .user_id
        .unwrap_or_else(|| UserId::parse("system").expect("valid id"));
    let username = match req.username {
        Some(u) => name("username", &u)?,
        None => user_id.to_string(),
    };
    let client_id = idempotency_key(&headers, req.client_id)?;
    let started = Instant::now();
    let span = app.telemetry.publish(room.as_str());
    let published = app
        .backend
        .broker
        .publish_message(MessageDraft {
            room,
            user_id,
            username,
            content: req.content,
            client_id,
            trace: span.traceparent(),
        })
        .await;
    span.end();
    let published = published.inspect_err(|e| app.metrics.not_published(e))?;
    app.metrics
        .publish_duration
        .observe(started.elapsed().as_secs_f64());
    if published.duplicate {
        app.metrics.messages_deduplicated.inc();
    } else {
        app.metrics.messages_published.inc();
    }
    let msg: MessageFrame = published.message;
    let body = msg.to_frame_json();
    Ok(Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("valid response"))
}

/// The publish's de-duplication key: the `Idempotency-Key` header, else the
/// body's `client_id`. A retry with the same key (same room and sender)
/// within the window returns the first result and stores nothing.
fn idempotency_key(
    headers: &HeaderMap,
    body_client_id: Option<String>,
) -> Result<Option<String>, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::Unprocessable("Idempotency-Key: expected ASCII".into()))?
                .trim()
                .to_owned(),
        ),
        None => body_client_id,
    };
    match key {
        Some(k) if k.is_empty() || k.len() > roomcast_protocol::MAX_CLIENT_ID_LEN => {
            Err(ApiError::Unprocessable(format!(
                "Idempotency-Key / client_id: expected 1 to {} bytes",
                roomcast_protocol::MAX_CLIENT_ID_LEN
            )))
        }
        k => Ok(k),
    }
}

/// The chat page and the client module, compiled into the binary so one
/// command starts a server with a UI.
const PAGE: &str = include_str!("../static/index.html");
const CLIENT_JS: &str = include_str!("../static/client.js");
const SESSION_JS: &str = include_str!("../static/session.js");

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn client_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CLIENT_JS,
    )
        .into_response()
}

async fn session_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SESSION_JS,
    )
        .into_response()
}

async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let (status, why) = if app.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !app.backend.broker.is_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unavailable")
    } else {
        (StatusCode::OK, "ready")
    };
    (
        status,
        Json(serde_json::json!({"status": why, "node_id": &*app.node_id})),
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.rooms_active.set(app.hub.rooms_active() as i64);
    app.metrics.sync_backend(&app.backend.stats);
    // Gauges may be set at scrape time (only counters must never go back);
    // a failed read keeps the last value and says so in the log.
    match app.backend.presence.online_count().await {
        Ok(n) => app.metrics.online_users.set(n as i64),
        Err(e) => tracing::warn!(error = %e, "cannot count online users for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
