//! The core of roomcast, free of any transport.
//!
//! - [`store`], [`history`], [`broker`], [`presence`]: the small backend
//!   traits, each with an in-memory implementation here and a Redis one in
//!   `roomcast-redis`. [`Backend`] bundles one of each.
//! - [`events`]: webhook events and the queue they wait in for delivery.
//! - [`hub`]: this node's map from rooms to local connections. It hands each
//!   connection `Bytes` through its [`outbox`] (a bounded queue and a kill
//!   switch) and never sees a socket.
//! - [`envelope`]: what travels from the publishing node to every node that
//!   serves the room: the frame, encoded once, plus routing metadata.
//! - `conformance` (feature): the behavioural suite every backend passes.

pub mod backend;
pub mod broker;
pub mod envelope;
pub mod error;
pub mod events;
pub mod history;
pub mod hub;
pub mod outbox;
pub mod pattern;
pub mod presence;
pub mod retention;
pub mod shard;
pub mod store;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use backend::{Backend, BackendStats};
pub use error::BackendError;
pub use roomcast_protocol as protocol;
