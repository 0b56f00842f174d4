//! The application's backend in the loop: the connect hook (may this socket
//! join?) and the publish hook (may this message be stored, as it is or
//! changed?). Each is an HTTP POST of JSON to a URL the settings name, with
//! a timeout, a concurrency limit, and an outcome for a hook that does not
//! answer (`deny` by default); every call is counted and timed in metrics.
//!
//! Requests are signed when `hooks.secret` is set:
//! `X-Roomcast-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, so the application can check that roomcast sent them and
//! refuse replays. Connections to the application are pooled (keep-alive).
//! Only `http://` URLs: the hook is the application's own backend, next to
//! the nodes (TLS to it belongs to a sidecar or the mesh).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use roomcast_core::pattern::glob;

use crate::config::{HookSettings, Settings};
use crate::metrics::Metrics;

/// How much of an answer is read at most.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Why a hook gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answered {0}")]
    Status(u16),
    #[error("unreadable answer: {0}")]
    BadAnswer(String),
}

/// What the connect hook is asked.
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    /// The room, or null for a multiplexed socket (which subscribes later:
    /// the answer's `rooms` then bounds its subscriptions).
    pub room_id: Option<&'a str>,
    pub user_id: &'a str,
    pub username: Option<&'a str>,
    /// The token's claims, when auth is on.
    pub claims: Option<&'a serde_json::Value>,
    pub node_id: &'a str,
    pub client_addr: Option<String>,
}

/// What the connect hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// Admitted, optionally under another display name and only for some
    /// rooms (a multiplexed socket's subscriptions are checked against it).
    Allow {
        username: Option<String>,
        rooms: Option<Vec<String>>,
    },
    /// Refused: the socket closes with `code` (4000-4999) and `reason`.
    Deny { code: u16, reason: String },
}

#[derive(Debug, Deserialize)]
struct ConnectAnswer {
    allow: bool,
    #[serde(default)]
    username: Option<String>,
    /// Rooms the user may join; when given, the requested room must be one.
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// What the publish hook is asked.
#[derive(Debug, Serialize)]
pub struct PublishRequest<'a> {
    pub room_id: &'a str,
    pub user_id: &'a str,
    pub username: &'a str,
    pub content: &'a str,
    pub client_id: Option<&'a str>,
}

/// What the publish hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishVerdict {
    Accept,
    /// Store this content instead.
    Replace(String),
    /// Store nothing; the sender is told `reason`.
    Reject(String),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum PublishAnswer {
    Accept,
    Replace {
        content: String,
    },
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
}

/// One configured hook.
#[derive(Debug)]
struct Hook {
    name: &'static str,
    url: Uri,
    timeout: Duration,
    /// What a hook that gives no usable answer means: true to let it pass.
    allow_on_error: bool,
    permits: Semaphore,
}

/// The node's hooks.
pub struct Hooks {
    client: Client<HttpConnector, Full<Bytes>>,
    secret: Option<Vec<u8>>,
    connect: Option<Hook>,
    publish: Option<Hook>,
    /// Room-name patterns the publish hook applies to (empty: all).
    publish_rooms: Vec<String>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("connect", &self.connect)
            .field("publish", &self.publish)
            .finish()
    }
}

impl Hooks {
    pub fn from_settings(s: &Settings) -> Hooks {
        let h: &HookSettings = &s.hooks;
        let hook = |name, url: &Option<String>, timeout_ms: u64, on_error: &str| {
            url.as_deref()
                .and_then(|u| u.parse::<Uri>().ok())
                .map(|url| Hook {
                    name,
                    url,
                    timeout: Duration::from_millis(timeout_ms),
                    allow_on_error: on_error == "allow",
                    permits: Semaphore::new(h.concurrency),
                })
        };
        Hooks {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build_http(),
            secret: h.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            connect: hook(
                "connect",
                &h.connect_url,
                h.connect_timeout_ms,
                &h.connect_on_error,
            ),
            publish: hook(
                "publish",
                &h.publish_url,
                h.publish_timeout_ms,
                &h.publish_on_error,
            ),
            publish_rooms: h
                .publish_rooms
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// Asks the connect hook, if there is one. `Err` only when the hook gave
    /// no usable answer and its outcome for that is `deny`.
    pub async fn on_connect(
        &self,
        metrics: &Metrics,
        req: &ConnectRequest<'_>,
    ) -> Option<Result<ConnectVerdict, HookError>> {
        let hook = self.connect.as_ref()?;
        let answer = self.call::<ConnectAnswer>(hook, metrics, req).await;
        let verdict = match answer {
            Ok(a) if !a.allow => ConnectVerdict::Deny {
                code: a.code.filter(|c| (4000..5000).contains(c)).unwrap_or(4003),
                reason: a
                    .reason
                    .unwrap_or_else(|| "refused by the application".into()),
            },
            Ok(a)
                if a.rooms
                    .as_ref()
                    .zip(req.room_id)
                    .is_some_and(|(rooms, room)| !rooms.iter().any(|r| r == room)) =>
            {
                ConnectVerdict::Deny {
                    code: 4003,
                    reason: "room not allowed by the application".into(),
                }
            }
            Ok(a) => ConnectVerdict::Allow {
                username: a.username.filter(|n| !n.trim().is_empty()),
                rooms: a.rooms,
            },
            Err(e) if hook.allow_on_error => {
                tracing::warn!(error = %e, "connect hook failed; allowing (hooks.connect_on_error = allow)");
                ConnectVerdict::Allow {
                    username: None,
                    rooms: None,
                }
            }
            Err(e) => return Some(Err(e)),
        };
        let outcome = match &verdict {
            ConnectVerdict::Allow { .. } => "allow",
            ConnectVerdict::Deny { .. } => "deny",
        };
        metrics
            .hook_calls
            .with_label_values(&["connect", outcome])
            .inc();
        Some(Ok(verdict))
    }

    /// Asks the publish hook, if it applies to `room`.
    pub async fn on_publish(
        &self,
        metrics: &Metrics,
        req: &PublishRequest<'_>,
    ) -> Option<Result<PublishVerdict, HookError>> {
        let hook = self.publish.as_ref()?;
        if !self.publish_rooms.is_empty()
            && !self.publish_rooms.iter().any(|p| glob(p, req.room_id))
        {
            return None;
        }
        let verdict = match self.call::<PublishAnswer>(hook, metrics, req).await {
            Ok(PublishAnswer::Accept) => PublishVerdict::Accept,
            Ok(PublishAnswer::Replace { content }) => PublishVerdict::Replace(content),
            Ok(PublishAnswer::Reject { reason }) => PublishVerdict::Reject(
                reason.unwrap_or_else(|| "refused by the application".into()),
            ),
            Err(e) if hook.allow_on_error => {
                tracing::warn!(error = %e, "publish hook failed; storing as sent (hooks.publish_on_error = allow)");
                PublishVerdict::Accept
            }
            Err(e) => return Some(Err(e)),
        };
        let outcome = match &verdict {
            PublishVerdict::Accept => "accept",
            PublishVerdict::Replace(_) => "replace",
            PublishVerdict::Reject(_) => "reject",
        };
        metrics
            .hook_calls
            .with_label_values(&["publish", outcome])
            .inc();
        Some(Ok(verdict))
    }

    /// One POST, within the hook's timeout (which covers waiting for a
    /// concurrency permit: a slow application cannot pile up work here).
    async fn call<A: serde::de::DeserializeOwned>(
        &self,
        hook: &Hook,
        metrics: &Metrics,
        body: &impl Serialize,
    ) -> Result<A, HookError> {
        let started = Instant::now();
        let body = serde_json::to_vec(body).expect("hook requests serialize");
        let result = tokio::time::timeout(hook.timeout, async {
            let _permit = hook.permits.acquire().await.expect("never closed");
            let mut req = Request::post(hook.url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::USER_AGENT,
                    concat!("roomcast/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(secret) = &self.secret {
                req = req.header("x-roomcast-signature", sign(secret, &body));
            }
            let req = req
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| HookError::Unreachable(e.to_string()))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HookError::Unreachable(e.to_string()))?;
            let status = resp.status();
            let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| HookError::BadAnswer(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(HookError::Status(status.as_u16()));
            }
            serde_json::from_slice::<A>(&bytes).map_err(|e| HookError::BadAnswer(e.to_string()))
        })
        .await
        .unwrap_or(Err(HookError::Timeout(hook.timeout)));
        metrics
            .hook_duration
            .with_label_values(&[hook.name])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            metrics
                .hook_calls
                .with_label_values(&[hook.name, "error"])
                .inc();
            tracing::warn!(hook = hook.name, error = %e, "hook failed");
        }
        result
    }
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("t={t},v1={}", signature(secret, t, body))
}

/// The hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        // As Python's hmac.new(b"Jefe", b"0.what do ya want for nothing?",
        // hashlib.sha256).hexdigest() computes it.
        let got = signature(b"Jefe", 0, b"what do ya want for nothing?");
        assert_eq!(
            got,
            "37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_ne!(got, signature(b"Jefe", 1, b"what do ya want for nothing?"));
        assert!(sign(b"k", b"{}").starts_with("t="));
    }
}
