//! The one error a backend call can end in.
//!
//! Two kinds of failure must never be confused: one where the backend
//! definitely did nothing ([`BackendError::Unavailable`]: it could not be
//! reached, or it answered with a refusal), and one where the request may
//! have been carried out without the node hearing back
//! ([`BackendError::Indeterminate`]: a timeout, or the connection broke
//! after the request was written). Telling a client "nothing was stored"
//! after a timeout is how retries turn into duplicates.

/// A backend operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or refused the operation: it did
    /// not happen, nothing half-done is visible to anyone.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// No answer in time, or the connection broke while the request was in
    /// flight: the operation may or may not have happened. A publish retried
    /// with the same `client_id` is safe (publishing is idempotent).
    #[error("backend outcome unknown: {0}")]
    Indeterminate(String),
    /// A bounded store is full (the embedded backend's user or room limit):
    /// nothing was created.
    #[error("{0}")]
    Full(String),
    /// The backend answered with data this version cannot read.
    #[error("backend data corrupt: {0}")]
    Corrupt(String),
}

impl BackendError {
    /// Whether the operation may have happened despite the error.
    pub fn may_have_happened(&self) -> bool {
        matches!(self, BackendError::Indeterminate(_))
    }
}
