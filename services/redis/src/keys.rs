//! Every Redis key and channel roomcast uses, in one place.
//!
//! Ids are validated (`A-Z a-z 0-9 - _ .`, see `roomcast_protocol::ids`)
//! before they get here, so `:` always separates parts and one room's id
//! can never name another room's keys.
//!
//! One script builds keys itself: the sweep, which learns the rooms and
//! users of a dead node's connections only inside Redis. It gets the
//! pieces from here ([`Keys::presence_parts`]) and joins them the way
//! [`Keys::presence`] and [`Keys::presence_conns`] do (a test checks it).

use roomcast_protocol::{RoomId, UserId};

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn k(&self, parts: &[&str]) -> String {
        let mut s = self.prefix.clone();
        for p in parts {
            s.push(':');
            s.push_str(p);
        }
        s
    }

    /// HASH `name` (the username), `created_at` (micros).
    pub fn user(&self, id: &UserId) -> String {
        self.k(&["user", id.as_str()])
    }
    /// ZSET user ids by creation time.
    pub fn users(&self) -> String {
        self.k(&["users"])
    }
    /// HASH `name`, `created_at`.
    pub fn room(&self, id: &RoomId) -> String {
        self.k(&["room", id.as_str()])
    }
    /// ZSET room ids by creation time.
    pub fn rooms(&self) -> String {
        self.k(&["rooms"])
    }
    /// SET of user ids that joined the room.
    pub fn members(&self, room: &RoomId) -> String {
        self.k(&["members", room.as_str()])
    }
    /// The room's offset counter.
    pub fn seq(&self, room: &RoomId) -> String {
        self.k(&["seq", room.as_str()])
    }
    /// STREAM of stored frames; entry id `<offset>-0`.
    pub fn log(&self, room: &RoomId) -> String {
        self.k(&["log", room.as_str()])
    }
    /// Bytes of frames in the room's log (kept only for rooms with a
    /// `bytes=` retention bound).
    pub fn log_bytes(&self, room: &RoomId) -> String {
        self.k(&["logbytes", room.as_str()])
    }
    /// A publish's de-duplication record: `<offset> <id> <micros>`, expiring
    /// after the window. The `client_id` is the sender's own string (at most
    /// 128 bytes); as the last part of the key it cannot reach another key.
    pub fn published(&self, room: &RoomId, user: &UserId, client_id: &str) -> String {
        self.k(&["pub", room.as_str(), user.as_str(), client_id])
    }
    /// The room's history epoch.
    pub fn epoch(&self, room: &RoomId) -> String {
        self.k(&["epoch", room.as_str()])
    }
    /// Pub/sub channel of the room.
    pub fn channel(&self, room: &RoomId) -> String {
        self.k(&["ch", room.as_str()])
    }
    /// The prefix of room channels, to read a room id back from a channel.
    pub fn channel_prefix(&self) -> String {
        self.k(&["ch", ""])
    }
    /// The cluster's control channel, which every node subscribes to:
    /// frames to a user (`u <user> <frame>`), user disconnects
    /// (`k <reconnect 0/1> <user>`), status changes (`s <online 0/1>
    /// <user>`) and server-side (un)subscribes (`j|l <user> <room>`), for
    /// whichever nodes hold the sockets concerned.
    pub fn control_channel(&self) -> String {
        self.k(&["ctl"])
    }
    /// A counter written before each `WAIT` for replicas (see `replicas`).
    pub fn replica_barrier(&self) -> String {
        self.k(&["barrier"])
    }
    /// A node's own channel, for the pub/sub round-trip health check.
    pub fn node_channel(&self, node: &str) -> String {
        self.k(&["nodech", node])
    }
    /// HASH user id → username of everyone online in the room.
    pub fn presence(&self, room: &RoomId) -> String {
        self.k(&["pres", room.as_str()])
    }
    /// ZSET (all scores 0, so ordered by user id) of everyone online in the
    /// room: the pages of a big room's presence, read in O(page).
    pub fn presence_order(&self, room: &RoomId) -> String {
        self.k(&["presz", room.as_str()])
    }
    /// SET of connection keys of one user in one room.
    pub fn presence_conns(&self, room: &RoomId, user: &UserId) -> String {
        self.k(&["pconn", room.as_str(), user.as_str()])
    }
    /// The literal pieces the sweep script joins into presence keys:
    /// `(pres_prefix, presz_prefix, pconn_prefix, separator)`, so that
    /// `pres_prefix .. room` is [`presence`](Self::presence),
    /// `presz_prefix .. room` is [`presence_order`](Self::presence_order) and
    /// `pconn_prefix .. room .. separator .. user` is
    /// [`presence_conns`](Self::presence_conns).
    pub fn presence_parts(&self) -> (String, String, String, &'static str) {
        (
            self.k(&["pres", ""]),
            self.k(&["presz", ""]),
            self.k(&["pconn", ""]),
            ":",
        )
    }
    /// SET of rooms that have anyone online (for the online-users count).
    pub fn presence_rooms(&self) -> String {
        self.k(&["presrooms"])
    }
    /// SET of connection keys of one user in any room (online anywhere).
    pub fn user_conns(&self, user: &UserId) -> String {
        self.k(&["uconn", user.as_str()])
    }
    /// The prefix the sweep script puts before a user id to make
    /// [`user_conns`](Self::user_conns).
    pub fn user_conns_prefix(&self) -> String {
        self.k(&["uconn", ""])
    }
    /// STREAM of webhook events waiting for delivery (consumer group
    /// `webhooks`): fields `n` name, `r` room, `u` user, `un` username,
    /// `m` message frame.
    pub fn events(&self) -> String {
        self.k(&["events"])
    }
    /// The webhook dispatcher's lease: who delivers.
    pub fn events_leader(&self) -> String {
        self.k(&["events", "leader"])
    }
    /// SET of `room user conn` entries a node holds, for the sweeper.
    pub fn node_conns(&self, node: &str) -> String {
        self.k(&["nodeconns", node])
    }
    /// A node's lease: exists while the node heartbeats.
    pub fn lease(&self, node: &str) -> String {
        self.k(&["lease", node])
    }
    /// STRING a node writes with every health round trip (expires).
    pub fn node_health(&self, node: &str) -> String {
        self.k(&["health", node])
    }
    /// SET of node ids that hold (or held) a lease.
    pub fn nodes(&self) -> String {
        self.k(&["nodes"])
    }
    /// The sweeper leader lock.
    pub fn sweeper_leader(&self) -> String {
        self.k(&["sweeper", "leader"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_scripts_key_pieces_make_the_same_keys() {
        let k = Keys::new("p");
        let (room, user) = (RoomId::parse("r-1").unwrap(), UserId::parse("u.1").unwrap());
        let (pres, presz, pconn, sep) = k.presence_parts();
        assert_eq!(format!("{pres}{room}"), k.presence(&room));
        assert_eq!(format!("{presz}{room}"), k.presence_order(&room));
        assert_eq!(
            format!("{pconn}{room}{sep}{user}"),
            k.presence_conns(&room, &user)
        );
        assert_eq!(
            format!("{}{user}", k.user_conns_prefix()),
            k.user_conns(&user)
        );
    }
}
