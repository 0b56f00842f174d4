//! REST request and response bodies.
//!
//! Errors are `{"detail": "..."}` as the seeds' FastAPI backends return them.
//! Request bodies tolerate unknown fields (frontends send extras) but not
//! wrong types.

use serde::{Deserialize, Serialize};

use crate::{PresenceUser, RoomId, Timestamp, UserId};

/// The longest username or room name accepted, in characters.
pub const MAX_NAME_LEN: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreateUser {
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreateRoom {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JoinRoom {
    pub user_id: UserId,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub joined: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PublishMessage {
    pub content: String,
    #[serde(default)]
    pub user_id: Option<UserId>,
    #[serde(default)]
    pub username: Option<String>,
    /// The caller's id for this message (as a socket's `client_id`); the
    /// `Idempotency-Key` header takes precedence.
    #[serde(default)]
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceResponse {
    pub room_id: RoomId,
    pub users: Vec<PresenceUser>,
}

/// One page of a room's presence (`GET /rooms/{id}/presence?limit=&after=`),
/// by user id: `next_after` is the `after` of the next page, `null` on the
/// last one; `count` is how many are online in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresencePage {
    pub room_id: RoomId,
    pub users: Vec<PresenceUser>,
    pub count: u64,
    pub next_after: Option<UserId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub detail: String,
}

/// Zero-width and bidirectional formatting characters: they make one name
/// look like another (or reverse the text around it) where it is shown.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// Checks a username or room name: trimmed, 1 to [`MAX_NAME_LEN`] characters,
/// no control characters, no invisible or text-direction formatting
/// characters. Returns the trimmed name.
pub fn validate_name(field: &str, value: &str) -> Result<String, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if v.chars().count() > MAX_NAME_LEN {
        return Err(format!("{field} is longer than {MAX_NAME_LEN} characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    if v.chars().any(is_invisible_format) {
        return Err(format!(
            "{field} must not contain invisible or text-direction characters"
        ));
    }
    Ok(v.to_owned())
}
