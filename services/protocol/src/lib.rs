//! The roomcast wire protocol, apart from any I/O.
//!
//! This crate owns the exact JSON shapes that clients see: the frames a client
//! may send ([`ClientFrame`]), the frames the server sends ([`ServerFrame`]),
//! the REST bodies ([`rest`]), the error codes carried in `error` frames
//! ([`ErrorCode`]) and the WebSocket close codes ([`CloseCode`]). It also owns
//! the validation of the identifiers that arrive in URLs ([`RoomId`],
//! [`UserId`]), because an id is the first untrusted input a server meets and
//! it later becomes part of storage keys.
//!
//! Nothing here knows about sockets, Redis or tokio, so the golden tests in
//! `tests/golden.rs` can pin every shape, and any server or client written in
//! Rust can reuse the types.

mod client;
mod codes;
mod ids;
pub mod rest;
mod server;
mod timestamp;

pub use client::{ClientFrame, FrameError, MAX_CLIENT_ID_LEN, client_id_of};
pub use codes::{CloseCode, ErrorCode};
pub use ids::{IdError, MAX_ID_LEN, RoomId, UserId};
pub use server::{
    AckFrame, ConnectedFrame, ErrorFrame, MessageFrame, PresenceDiffFrame, PresenceFrame,
    PresenceUser, RefreshedFrame, RoomRef, ServerFrame, StatusFrame, SubscribedFrame, TypingFrame,
    UserEventFrame, UserMessageFrame,
};
pub use timestamp::{Timestamp, TimestampError};
