//! WebSocket connections: the handshake ([`handshake`]: who may connect to
//! which room), and the per-connection task ([`conn`]: one task, a bounded
//! outbound queue, `select!` over socket, queue, heartbeat and shutdown).

mod close;
pub mod conn;
pub mod handshake;
mod rate;
mod recovery;
