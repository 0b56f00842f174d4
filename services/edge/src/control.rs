//! The application's control of users, cluster-wide: a frame to all of a
//! user's multiplexed sockets (`POST /users/{id}/messages`), whether a user
//! is online (`GET /users/{id}/status`), closing all of a user's sockets
//! (`POST /users/{id}/disconnect`), and subscribing or unsubscribing all of
//! its multiplexed sockets (`POST /users/{id}/subscribe`, `unsubscribe`). Who may call them is the access
//! table's (the server key; status also any user with auth on).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use roomcast_protocol::{ServerFrame, Timestamp, UserId, UserMessageFrame};
use serde::Deserialize;

use crate::app::App;
use crate::error::ApiError;

fn user_id(id: &str) -> Result<UserId, ApiError> {
    UserId::parse(id).map_err(|_| ApiError::NotFound("User not found"))
}

fn body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToUser {
    /// Any JSON the application wants the user's clients to get.
    data: serde_json::Value,
}

/// `POST /users/{id}/messages` `{"data": ...}`: 202, sent to every
/// multiplexed socket of the user on every node, as a `user_message`
/// frame. Not stored: a user with no such socket gets nothing (check
/// `status` first to decide on a push notification instead).
pub async fn send(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let user = user_id(&id)?;
    let req: ToUser = body(&raw)?;
    let frame = ServerFrame::UserMessage(UserMessageFrame {
        user_id: user.clone(),
        data: req.data,
        timestamp: Timestamp::now(),
    })
    .to_json();
    let max = app.settings.websocket.max_frame_bytes;
    if frame.len() > max {
        return Err(ApiError::Unprocessable(format!(
            "the frame would be {} bytes; the limit is {max}",
            frame.len()
        )));
    }
    app.backend.broker.send_to_user(&user, frame.into()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"user_id": user})),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    /// Whether the clients may reconnect (close 4010) or not (4009).
    #[serde(default)]
    reconnect: bool,
}

/// `POST /users/{id}/disconnect` `{"reconnect": false}`: 202, every socket
/// of the user on every node closes, 4009 (do not reconnect) or 4010.
pub async fn disconnect(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let user = user_id(&id)?;
    let req: Disconnect = if raw.iter().all(u8::is_ascii_whitespace) {
        Disconnect::default()
    } else {
        body(&raw)?
    };
    app.backend
        .broker
        .disconnect_user(&user, req.reconnect)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"user_id": user, "reconnect": req.reconnect})),
    )
        .into_response())
}

/// `GET /users/{id}/status`: `{"user_id", "online"}`: online means in
/// some room's presence, on any node.
pub async fn status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = user_id(&id)?;
    let online = app.backend.presence.is_online(&user).await?;
    Ok(Json(serde_json::json!({"user_id": user, "online": online})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomBody {
    room_id: roomcast_protocol::RoomId,
}

/// `POST /users/{id}/subscribe` `{"room_id"}`: 202; every multiplexed socket
/// of the user, on every node, subscribes to the room (as if it had asked,
/// without the token's room checks: the application decides). Sockets
/// opened later do not: the application's own state says which rooms a
/// reconnecting client subscribes to.
pub async fn subscribe(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    control(app, &id, &raw, true).await
}

/// `POST /users/{id}/unsubscribe` `{"room_id"}`: 202; the reverse.
pub async fn unsubscribe(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    control(app, &id, &raw, false).await
}

async fn control(app: Arc<App>, id: &str, raw: &Bytes, join: bool) -> Result<Response, ApiError> {
    use roomcast_core::hub::Control;
    let user = user_id(id)?;
    let RoomBody { room_id } = body(raw)?;
    let request = if join {
        Control::Subscribe(room_id.clone())
    } else {
        Control::Unsubscribe(room_id.clone())
    };
    app.backend.broker.control_user(&user, request).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"user_id": user, "room_id": room_id})),
    )
        .into_response())
}
