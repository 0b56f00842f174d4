//! The one error a backend call can end in.

/// A backend operation failed. Callers map it to `unavailable` (for a frame)
/// or 503 (for REST): the operation did not happen, nothing half-done is
/// visible to anyone.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The backend could not be reached or answered with an error.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with data this version cannot read.
    #[error("backend data corrupt: {0}")]
    Corrupt(String),
}
