//! The hub's view of users rather than rooms: a user's multiplexed sockets
//! (frames to the user, the application's control requests, disconnects)
//! and the sockets following a user's online status. Same locking as the
//! rooms: sharded sync locks, never held across an `.await` (every
//! operation is a push into a bounded queue).

use std::sync::Arc;

use roomcast_protocol::{RoomId, Timestamp, UserId};

use super::{ConnId, Hub, KillReason, Outbound, offer};
use crate::outbox::Outbox;

/// What the application asks of a user's multiplexed sockets, carried out
/// by each socket's own task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Subscribe(RoomId),
    Unsubscribe(RoomId),
}

/// Control requests one socket may have waiting; past it the socket is
/// closed as a slow consumer (it is not keeping up with its own work).
pub const CONTROL_QUEUE: usize = 64;

/// A local multiplexed socket as its user's sockets are listed (for frames
/// to the user, to disconnect the user, and its control requests), or a
/// socket following a user's status (no control).
#[derive(Debug, Clone)]
pub(super) struct UserSocket {
    pub(super) conn: ConnId,
    pub(super) outbox: Arc<Outbox>,
    pub(super) control: Option<tokio::sync::mpsc::Sender<Control>>,
}

impl Hub {
    /// Lists multiplexed socket `conn` of `user` (for
    /// [`to_user`](Self::to_user), [`kill_user`](Self::kill_user) and
    /// [`control_user`](Self::control_user), whose requests go to
    /// `control`) until [`remove_socket`](Self::remove_socket).
    pub fn add_socket(
        &self,
        user: &UserId,
        conn: ConnId,
        outbox: Arc<Outbox>,
        control: tokio::sync::mpsc::Sender<Control>,
    ) {
        let mut shard = self.users.shard(user).write();
        shard.entry(user.clone()).or_default().push(UserSocket {
            conn,
            outbox,
            control: Some(control),
        });
    }

    /// Hands `request` to every local socket of `user` that takes control
    /// requests; how many.
    pub fn control_user(&self, user: &UserId, request: &Control) -> usize {
        let shard = self.users.shard(user).read();
        let Some(socks) = shard.get(user) else {
            return 0;
        };
        let mut n = 0;
        for s in socks {
            let Some(tx) = &s.control else { continue };
            match tx.try_send(request.clone()) {
                Ok(()) => n += 1,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    s.outbox.kill(KillReason::SlowConsumer);
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        n
    }

    pub fn remove_socket(&self, user: &UserId, conn: ConnId) {
        let mut shard = self.users.shard(user).write();
        if let Some(socks) = shard.get_mut(user) {
            socks.retain(|s| s.conn != conn);
            if socks.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Queues `frame` to every local socket of `user` that takes frames
    /// sent to its user; how many got it. A full queue closes that socket
    /// as a slow consumer, as room deliveries do.
    pub fn to_user(&self, user: &UserId, frame: &bytes::Bytes) -> usize {
        let shard = self.users.shard(user).read();
        let Some(socks) = shard.get(user) else {
            return 0;
        };
        let mut delivered = 0;
        for s in socks {
            let out = Outbound {
                frame: frame.clone(),
                offset: 0,
                published_at: Timestamp::now(),
                to: s.conn,
            };
            if offer(&s.outbox, out).is_ok() {
                delivered += 1;
            }
        }
        delivered
    }

    /// Socket `conn` follows `user`'s status (frames come with `to: conn`).
    pub fn watch(&self, user: &UserId, conn: ConnId, outbox: Arc<Outbox>) {
        let mut shard = self.watchers.shard(user).write();
        let list = shard.entry(user.clone()).or_default();
        if !list.iter().any(|s| s.conn == conn) {
            list.push(UserSocket {
                conn,
                outbox,
                control: None,
            });
        }
    }

    pub fn unwatch(&self, user: &UserId, conn: ConnId) {
        let mut shard = self.watchers.shard(user).write();
        if let Some(list) = shard.get_mut(user) {
            list.retain(|s| s.conn != conn);
            if list.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// `user` came online or went offline (cluster-wide): tells the local
    /// sockets that follow it.
    pub fn status_changed(&self, user: &UserId, online: bool) {
        let shard = self.watchers.shard(user).read();
        let Some(list) = shard.get(user) else {
            return;
        };
        let frame = bytes::Bytes::from(
            roomcast_protocol::ServerFrame::Status(roomcast_protocol::StatusFrame {
                user_id: user.clone(),
                online,
            })
            .to_json(),
        );
        for s in list {
            let out = Outbound {
                frame: frame.clone(),
                offset: 0,
                published_at: Timestamp::now(),
                to: s.conn,
            };
            // A full queue closes the socket as a slow consumer.
            let _ = offer(&s.outbox, out);
        }
    }

    /// Asks every local socket of `user` to close with `reason`: its
    /// multiplexed sockets, and (scanning the rooms) its single-room ones.
    /// How many memberships and sockets were told (a socket may count more
    /// than once).
    pub fn kill_user(&self, user: &UserId, reason: KillReason) -> usize {
        let mut n = {
            let shard = self.users.shard(user).read();
            let socks = shard.get(user).map_or(&[][..], |s| &s[..]);
            socks.iter().for_each(|s| s.outbox.kill(reason));
            socks.len()
        };
        for shard in self.rooms.all() {
            for members in shard.read().values() {
                for m in members.iter().filter(|m| m.user == *user) {
                    m.outbox.kill(reason);
                    n += 1;
                }
            }
        }
        n
    }
}
