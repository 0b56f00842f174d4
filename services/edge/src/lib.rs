//! The roomcast edge node: terminates WebSockets and serves the REST API.
//!
//! Library first: [`run`] serves a listener with given [`Deps`] until a
//! shutdown token fires, so tests bind port 0 and run it in-process; the
//! `roomcast-edge` binary is a thin `main` around it.
//!
//! - [`config`]: layered settings and their validation.
//! - [`app`]: the node's shared state.
//! - [`rest`]: the REST routes; [`gate`]: what every request passes first
//!   (CORS, the caller, its rate limits, the access table).
//! - [`ws`]: the WebSocket handshake and the per-connection task.
//! - [`access`]: the access table (who may call which route).
//! - [`control`]: the application's control of users (frames to a user,
//!   status, disconnect).
//! - [`hooks`]: the application's connect and publish hooks.
//! - [`webhooks`]: the dispatcher that delivers the backend's events.
//! - [`limits`]: per-caller limits (rates, connection counts, client address).
//! - [`auth`]: JWT and origin checks.
//! - [`metrics`]: Prometheus metrics.
//! - [`telemetry`]: OpenTelemetry traces (OTLP/HTTP), off unless configured.
//! - [`error`]: refusals and their mapping to statuses and close codes.
//! - [`server`]: the accept loop and the drain; [`deadline`]: the write
//!   deadline every connection gets.

pub mod access;
pub mod app;
pub mod auth;
pub mod config;
pub mod control;
pub mod deadline;
pub mod error;
pub mod gate;
pub mod hooks;
pub mod limits;
pub mod metrics;
pub mod rest;
pub mod server;
pub mod telemetry;
pub mod webhooks;
pub mod ws;

pub use app::Deps;
pub use config::Settings;
pub use server::run;
