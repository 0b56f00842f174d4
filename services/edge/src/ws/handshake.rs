//! The WebSocket handshake: checks before the upgrade, admission, and the
//! hand-over to the connection task.
//!
//! Capacity, draining and a backend that cannot answer are refused with an
//! HTTP status before the upgrade (nothing to say to a socket yet). Every
//! refusal a frontend must be able to tell apart (4001, 4003, 4004) is sent
//! as a close code right after the upgrade, because browsers hide the HTTP
//! status of a failed handshake from scripts.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use hyper_util::rt::TokioIo;
use roomcast_core::store::{AdmitPolicy, Admitted};
use roomcast_protocol::rest::validate_name;
use roomcast_protocol::{PresenceUser, RoomId, UserId};
use serde::Deserialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::app::App;
use crate::auth::{AuthError, find_token};
use crate::error::{ApiError, Refusal};
use crate::hooks::{ConnectRequest, ConnectVerdict};
use crate::limits::Peer;
use crate::ws::close;
use crate::ws::conn::{self, Admission};

/// The socket's query string.
#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    username: Option<String>,
    since: Option<String>,
    /// Only for the token route with auth off (development).
    user_id: Option<String>,
}

impl WsQuery {
    /// The raw `since` parameter.
    pub fn since(&self) -> Option<&str> {
        self.since.as_deref()
    }
}

/// `GET /ws/{room_id}/{user_id}`
pub async fn by_path(
    State(app): State<Arc<App>>,
    Path((room, user)): Path<(String, String)>,
    query: Result<Query<WsQuery>, QueryRejection>,
    req: Request,
) -> Response {
    handshake(app, Some(room), Some(user), query, req).await
}

/// `GET /ws?token=` (or `?user_id=&username=` with auth off): a
/// multiplexed socket, in no room until it subscribes.
pub async fn multiplexed(
    State(app): State<Arc<App>>,
    query: Result<Query<WsQuery>, QueryRejection>,
    req: Request,
) -> Response {
    handshake(app, None, None, query, req).await
}

/// `GET /api/v1/chats/{room_id}/ws?token=`: the user is the token's subject.
pub async fn by_token(
    State(app): State<Arc<App>>,
    Path(room): Path<String>,
    query: Result<Query<WsQuery>, QueryRejection>,
    req: Request,
) -> Response {
    handshake(app, Some(room), None, query, req).await
}

/// The client's `Sec-WebSocket-Key` if this is a version-13 upgrade request.
fn upgrade_key(h: &HeaderMap) -> Option<&str> {
    let has = |name, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return None;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return None;
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
}

fn unavailable(app: &App, reason: &'static str, detail: &'static str) -> Response {
    app.metrics
        .handshakes_refused
        .with_label_values(&[reason])
        .inc();
    ApiError::Unavailable(detail.into()).into_response()
}

async fn handshake(
    app: Arc<App>,
    room: Option<String>,
    url_user: Option<String>,
    query: Result<Query<WsQuery>, QueryRejection>,
    mut req: Request,
) -> Response {
    let Some(key) = upgrade_key(req.headers()).map(|k| derive_accept_key(k.as_bytes())) else {
        return ApiError::UpgradeRequired("expected a WebSocket upgrade (version 13)")
            .into_response();
    };
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return ApiError::BadRequest(e.body_text()).into_response(),
    };
    if app.is_draining() {
        return unavailable(&app, "draining", "node is draining, connect to another");
    }
    // Per client address, before any work: a caller opening sockets in a
    // loop is stopped here (HTTP 429), whoever it claims to be.
    let client = req
        .extensions()
        .get::<Peer>()
        .map(|p| app.client_addr(p.0.ip(), req.headers()));
    let addr_seat = match client {
        Some(addr) => match app.conns_by_addr.enter(addr) {
            Some(seat) => Some(seat),
            None => {
                app.metrics
                    .handshakes_refused
                    .with_label_values(&["address_limit"])
                    .inc();
                return ApiError::TooManyRequests(
                    "too many connections from this address".into(),
                    1,
                )
                .into_response();
            }
        },
        None => None,
    };
    let Some(slot) = app.reserve_slot() else {
        return unavailable(&app, "capacity", "node at connection capacity");
    };
    let verdict = match admit(
        &app,
        room.as_deref(),
        url_user,
        &query,
        req.headers(),
        client,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "backend unavailable during handshake");
            return unavailable(&app, "backend", "backend unavailable, try again");
        }
    };
    // A refused socket holds no slot: it is closed right after the upgrade,
    // and its close handshake (which may wait on the client) must not keep
    // others out. Released here, before the 101 goes out.
    let verdict = match verdict {
        Ok(admission) => Ok((admission, slot, addr_seat)),
        Err(refusal) => {
            drop((slot, addr_seat));
            Err(refusal)
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_app = app.clone();
    app.tasks.spawn(async move {
        let deadline = Duration::from_millis(task_app.settings.server.handshake_timeout_ms);
        let upgraded = match tokio::time::timeout(deadline, on_upgrade).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => return tracing::debug!(error = %e, "upgrade failed"),
            Err(_) => return tracing::debug!("upgrade timed out"),
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(task_app.ws_config),
        )
        .await;
        match verdict {
            // The connection gets a task of its own: this one would keep
            // the verdict and the upgrade's state (~0.5 KiB) beside it for
            // the socket's whole life (measured with -Zprint-type-sizes).
            Ok((mut admission, slot, addr_seat)) => {
                admission.seats.1 = addr_seat;
                let tasks = task_app.tasks.clone();
                tasks.spawn(conn::run(task_app, ws, admission, slot));
            }
            Err(refusal) => close::refuse(task_app, ws, refusal).await,
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .body(Body::empty())
        .expect("valid response")
}

/// Decides who connects to which room (`None`: a multiplexed socket, in no
/// room yet). The outer error is a backend failure (HTTP 503), the inner
/// one a refusal the client must see.
async fn admit(
    app: &App,
    room: Option<&str>,
    url_user: Option<String>,
    q: &WsQuery,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
) -> Result<Result<Admission, Refusal>, roomcast_core::BackendError> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !app.origins.allows(origin, host) {
        return Ok(Err(Refusal::Forbidden("origin not allowed")));
    }
    let identity = if app.auth.enabled() {
        match app.auth.verify(find_token(q.token.as_deref(), headers)) {
            Ok(id) => Some(id),
            Err(e) => return Ok(Err(e.into())),
        }
    } else {
        None
    };
    let user = match (url_user, &identity) {
        (Some(u), Some(id)) if u != id.user_id.as_str() => {
            return Ok(Err(Refusal::Forbidden(
                "user in URL differs from the token's subject",
            )));
        }
        (Some(u), _) => u,
        (None, Some(id)) => id.user_id.to_string(),
        (None, None) => match &q.user_id {
            Some(u) => u.clone(),
            None => return Ok(Err(Refusal::Unauthorized(AuthError::Missing))),
        },
    };
    let Ok(user_id) = UserId::parse(&user) else {
        return Ok(Err(Refusal::NotFound("user not found")));
    };
    let room_id = match room.map(RoomId::parse) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(_)) => return Ok(Err(Refusal::NotFound("room not found"))),
    };
    if let (Some(room_id), Some(id)) = (&room_id, &identity)
        && !id.may_join(room_id)
    {
        return Ok(Err(Refusal::Forbidden("room not allowed by the token")));
    }
    // With a token, the token says who this is: `?username=` counts only
    // without auth.
    let query_name = q
        .username
        .as_deref()
        .filter(|_| identity.is_none())
        .and_then(|n| validate_name("username", n).ok());
    let token_name = identity.as_ref().and_then(|id| id.username.clone());
    let Some(user_seat) = app.conns_by_user.enter(user_id.clone()) else {
        return Ok(Err(Refusal::TooManyConnections));
    };
    // The application's connect hook, if any, has the last word (and may
    // name the user, and the rooms it may be in).
    let hook_req = ConnectRequest {
        room_id: room_id.as_ref().map(RoomId::as_str),
        user_id: user_id.as_str(),
        username: token_name.as_deref().or(query_name.as_deref()),
        claims: identity.as_ref().map(|id| &id.claims),
        node_id: &app.node_id,
        client_addr: client.map(|c| c.to_string()),
    };
    let (hook_name, hook_rooms) = match app.hooks.on_connect(&app.metrics, &hook_req).await {
        None => (None, None),
        Some(Ok(ConnectVerdict::Allow { username, rooms })) => (
            username.and_then(|n| validate_name("username", &n).ok()),
            rooms,
        ),
        Some(Ok(ConnectVerdict::Deny { code, reason })) => {
            return Ok(Err(Refusal::HookDenied(code, reason)));
        }
        Some(Err(_)) => return Ok(Err(Refusal::HookFailed)),
    };
    let token_name = hook_name.or(token_name);
    // A valid token vouches for its subject: the issuer's users need not be
    // created here first.
    let create_user_as = (identity.is_some() || app.settings.join_auto_users()).then(|| {
        token_name
            .clone()
            .or_else(|| query_name.clone())
            .unwrap_or_else(|| user_id.to_string())
    });
    let stored_name = match &room_id {
        Some(room_id) => {
            let policy = AdmitPolicy {
                create_room: app.settings.websocket_auto_rooms(),
                create_user_as,
            };
            match app.backend.store.admit(room_id, &user_id, &policy).await? {
                Admitted::Member(user) => user.username,
                Admitted::NoRoom => return Ok(Err(Refusal::NotFound("room not found"))),
                Admitted::NoUser => return Ok(Err(Refusal::NotFound("user not found"))),
            }
        }
        None => match create_user_as {
            Some(name) => {
                app.backend
                    .store
                    .ensure_user(&user_id, &name)
                    .await?
                    .username
            }
            None => match app.backend.store.get_user(&user_id).await? {
                Some(user) => user.username,
                None => return Ok(Err(Refusal::NotFound("user not found"))),
            },
        },
    };
    Ok(Ok(Admission {
        room: room_id,
        user: PresenceUser {
            user_id,
            username: token_name.or(query_name).unwrap_or(stored_name),
        },
        since: q.since.clone().filter(|s| !s.is_empty()),
        token_expires_at: identity.as_ref().and_then(|id| id.expires_at),
        token_rooms: identity.and_then(|id| id.rooms),
        hook_rooms,
        seats: (Some(user_seat), None),
    }))
}
