//! Room and user identifiers, validated where they enter.
//!
//! Ids arrive in URL path segments, query strings, JWT claims and JSON
//! bodies, and later become parts of storage keys and pub/sub channel names.
//! So an id is accepted only if it is 1 to [`MAX_ID_LEN`] characters of
//! `A-Z a-z 0-9 - _ .` (UUIDs fit). That excludes every character with a
//! meaning to a key scheme (`:`, `{`, `}`, `*`, `?`, `[`, `/`, white space,
//! control characters), so a crafted id cannot name another room's keys.
//!
//! Both types hold an `Arc<str>`: they are cloned into every connection and
//! envelope, and a clone must not allocate.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is longer than {MAX_ID_LEN} characters")]
    TooLong,
    #[error("id may contain only A-Z, a-z, 0-9, '-', '_' and '.'")]
    BadChar,
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` as an id.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                validate(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// A fresh random id (a UUID v4), for objects the server creates.
            pub fn random() -> Self {
                Self(Arc::from(uuid::Uuid::new_v4().to_string()))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A room's id: a UUID for rooms made over REST, or any valid id for
    /// rooms auto-created on connect.
    RoomId
);
id_type!(
    /// A user's id: a UUID for users made over REST, the token's `sub` when
    /// auth is on, or any valid id for auto-created users.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_uuids_and_safe_names() {
        assert!(RoomId::parse("3f2504e0-4f89-11d3-9a0c-0305e82c3301").is_ok());
        assert!(RoomId::parse("general.chat_1-x").is_ok());
        assert!(RoomId::parse(&"a".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn rejects_key_syntax_and_oversize() {
        for bad in ["", "a:b", "room{1}", "*", "a b", "a/b", "é", "a\nb", "x?"] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            UserId::parse(&"a".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong)
        );
    }

    #[test]
    fn json_rejects_invalid_ids() {
        assert!(serde_json::from_str::<UserId>("\"ok-id\"").is_ok());
        assert!(serde_json::from_str::<UserId>("\"no:colons\"").is_err());
    }
}
