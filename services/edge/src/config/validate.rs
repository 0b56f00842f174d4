//! Checks every setting before the server starts: a bad one stops start-up
//! with a message that names it and says what it expects.

use super::*;

impl Settings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if !matches!(s.environment.as_str(), "development" | "production") {
            return Err(bad(
                "ENVIRONMENT (server.environment)",
                format!(
                    "expected development or production, got {:?}",
                    s.environment
                ),
            ));
        }
        if !s.node_id.is_empty() && roomcast_protocol::UserId::parse(&s.node_id).is_err() {
            return Err(bad(
                "NODE_ID (server.node_id)",
                "expected 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        let positive = [
            ("server.max_connections", s.max_connections as u64),
            ("server.handshake_timeout_ms", s.handshake_timeout_ms),
            ("server.listen_backlog", u64::from(s.listen_backlog)),
            (
                "websocket.max_frame_bytes",
                self.websocket.max_frame_bytes as u64,
            ),
            (
                "websocket.max_content_bytes",
                self.websocket.max_content_bytes as u64,
            ),
            (
                "websocket.outbound_queue",
                self.websocket.outbound_queue as u64,
            ),
            (
                "websocket.heartbeat_interval_ms",
                self.websocket.heartbeat_interval_ms,
            ),
            (
                "websocket.write_timeout_ms",
                self.websocket.write_timeout_ms,
            ),
            (
                "websocket.flood_close_after",
                u64::from(self.websocket.flood_close_after),
            ),
            (
                "websocket.max_subscriptions",
                self.websocket.max_subscriptions as u64,
            ),
            ("websocket.max_watched", self.websocket.max_watched as u64),
            ("history.max_len", self.history.max_len as u64),
            ("history.max_page_bytes", self.history.max_page_bytes as u64),
            ("history.max_room_bytes", self.history.max_room_bytes as u64),
            (
                "history.max_total_bytes",
                self.history.max_total_bytes as u64,
            ),
            (
                "history.dedupe_window_secs",
                self.history.dedupe_window_secs,
            ),
            ("redis.pool_size", self.redis.pool_size as u64),
            ("presence.heartbeat_ms", self.presence.heartbeat_ms),
            (
                "presence.sweep_interval_ms",
                self.presence.sweep_interval_ms,
            ),
            ("presence.diff_interval_ms", self.presence.diff_interval_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(bad(name, "expected a number greater than 0"));
            }
        }
        if s.max_header_bytes < 8192 {
            return Err(bad("server.max_header_bytes", "expected at least 8192"));
        }
        let w = &self.websocket;
        if w.max_content_bytes > w.max_frame_bytes {
            return Err(bad(
                "websocket.max_content_bytes",
                "must not exceed websocket.max_frame_bytes",
            ));
        }
        if s.write_deadline_ms <= w.write_timeout_ms.saturating_mul(2) {
            return Err(bad(
                "server.write_deadline_ms",
                "must be longer than twice websocket.write_timeout_ms",
            ));
        }
        if w.heartbeat_timeout_ms <= w.heartbeat_interval_ms {
            return Err(bad(
                "websocket.heartbeat_timeout_ms",
                "must be longer than websocket.heartbeat_interval_ms",
            ));
        }
        if !(w.rate_per_sec > 0.0 && w.rate_per_sec.is_finite()) {
            return Err(bad("websocket.rate_per_sec", "expected a number above 0"));
        }
        if !(w.rate_burst >= 1.0 && w.rate_burst.is_finite()) {
            return Err(bad(
                "websocket.rate_burst",
                "expected a number of at least 1",
            ));
        }
        if !(1..=1000).contains(&self.presence.summary_page) {
            return Err(bad("presence.summary_page", "expected 1 to 1000"));
        }
        if self.presence.diff_max > 1000 {
            return Err(bad("presence.diff_max", "expected 0 to 1000"));
        }
        if self.presence.lease_ttl_ms < self.presence.heartbeat_ms * 2 {
            return Err(bad(
                "presence.lease_ttl_ms",
                "must be at least twice presence.heartbeat_ms, or a live node under load looks dead",
            ));
        }
        if roomcast_protocol::UserId::parse(&self.redis.key_prefix).is_err() {
            return Err(bad(
                "redis.key_prefix",
                "expected 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(bad(
                "LOG_FORMAT (log.format)",
                format!("expected text or json, got {:?}", self.log.format),
            ));
        }
        self.validate_auth()?;
        self.validate_limits()?;
        self.validate_hooks()?;
        if let Err(e) = roomcast_core::retention::Rules::parse(&self.history.retention) {
            return Err(bad("history.retention", e));
        }
        self.validate_webhooks()?;
        if self.auth.jwt_secret.is_some() && self.auth.jwt_public_key_file.is_some() {
            return Err(bad(
                "JWT_SECRET / JWT_PUBLIC_KEY_FILE",
                "set one of them, not both",
            ));
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(bad(
                "REDIS_URL (redis.url)",
                "expected a redis:// or rediss:// URL",
            ));
        }
        let r = &self.redis;
        if !(1..=10_000).contains(&r.ack_timeout_ms) {
            return Err(bad("redis.ack_timeout_ms", "expected 1 to 10000"));
        }
        if let Some(sentinels) = &r.sentinels {
            if r.url.is_some() {
                return Err(bad(
                    "REDIS_SENTINELS (redis.sentinels)",
                    "set REDIS_URL or REDIS_SENTINELS, not both",
                ));
            }
            let addrs: Vec<&str> = sentinels.split(',').map(str::trim).collect();
            if addrs.iter().any(|a| {
                a.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            }) {
                return Err(bad(
                    "REDIS_SENTINELS (redis.sentinels)",
                    "expected host:port,host:port,...",
                ));
            }
            if r.sentinel_master.as_deref().is_none_or(str::is_empty) {
                return Err(bad(
                    "REDIS_SENTINEL_MASTER (redis.sentinel_master)",
                    "required with REDIS_SENTINELS: the master group's name",
                ));
            }
        } else if r.sentinel_master.is_some() {
            return Err(bad(
                "REDIS_SENTINELS (redis.sentinels)",
                "required with REDIS_SENTINEL_MASTER",
            ));
        }
        for origin in self.allowed_origins() {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(bad(
                    "FRONTEND_URL (auth.frontend_url)",
                    format!("expected comma-separated http(s) origins, got {origin:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// The shortest HS256 secret accepted: as long as the hash (RFC 7518 3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;
/// The shortest server API key accepted.
pub const MIN_API_KEY_BYTES: usize = 16;

impl Settings {
    /// Fails closed: a secret too short to be one, or production with
    /// nobody checking who connects, stops start-up.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if let Some(secret) = &a.jwt_secret
            && secret.len() < MIN_JWT_SECRET_BYTES
        {
            return Err(bad(
                "JWT_SECRET (auth.jwt_secret)",
                format!(
                    "is {} bytes; at least {MIN_JWT_SECRET_BYTES} are needed (e.g. openssl rand -hex 32)",
                    secret.len()
                ),
            ));
        }
        if let Some(key) = &a.server_api_key
            && key.trim().len() < MIN_API_KEY_BYTES
        {
            return Err(bad(
                "SERVER_API_KEY / PUBLISH_API_KEY (auth.server_api_key)",
                format!(
                    "is {} bytes; at least {MIN_API_KEY_BYTES} are needed (e.g. openssl rand -hex 24)",
                    key.trim().len()
                ),
            ));
        }
        for (name, v) in [
            ("auth.jwt_issuer", &a.jwt_issuer),
            ("auth.jwt_audience", &a.jwt_audience),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(bad(name, "must not be empty (leave it unset to not check)"));
            }
        }
        let auth_on = a.jwt_secret.is_some() || a.jwt_public_key_file.is_some();
        if self.is_production() && !auth_on && a.allow_unauthenticated != Some(true) {
            return Err(bad(
                "JWT_SECRET / JWT_PUBLIC_KEY_FILE (auth)",
                "production needs auth: set JWT_SECRET or JWT_PUBLIC_KEY_FILE, or ALLOW_UNAUTHENTICATED=true \
                 (auth.allow_unauthenticated) to run without it on purpose",
            ));
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (name, v) in [
            ("limits.connections_per_user", l.connections_per_user),
            ("limits.connections_per_address", l.connections_per_address),
            ("limits.max_users", l.max_users),
            ("limits.max_rooms", l.max_rooms),
        ] {
            if v == 0 {
                return Err(bad(name, "expected a number greater than 0"));
            }
        }
        for (name, v) in [
            ("limits.rest_rate_per_sec", l.rest_rate_per_sec),
            ("limits.user_frame_rate_per_sec", l.user_frame_rate_per_sec),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(bad(name, "expected a number above 0"));
            }
        }
        for (name, v) in [
            ("limits.rest_burst", l.rest_burst),
            ("limits.user_frame_burst", l.user_frame_burst),
        ] {
            if !(v >= 1.0 && v.is_finite()) {
                return Err(bad(name, "expected a number of at least 1"));
            }
        }
        for p in &l.trusted_proxies {
            if p.parse::<crate::limits::Proxies>().is_err() {
                return Err(bad(
                    "limits.trusted_proxies",
                    format!("expected IP addresses or networks (10.0.0.0/8), got {p:?}"),
                ));
            }
        }
        Ok(())
    }
}

impl Settings {
    fn validate_hooks(&self) -> Result<(), ConfigError> {
        let h = &self.hooks;
        for (name, url) in [
            ("hooks.connect_url", &h.connect_url),
            ("hooks.publish_url", &h.publish_url),
        ] {
            let Some(url) = url else { continue };
            if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() {
                return Err(bad(
                    name,
                    format!(
                        "expected an http:// URL of the application's backend, got {url:?} \
                         (https is not spoken here: terminate TLS in a sidecar or the mesh)"
                    ),
                ));
            }
        }
        for (name, v) in [
            ("hooks.connect_on_error", &h.connect_on_error),
            ("hooks.publish_on_error", &h.publish_on_error),
        ] {
            if !matches!(v.as_str(), "deny" | "allow") {
                return Err(bad(name, format!("expected deny or allow, got {v:?}")));
            }
        }
        for (name, v) in [
            ("hooks.connect_timeout_ms", h.connect_timeout_ms),
            ("hooks.publish_timeout_ms", h.publish_timeout_ms),
            ("hooks.concurrency", h.concurrency as u64),
        ] {
            if v == 0 {
                return Err(bad(name, "expected a number greater than 0"));
            }
        }
        if let Some(secret) = &h.secret
            && secret.len() < MIN_API_KEY_BYTES
        {
            return Err(bad(
                "hooks.secret",
                format!(
                    "is {} bytes; at least {MIN_API_KEY_BYTES} are needed",
                    secret.len()
                ),
            ));
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let w = &self.webhooks;
        let Some(url) = &w.url else { return Ok(()) };
        if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() {
            return Err(bad(
                "webhooks.url",
                format!(
                    "expected an http:// URL of the application's backend, got {url:?} \
                     (https is not spoken here: terminate TLS in a sidecar or the mesh)"
                ),
            ));
        }
        match &w.secret {
            None => {
                return Err(bad(
                    "webhooks.secret",
                    "required with webhooks.url: every webhook is signed",
                ));
            }
            Some(secret) if secret.len() < MIN_API_KEY_BYTES => {
                return Err(bad(
                    "webhooks.secret",
                    format!(
                        "is {} bytes; at least {MIN_API_KEY_BYTES} are needed",
                        secret.len()
                    ),
                ));
            }
            Some(_) => {}
        }
        let list = w.events.trim();
        if list != "*" {
            for name in list.split(',').map(str::trim) {
                if roomcast_core::events::EventName::parse(name).is_none() {
                    return Err(bad(
                        "webhooks.events",
                        format!(
                            "unknown event {name:?}; expected * or a comma-separated list of {}",
                            roomcast_core::events::EventName::ALL
                                .map(|e| e.as_str())
                                .join(", ")
                        ),
                    ));
                }
            }
        }
        for (name, v) in [
            ("webhooks.max_batch", w.max_batch as u64),
            ("webhooks.timeout_ms", w.timeout_ms),
            ("webhooks.retry_min_ms", w.retry_min_ms),
            ("webhooks.max_queue", w.max_queue as u64),
            ("webhooks.poll_ms", w.poll_ms),
        ] {
            if v == 0 {
                return Err(bad(name, "expected a number greater than 0"));
            }
        }
        if w.retry_max_ms < w.retry_min_ms {
            return Err(bad(
                "webhooks.retry_max_ms",
                "must not be less than webhooks.retry_min_ms",
            ));
        }
        if w.lease_ms < 2 * w.timeout_ms {
            return Err(bad(
                "webhooks.lease_ms",
                format!(
                    "is {} ms; at least twice webhooks.timeout_ms ({} ms) is needed, so a \
                     leader renews its lease between two POSTs",
                    w.lease_ms, w.timeout_ms
                ),
            ));
        }
        Ok(())
    }
}
