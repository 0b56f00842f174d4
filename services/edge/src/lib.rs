//! The roomcast edge node: terminates WebSockets and serves the REST API.
//!
//! Library first: [`run`] serves a listener with given [`Deps`] until a
//! shutdown token fires, so tests bind port 0 and run it in-process; the
//! `roomcast-edge` binary is a thin `main` around it.
//!
//! - [`config`]: layered settings and their validation.
//! - [`app`]: the node's shared state.
//! - [`rest`]: the REST routes and CORS.
//! - [`ws`]: the WebSocket handshake and the per-connection task.
//! - [`auth`]: JWT and origin checks.
//! - [`metrics`]: Prometheus metrics.
//! - [`telemetry`]: OpenTelemetry traces (OTLP/HTTP), off unless configured.
//! - [`error`]: refusals and their mapping to statuses and close codes.
//! - [`server`]: the accept loop and the drain.

pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod rest;
pub mod server;
pub mod telemetry;
pub mod ws;

pub use app::Deps;
pub use config::Settings;
pub use server::run;
