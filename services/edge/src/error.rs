//! Every way a request or a connection can be refused, and the one place
//! that maps each to what the client sees (HTTP status and `detail`, or a
//! WebSocket close code).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use roomcast_core::BackendError;
use roomcast_protocol::CloseCode;
use roomcast_protocol::rest::ErrorBody;

use crate::auth::AuthError;

/// A refused REST call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(&'static str),
    /// The body is not JSON at all.
    #[error("{0}")]
    BadRequest(String),
    /// JSON of the wrong shape, or values out of range.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Unavailable(String),
    /// Not a WebSocket handshake where one is required.
    #[error("{0}")]
    UpgradeRequired(&'static str),
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        tracing::warn!(error = %e, "backend call failed");
        ApiError::Unavailable("backend unavailable, try again".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                detail: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// A WebSocket refused after the upgrade, so that a browser client can read
/// the close code (a refused HTTP handshake shows to scripts only as 1006).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(&'static str),
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("{0}")]
    Forbidden(&'static str),
}

impl Refusal {
    pub fn close_code(&self) -> CloseCode {
        match self {
            Refusal::NotFound(_) => CloseCode::NotFound,
            Refusal::Unauthorized(_) => CloseCode::Unauthorized,
            Refusal::Forbidden(_) => CloseCode::Forbidden,
        }
    }

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NotFound(_) => "not_found",
            Refusal::Unauthorized(_) => "auth",
            Refusal::Forbidden(_) => "forbidden",
        }
    }
}
