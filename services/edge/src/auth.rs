//! Who a connection is: JWT verification and the origin allow-list.
//!
//! With `JWT_SECRET` (HS256) or `JWT_PUBLIC_KEY_FILE` (RS256) set, every
//! socket needs a token (query `token`, `Authorization: Bearer`, or a `token`
//! cookie). Its `sub` is the user id, `name` the username, and an optional
//! `rooms` claim lists the rooms it may join. Exactly one algorithm is
//! accepted, so `alg: none` and algorithm confusion (an HS256 token "signed"
//! with the RS256 public key) fail verification.

use std::collections::HashSet;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use roomcast_protocol::{RoomId, UserId};
use serde::Deserialize;

use crate::config::{ConfigError, Settings};

/// Why a token was refused (the socket closes 4001).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token missing")]
    Missing,
    #[error("token invalid: {0}")]
    Invalid(String),
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub username: Option<String>,
    /// `None`: any room.
    pub rooms: Option<HashSet<RoomId>>,
    /// The token's `exp` (seconds since the epoch), if it has one.
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn may_join(&self, room: &RoomId) -> bool {
        self.rooms.as_ref().is_none_or(|r| r.contains(room))
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<u64>,
}

/// Verifies tokens; `None` inside means auth is off.
pub struct Authenticator {
    verifier: Option<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("enabled", &self.enabled())
            .finish()
    }
}

impl Authenticator {
    /// Reads the configured key. A key file that cannot be read or parsed
    /// is a start-up error naming the setting.
    pub fn from_settings(s: &Settings) -> Result<Self, ConfigError> {
        let (key, alg) = if let Some(secret) = &s.auth.jwt_secret {
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        } else if let Some(path) = &s.auth.jwt_public_key_file {
            let name = "JWT_PUBLIC_KEY_FILE (auth.jwt_public_key_file)";
            let pem = std::fs::read(path).map_err(|e| ConfigError {
                name: name.into(),
                problem: format!("cannot read {}: {e}", path.display()),
            })?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| ConfigError {
                name: name.into(),
                problem: format!("{} is not an RSA public key in PEM: {e}", path.display()),
            })?;
            (key, Algorithm::RS256)
        } else {
            return Ok(Self { verifier: None });
        };
        let mut v = Validation::new(alg);
        if s.auth.require_exp == Some(false) {
            v.set_required_spec_claims(&["sub"]);
        } else {
            v.set_required_spec_claims(&["sub", "exp"]);
        }
        v.leeway = 5;
        Ok(Self {
            verifier: Some((key, v)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// Verifies `token`. Only called when auth is enabled.
    pub fn verify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let Some((key, validation)) = &self.verifier else {
            return Err(AuthError::Invalid("auth is not configured".into()));
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        let user_id = UserId::parse(&c.sub)
            .map_err(|e| AuthError::Invalid(format!("sub is not a valid user id: {e}")))?;
        let rooms = c
            .rooms
            .map(|rs| {
                rs.iter()
                    .map(|r| RoomId::parse(r))
                    .collect::<Result<HashSet<_>, _>>()
            })
            .transpose()
            .map_err(|e| AuthError::Invalid(format!("rooms claim: {e}")))?;
        Ok(Identity {
            user_id,
            username: c.name.filter(|n| !n.trim().is_empty()),
            rooms,
            expires_at: c.exp,
        })
    }
}

/// The token a request carries: query `token`, else `Authorization: Bearer`,
/// else a `token` cookie.
pub fn find_token<'a>(query_token: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return Some(t);
    }
    if let Some(t) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim());
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix("token="))
}

/// The `Origin` allow-list.
#[derive(Debug, Clone)]
pub struct Origins {
    allowed: Vec<String>,
}

impl Origins {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            allowed: s.allowed_origins(),
        }
    }

    /// Whether any origin is allowed (no `FRONTEND_URL`).
    pub fn is_open(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether a request with this `Origin` header may proceed. A request
    /// without `Origin` is not from a browser page (curl, a backend), which a
    /// cross-site check cannot and need not stop.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(o) => self.is_open() || self.allowed.iter().any(|a| a == o.trim_end_matches('/')),
        }
    }
}
