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
use roomcast_protocol::rest::validate_name;
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
    /// Every claim, as the token carries them (for the connect hook).
    pub claims: serde_json::Value,
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
        let mut required = vec!["sub"];
        if s.auth.require_exp != Some(false) {
            required.push("exp");
        }
        // `nbf`, when a token has it, is checked; `iss` and `aud` when the
        // settings name them (then a token must carry them).
        v.validate_nbf = true;
        v.validate_aud = false;
        if let Some(iss) = &s.auth.jwt_issuer {
            v.set_issuer(&[iss.trim()]);
            required.push("iss");
        }
        if let Some(aud) = &s.auth.jwt_audience {
            v.set_audience(&[aud.trim()]);
            v.validate_aud = true;
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
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
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        // Typed fields read from the claims in place (no copy).
        let c = Claims::deserialize(&data.claims).map_err(|e| AuthError::Invalid(e.to_string()))?;
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
        // The name is shown to everyone: the same rules as a username.
        let username = c
            .name
            .filter(|n| !n.trim().is_empty())
            .map(|n| validate_name("name", &n))
            .transpose()
            .map_err(AuthError::Invalid)?;
        Ok(Identity {
            user_id,
            username,
            rooms,
            expires_at: c.exp,
            claims: data.claims,
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

/// Which page origins may open sockets and make credentialed CORS calls.
#[derive(Debug, Clone)]
pub enum Origins {
    /// `FRONTEND_URL`: exactly these.
    List(Vec<String>),
    /// Any origin (development, or `auth.allow_any_origin`).
    Any,
    /// Production without `FRONTEND_URL`: only pages served by this node's
    /// own host (the `Origin` matches the `Host`).
    SameOrigin,
}

impl Origins {
    pub fn from_settings(s: &Settings) -> Self {
        let allowed = s.allowed_origins();
        if !allowed.is_empty() {
            Origins::List(allowed)
        } else if s.is_production() && !s.auth.allow_any_origin {
            Origins::SameOrigin
        } else {
            Origins::Any
        }
    }

    /// Whether any origin is allowed.
    pub fn is_open(&self) -> bool {
        matches!(self, Origins::Any)
    }

    /// Whether a request with this `Origin` (to this `Host`) may proceed. A
    /// request without `Origin` is not from a browser page (curl, a backend),
    /// which a cross-site check cannot and need not stop.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim_end_matches('/');
        match self {
            Origins::Any => true,
            Origins::List(allowed) => allowed.iter().any(|a| a == origin),
            Origins::SameOrigin => {
                let authority = origin.split_once("://").map(|(_, a)| a);
                authority.is_some() && authority == host.map(str::trim)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_means_the_origin_names_this_host() {
        let o = Origins::SameOrigin;
        assert!(o.allows(Some("https://chat.example.com"), Some("chat.example.com")));
        assert!(
            o.allows(None, Some("chat.example.com")),
            "no Origin: not a page"
        );
        assert!(!o.allows(Some("https://evil.example"), Some("chat.example.com")));
        assert!(!o.allows(Some("null"), Some("chat.example.com")));
        let list = Origins::List(vec!["https://app.example".into()]);
        assert!(list.allows(Some("https://app.example/"), Some("api.example")));
        assert!(!list.allows(Some("https://other.example"), Some("api.example")));
    }
}
