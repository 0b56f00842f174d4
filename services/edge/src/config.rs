//! Settings, layered: built-in defaults < TOML file (`--config PATH` or
//! `ROOMCAST_CONFIG`) < `ROOMCAST__SECTION__KEY` environment variables <
//! the flat names existing deployments already set (`PORT`, `REDIS_URL`, ...).
//!
//! Every value is checked before the server starts; a bad one stops start-up
//! with a message that names the setting and says what it expects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

mod validate;

/// A setting that is missing, malformed or out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {problem}")]
pub struct ConfigError {
    pub name: String,
    pub problem: String,
}

fn bad(name: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub websocket: WebSocketSettings,
    pub rooms: RoomSettings,
    pub auth: AuthSettings,
    pub history: HistorySettings,
    pub redis: RedisSettings,
    pub presence: PresenceSettings,
    pub limits: LimitSettings,
    pub hooks: HookSettings,
    pub log: LogSettings,
}

/// The application's backend in the loop (see `hooks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HookSettings {
    /// POSTed on every socket admission: allow or deny (and a name).
    pub connect_url: Option<String>,
    pub connect_timeout_ms: u64,
    /// `deny` or `allow`: what a connect hook that does not answer means.
    pub connect_on_error: String,
    /// POSTed before a message is stored: accept, reject or replace.
    pub publish_url: Option<String>,
    pub publish_timeout_ms: u64,
    pub publish_on_error: String,
    /// Room-name patterns (`support-*`, comma-separated) the publish hook
    /// applies to; empty: every room.
    pub publish_rooms: String,
    /// Calls in flight to each hook at most (waiting counts toward the timeout).
    pub concurrency: usize,
    /// Signs every hook request (`X-Roomcast-Signature`); at least 16 bytes.
    pub secret: Option<String>,
}

impl Default for HookSettings {
    fn default() -> Self {
        Self {
            connect_url: None,
            connect_timeout_ms: 2000,
            connect_on_error: "deny".into(),
            publish_url: None,
            publish_timeout_ms: 2000,
            publish_on_error: "deny".into(),
            publish_rooms: String::new(),
            concurrency: 64,
            secret: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub host: String,
    /// 0: a free port chosen by the system (printed on standard output).
    pub port: u16,
    /// This node's name in `connected` frames, logs and metrics. Empty: the
    /// host name, or a random id.
    pub node_id: String,
    /// `development` or `production`.
    pub environment: String,
    /// WebSocket connections this node accepts; past it, HTTP 503.
    pub max_connections: usize,
    /// Time for a client to send its complete HTTP request head.
    pub handshake_timeout_ms: u64,
    /// Time given to connections to close on SIGTERM before the process exits.
    pub shutdown_grace_ms: u64,
    /// Largest HTTP request head accepted (over it: 431).
    pub max_header_bytes: usize,
    /// Also serve `/metrics` on this port (e.g. one not exposed publicly).
    pub metrics_port: Option<u16>,
    /// A write to any connection (a REST response, a socket) that makes no
    /// progress this long ends the connection: a client that never reads
    /// cannot pin what was written for it. Longer than twice
    /// `websocket.write_timeout_ms`, which handles slow sockets first.
    pub write_deadline_ms: u64,
    /// Pending connections the kernel queues before `accept` (capped by
    /// `net.core.somaxconn`). Too small, and a burst of connects overflows it:
    /// clients wait for a SYN retransmit (a one-second stall).
    pub listen_backlog: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketSettings {
    /// Transport limit for one frame or message; over it the socket closes 1009.
    pub max_frame_bytes: usize,
    /// Limit for a message's content; over it an `error` `too_large`.
    pub max_content_bytes: usize,
    /// Frames queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    pub heartbeat_interval_ms: u64,
    /// A peer that sends nothing (not even a pong) for this long is closed.
    pub heartbeat_timeout_ms: u64,
    /// Sustained frames per second a connection may send (token bucket).
    pub rate_per_sec: f64,
    /// Burst above the sustained rate.
    pub rate_burst: f64,
    /// Rate-limited frames in a row after which the connection closes 1008.
    pub flood_close_after: u32,
    /// A socket write that cannot complete in this time marks a slow consumer.
    pub write_timeout_ms: u64,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoomSettings {
    /// Unset: on in production, off in development.
    pub allow_websocket_auto_rooms: Option<bool>,
    pub allow_join_auto_rooms: Option<bool>,
    pub allow_join_auto_users: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HS256 secret (at least 32 bytes); a token is then required.
    pub jwt_secret: Option<String>,
    /// RS256 public key (PEM file); a token is then required.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Tokens must carry `exp` (recommended; off only for legacy issuers).
    pub require_exp: Option<bool>,
    /// When set, a token's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// The application backend's key (`Authorization: Bearer <key>`, at
    /// least 16 bytes): server publish, and with auth on, the routes only the
    /// backend may call. Also read as `PUBLISH_API_KEY` / `publish_api_key`.
    #[serde(alias = "publish_api_key")]
    pub server_api_key: Option<String>,
    /// Allowed origins, comma-separated (CORS and the WebSocket Origin check).
    pub frontend_url: Option<String>,
    /// Production without a JWT key refuses to start unless this is true.
    pub allow_unauthenticated: Option<bool>,
    /// Production without `frontend_url` accepts only same-origin pages
    /// (sockets and credentialed CORS) unless this is true.
    pub allow_any_origin: bool,
    /// With auth on: a user may create rooms over REST.
    pub users_create_rooms: bool,
    /// With auth on: a user may join rooms (its token allows) over REST, for
    /// itself only.
    pub users_join_rooms: bool,
}

/// What one caller may use of a node. Each is per node (a caller spread over
/// several nodes gets each node's share).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// WebSocket connections one user may hold on this node (past it: 1008).
    pub connections_per_user: usize,
    /// WebSocket connections from one client address (past it: HTTP 429).
    pub connections_per_address: usize,
    /// REST requests per second per client address, and per user (token).
    pub rest_rate_per_sec: f64,
    pub rest_burst: f64,
    /// Frames per second one user may send across all its sockets on this
    /// node (each socket also has `websocket.rate_per_sec`).
    pub user_frame_rate_per_sec: f64,
    pub user_frame_burst: f64,
    /// Proxies (IP addresses or networks like `10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client; from anyone else the socket's
    /// address is the client's. Behind a load balancer, name it here, or every
    /// client counts as the balancer's address.
    pub trusted_proxies: Vec<String>,
    /// Users and rooms the embedded backend keeps (past it: 507).
    pub max_users: usize,
    pub max_rooms: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            connections_per_user: 50,
            connections_per_address: 5000,
            rest_rate_per_sec: 100.0,
            rest_burst: 200.0,
            user_frame_rate_per_sec: 40.0,
            user_frame_burst: 80.0,
            trusted_proxies: Vec::new(),
            max_users: 1_000_000,
            max_rooms: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Messages kept per room.
    pub max_len: usize,
    /// Bytes one history response (and one replay page) carries at most; a
    /// page that would be larger ends early and says where to continue.
    pub max_page_bytes: usize,
    /// Embedded backend: bytes of messages kept per room, and in all rooms
    /// (past either, the oldest messages go first).
    pub max_room_bytes: usize,
    pub max_total_bytes: usize,
    /// How long a publish is remembered by (room, sender, `client_id`): a
    /// retry within it returns the first result and stores nothing.
    pub dedupe_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Unset: the embedded single-node backend.
    pub url: Option<String>,
    /// Prefix of every key and channel (several clusters can share a Redis).
    pub key_prefix: String,
    /// Pooled command connections per node.
    pub pool_size: usize,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "roomcast".into(),
            pool_size: 32,
        }
    }
}

/// Cluster-wide presence (Redis backend only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// Run the dead-node sweeper in this process too. Harmless next to the
    /// `roomcast-presence` service: a lock makes one sweeper lead.
    pub sweeper: bool,
    pub heartbeat_ms: u64,
    /// A node silent this long is dead; its users are announced left.
    pub lease_ttl_ms: u64,
    pub sweep_interval_ms: u64,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self {
            sweeper: true,
            heartbeat_ms: 1000,
            lease_ttl_ms: 3000,
            sweep_interval_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `roomcast_edge=debug,info`.
    pub level: String,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            max_len: 1000,
            max_page_bytes: 1024 * 1024,
            max_room_bytes: 64 * 1024 * 1024,
            max_total_bytes: 512 * 1024 * 1024,
            dedupe_window_secs: 300,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8000,
            node_id: String::new(),
            environment: "development".into(),
            max_connections: 100_000,
            handshake_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            max_header_bytes: 16 * 1024,
            metrics_port: None,
            write_deadline_ms: 30_000,
            listen_backlog: 4096,
        }
    }
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_content_bytes: 64 * 1024,
            outbound_queue: 1024,
            heartbeat_interval_ms: 25_000,
            heartbeat_timeout_ms: 60_000,
            rate_per_sec: 20.0,
            rate_burst: 40.0,
            flood_close_after: 50,
            write_timeout_ms: 10_000,
            read_buffer_bytes: 512,
            write_buffer_bytes: 1024,
        }
    }
}

/// The flat variable names existing deployments set, and where each goes.
const FLAT: &[(&str, &str, Kind)] = &[
    ("PORT", "server.port", Kind::ListenPort),
    ("METRICS_PORT", "server.metrics_port", Kind::Port),
    ("HOST", "server.host", Kind::Text),
    ("NODE_ID", "server.node_id", Kind::Text),
    ("ENVIRONMENT", "server.environment", Kind::Text),
    ("FRONTEND_URL", "auth.frontend_url", Kind::Text),
    ("JWT_SECRET", "auth.jwt_secret", Kind::Secret),
    (
        "JWT_PUBLIC_KEY_FILE",
        "auth.jwt_public_key_file",
        Kind::Text,
    ),
    ("SERVER_API_KEY", "auth.server_api_key", Kind::Secret),
    ("PUBLISH_API_KEY", "auth.server_api_key", Kind::Secret),
    (
        "ALLOW_UNAUTHENTICATED",
        "auth.allow_unauthenticated",
        Kind::Bool,
    ),
    ("REDIS_URL", "redis.url", Kind::Text),
    (
        "ALLOW_WEBSOCKET_AUTO_ROOMS",
        "rooms.allow_websocket_auto_rooms",
        Kind::Bool,
    ),
    (
        "ALLOW_JOIN_AUTO_ROOMS",
        "rooms.allow_join_auto_rooms",
        Kind::Bool,
    ),
    (
        "ALLOW_JOIN_AUTO_USERS",
        "rooms.allow_join_auto_users",
        Kind::Bool,
    ),
    ("LOG_FORMAT", "log.format", Kind::Text),
    // Names the presence service read before it shared this loader.
    ("ROOMCAST_KEY_PREFIX", "redis.key_prefix", Kind::Text),
    (
        "PRESENCE_SWEEP_INTERVAL_MS",
        "presence.sweep_interval_ms",
        Kind::Count,
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Port,
    /// A port to listen on; 0 asks the system for a free one (the bound
    /// address is printed on standard output).
    ListenPort,
    Bool,
    Text,
    /// A whole number above 0.
    Count,
    /// A secret: set to an empty value it is an error, not "unset" (an empty
    /// `JWT_SECRET` must not quietly turn auth off).
    Secret,
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(name, format!("expected true or false, got {v:?}"))),
    }
}

impl Settings {
    /// Loads the layers from `file` (if any) and the given environment.
    pub fn load(file: Option<&Path>, env: &[(String, String)]) -> Result<Settings, ConfigError> {
        let defaults =
            Config::try_from(&Settings::default()).map_err(|e| bad("defaults", e.to_string()))?;
        let mut b = Config::builder().add_source(defaults);
        if let Some(path) = file {
            if !path.is_file() {
                return Err(bad(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            b = b.add_source(File::from(path).format(FileFormat::Toml));
        }
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("ROOMCAST__"))
            .cloned()
            .collect();
        b = b.add_source(
            Environment::with_prefix("ROOMCAST")
                .separator("__")
                .source(Some(prefixed))
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("limits.trusted_proxies"),
        );
        for (flat, key, kind) in FLAT {
            let Some((_, v)) = env.iter().find(|(k, _)| k == flat) else {
                continue;
            };
            b = match kind {
                Kind::Port => {
                    let port: u16 = v.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                        bad(flat, format!("expected a port number 1-65535, got {v:?}"))
                    })?;
                    b.set_override(*key, i64::from(port))
                }
                Kind::ListenPort => {
                    let port: u16 = v.trim().parse().map_err(|_| {
                        bad(flat, format!("expected a port number 0-65535, got {v:?}"))
                    })?;
                    b.set_override(*key, i64::from(port))
                }
                Kind::Bool => b.set_override(*key, parse_bool(flat, v)?),
                Kind::Count => {
                    let n: u32 = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad(flat, format!("expected a whole number above 0, got {v:?}"))
                    })?;
                    b.set_override(*key, i64::from(n))
                }
                Kind::Text if v.trim().is_empty() => continue,
                Kind::Text | Kind::Secret => b.set_override(*key, v.trim().to_owned()),
            }
            .map_err(|e| bad(flat, e.to_string()))?;
        }
        let settings: Settings = b
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| bad("configuration", e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn is_production(&self) -> bool {
        self.server.environment == "production"
    }

    fn auto(&self, v: Option<bool>) -> bool {
        v.unwrap_or(self.is_production())
    }

    pub fn websocket_auto_rooms(&self) -> bool {
        self.auto(self.rooms.allow_websocket_auto_rooms)
    }
    pub fn join_auto_rooms(&self) -> bool {
        self.auto(self.rooms.allow_join_auto_rooms)
    }
    pub fn join_auto_users(&self) -> bool {
        self.auto(self.rooms.allow_join_auto_users)
    }

    /// The allowed origins, without trailing slashes; empty: any.
    pub fn allowed_origins(&self) -> Vec<String> {
        self.auth
            .frontend_url
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    }

    /// What the backend keeps per room.
    pub fn history_options(&self) -> roomcast_core::history::HistoryOptions {
        roomcast_core::history::HistoryOptions {
            max_len: self.history.max_len,
            max_room_bytes: self.history.max_room_bytes,
            max_total_bytes: self.history.max_total_bytes,
            dedupe_window: Duration::from_secs(self.history.dedupe_window_secs),
        }
    }

    /// Lease and sweep timing of the Redis backend.
    pub fn presence_timing(&self) -> roomcast_redis::Timing {
        let p = &self.presence;
        roomcast_redis::Timing {
            heartbeat: Duration::from_millis(p.heartbeat_ms),
            lease_ttl: Duration::from_millis(p.lease_ttl_ms),
            sweep_every: Duration::from_millis(p.sweep_interval_ms),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.websocket.heartbeat_interval_ms)
    }
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.websocket.heartbeat_timeout_ms)
    }

    /// The effective settings as TOML, with secrets masked and the
    /// environment-dependent defaults resolved.
    pub fn to_masked_toml(&self) -> String {
        let mut s = self.clone();
        let mask = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some("********".into());
            }
        };
        mask(&mut s.auth.jwt_secret);
        mask(&mut s.auth.server_api_key);
        mask(&mut s.hooks.secret);
        if let Some(url) = &mut s.redis.url {
            *url = mask_url_password(url);
        }
        s.rooms = RoomSettings {
            allow_websocket_auto_rooms: Some(self.websocket_auto_rooms()),
            allow_join_auto_rooms: Some(self.join_auto_rooms()),
            allow_join_auto_users: Some(self.join_auto_users()),
        };
        toml::to_string_pretty(&s).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// `redis://user:secret@host` → `redis://user:********@host`.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((auth, host)) if auth.contains(':') => {
            let user = auth.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:********@{host}")
        }
        Some((_, host)) => format!("{scheme}://********@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
