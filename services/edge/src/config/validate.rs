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
            ("history.max_len", self.history.max_len as u64),
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
