//! The sections of the settings, each a struct with its defaults; the
//! loading, layering and validation live in the parent module.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

/// Webhooks: events POSTed to the application (see `webhooks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Where events are POSTed (`http://`); unset: no events are recorded.
    pub url: Option<String>,
    /// Signs every POST (`X-Roomcast-Signature`); required with `url`, at
    /// least 16 bytes.
    pub secret: Option<String>,
    /// The events sent, comma-separated: room_occupied, room_vacated,
    /// member_joined, member_left, message_stored, user_online,
    /// user_offline, or `*` for all.
    pub events: String,
    /// Events in one POST at most (a batch forms only when events wait).
    pub max_batch: usize,
    /// How long one POST may take before it counts as failed (and is retried).
    pub timeout_ms: u64,
    /// Backoff between retries of a failed POST: from min, doubling, to max.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Undelivered events kept at most; past it the oldest are dropped.
    pub max_queue: usize,
    /// How often an idle dispatcher looks for new events.
    pub poll_ms: u64,
    /// The dispatcher's lease: after its holder dies, another node takes
    /// over delivery within this time.
    pub lease_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            events: "*".into(),
            max_batch: 100,
            timeout_ms: 5000,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
            max_queue: 1_000_000,
            poll_ms: 100,
            lease_ms: 10_000,
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
    /// Rooms one multiplexed socket (`/ws`) may subscribe to at once.
    pub max_subscriptions: usize,
    /// Users one multiplexed socket may follow the status of (`watch`).
    pub max_watched: usize,
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
    /// Per room-name pattern: `PATTERN: len=N bytes=N age=D; ...` (e.g.
    /// `support-*: len=10000 age=30d; tmp-*: age=1h`), first match wins;
    /// other rooms keep `max_len` messages.
    pub retention: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// One Redis. Unset (and no `sentinels`): the embedded single-node
    /// backend.
    pub url: Option<String>,
    /// Sentinel mode: `host:port,host:port,...` of the sentinels that
    /// watch `sentinel_master` (instead of `url`).
    pub sentinels: Option<String>,
    /// The master group's name the sentinels know.
    pub sentinel_master: Option<String>,
    /// `AUTH` for the primary Sentinel names (with `url`, put it in the URL).
    pub password: Option<String>,
    /// `AUTH` for the sentinels themselves.
    pub sentinel_password: Option<String>,
    /// Prefix of every key and channel (several clusters can share a Redis).
    pub key_prefix: String,
    /// The most command connections a node opens (it uses two).
    pub pool_size: usize,
    /// Acknowledge a publish only once this many replicas have it (`WAIT`);
    /// 0: once the primary has it.
    pub ack_replicas: u32,
    /// How long a publish waits for those replicas before it is reported as
    /// `outcome_unknown` (stored on the primary, not confirmed on them).
    pub ack_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            sentinels: None,
            sentinel_master: None,
            password: None,
            sentinel_password: None,
            key_prefix: "roomcast".into(),
            pool_size: 32,
            ack_replicas: 0,
            ack_timeout_ms: 1000,
        }
    }
}

/// Presence: how big rooms show it (both backends), and the node leases
/// and sweeper of cluster-wide presence (Redis backend only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// Rooms with more members than this get summarised presence: a count
    /// and the first page for a newcomer, coalesced `presence_diff` frames
    /// instead of `user_joined` / `user_left`.
    pub summary_above: u64,
    /// How many members a newcomer of a summarised room is sent (1-1000).
    pub summary_page: usize,
    /// How often a node sends each summarised room's coalesced diff.
    pub diff_interval_ms: u64,
    /// Users named in one `presence_diff` (0-1000; the rest are counted in
    /// `omitted`). Every member gets every diff, so this bounds the bytes a
    /// join or leave costs each of them; 0 sends the count alone.
    pub diff_max: usize,
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
        let summary = roomcast_core::presence::Summary::default();
        Self {
            summary_above: summary.above,
            summary_page: summary.page,
            diff_interval_ms: 250,
            diff_max: 20,
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
            retention: String::new(),
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
            max_subscriptions: 100,
            max_watched: 1000,
        }
    }
}
