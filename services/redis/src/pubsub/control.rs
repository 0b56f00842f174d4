//! The control channel (`Keys::control_channel`): requests about users
//! (a frame to a user, a status change, a disconnect, a server-side
//! subscribe or unsubscribe) that every node carries out on its own sockets.

use bytes::Bytes;
use roomcast_core::hub::{Control, Hub};
use roomcast_protocol::{RoomId, UserId};

/// Carries out a message of the control channel (`Keys::control_channel`)
/// on this node's sockets: a frame to a user, a user's status change
/// (`s <0/1> <user>`, from the presence scripts), a disconnect, a
/// server-side subscribe (`j <user> <room>`) or unsubscribe (`l ...`). Best effort like every publish: a node whose
/// pub/sub is down misses it (and is not ready meanwhile).
pub(super) fn control(hub: &Hub, payload: &[u8]) {
    let mut parts = payload.splitn(3, |b| *b == b' ');
    let (Some(kind), Some(a), rest) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let user = |id: &[u8]| {
        std::str::from_utf8(id)
            .ok()
            .and_then(|u| UserId::parse(u).ok())
    };
    match (kind, rest) {
        (b"u", Some(frame)) => {
            if let Some(user) = user(a) {
                hub.to_user(&user, &Bytes::copy_from_slice(frame));
            }
        }
        (b"s", Some(id)) => {
            if let Some(user) = user(id) {
                hub.status_changed(&user, a == b"1");
            }
        }
        (b"j" | b"l", Some(room)) => {
            let room = std::str::from_utf8(room)
                .ok()
                .and_then(|r| RoomId::parse(r).ok());
            if let (Some(user), Some(room)) = (user(a), room) {
                let request = if kind == b"j" {
                    Control::Subscribe(room)
                } else {
                    Control::Unsubscribe(room)
                };
                hub.control_user(&user, &request);
            }
        }
        (b"k", Some(id)) => {
            if let Some(user) = user(id) {
                hub.kill_user(&user, roomcast_core::hub::kill_reason(a == b"1"));
            }
        }
        _ => tracing::debug!("unreadable control message"),
    }
}
