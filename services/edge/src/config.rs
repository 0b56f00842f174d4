//! Settings, layered: built-in defaults < TOML file (`--config PATH` or
//! `ROOMCAST_CONFIG`) < `ROOMCAST__SECTION__KEY` environment variables <
//! the flat names existing deployments already set (`PORT`, `REDIS_URL`, ...).
//!
//! Every value is checked before the server starts; a bad one stops start-up
//! with a message that names the setting and says what it expects.

use std::path::Path;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

mod sections;
mod validate;

pub use sections::*;

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
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
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
    ("REDIS_SENTINELS", "redis.sentinels", Kind::Text),
    ("REDIS_SENTINEL_MASTER", "redis.sentinel_master", Kind::Text),
    ("REDIS_PASSWORD", "redis.password", Kind::Secret),
    (
        "REDIS_SENTINEL_PASSWORD",
        "redis.sentinel_password",
        Kind::Secret,
    ),
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
            // Validated at load.
            retention: roomcast_core::retention::Rules::parse(&self.history.retention)
                .unwrap_or_default(),
        }
    }

    /// The webhook events sent (validated at load).
    pub fn webhook_events(&self) -> Vec<roomcast_core::events::EventName> {
        use roomcast_core::events::EventName;
        if self.webhooks.url.is_none() {
            return Vec::new();
        }
        let list = self.webhooks.events.trim();
        if list == "*" {
            return EventName::ALL.to_vec();
        }
        list.split(',')
            .filter_map(|n| EventName::parse(n.trim()))
            .collect()
    }

    /// Which webhook events the backend records: those sent, nothing
    /// without `webhooks.url`.
    pub fn webhook_recording(&self) -> roomcast_core::events::Recording {
        use roomcast_core::events::EventName;
        let events = self.webhook_events();
        roomcast_core::events::Recording {
            messages: events.contains(&EventName::MessageStored),
            presence: events.iter().any(|e| *e != EventName::MessageStored),
            max_queue: self.webhooks.max_queue,
        }
    }

    /// The Redis to run on (`REDIS_URL`, or Sentinel); `None`: embedded.
    pub fn redis_target(&self) -> Option<roomcast_redis::target::TargetSpec> {
        use roomcast_redis::target::TargetSpec;
        let r = &self.redis;
        if let Some(url) = &r.url {
            return Some(TargetSpec::Url(url.clone()));
        }
        let sentinels = r.sentinels.as_ref()?;
        Some(TargetSpec::Sentinel {
            sentinels: sentinels
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            master: r.sentinel_master.clone().unwrap_or_default(),
            password: r.password.clone(),
            sentinel_password: r.sentinel_password.clone(),
        })
    }

    /// `redis.ack_replicas`, when on.
    pub fn ack_replicas(&self) -> Option<roomcast_redis::client::AckReplicas> {
        (self.redis.ack_replicas > 0).then(|| roomcast_redis::client::AckReplicas {
            replicas: self.redis.ack_replicas,
            timeout: std::time::Duration::from_millis(self.redis.ack_timeout_ms),
        })
    }

    /// Where rooms' presence becomes summarised.
    pub fn presence_summary(&self) -> roomcast_core::presence::Summary {
        roomcast_core::presence::Summary {
            above: self.presence.summary_above,
            page: self.presence.summary_page,
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
        mask(&mut s.webhooks.secret);
        mask(&mut s.redis.password);
        mask(&mut s.redis.sentinel_password);
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
