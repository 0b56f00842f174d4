//! Who may do what over REST: the access table, decided in one place.
//!
//! Every request is attributed to a [`Caller`] (anonymous, a user with a
//! valid token, or the application backend with the server key) and mapped
//! to an [`Op`] from its method and route; [`Access::decide`] is the table
//! (docs/protocol.md prints it). The middleware in `rest` runs it before any
//! handler, so a handler never sees a request the table refuses. Sockets
//! have their own admission (`ws::handshake`), which applies the same token
//! rules.
//!
//! With auth off (no JWT key: development) the node is open as it always
//! was, except that server publishing needs the server key.

use http::{HeaderMap, Method};
use roomcast_protocol::{RoomId, UserId};

use crate::auth::{Authenticator, Identity, find_token};
use crate::config::Settings;
use crate::error::ApiError;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    /// A valid token: acts as its `sub`, within its `rooms` claim.
    User(Identity),
    /// The application backend (the server API key).
    Server,
}

impl Caller {
    /// The metric label of a refused caller.
    fn kind(&self) -> &'static str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::User(_) => "user",
            Caller::Server => "server",
        }
    }
}

/// What a request does, as the table names it. Ids are as they came in the
/// path (validated by the handlers: an invalid one is a 404 there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    ListUsers,
    CreateUser,
    ReadUser(&'a str),
    ListRooms,
    CreateRoom,
    ReadRoom(&'a str),
    JoinRoom(&'a str),
    ReadHistory(&'a str),
    ReadPresence(&'a str),
    Publish(&'a str),
    /// A frame to a user's sockets; disconnecting a user; subscribing its
    /// sockets: the backend's.
    SendToUser(&'a str),
    DisconnectUser(&'a str),
    ControlUser(&'a str),
    /// Whether a user is online.
    UserStatus(&'a str),
    Metrics,
    /// Health, readiness, the page and the client module.
    Public,
    /// A WebSocket route: admitted by the handshake itself.
    Socket,
    /// No such route (the fallback answers 404).
    Unknown,
}

impl<'a> Op<'a> {
    /// The operation of `method` on `path`, from the route table in `rest`.
    pub fn of(method: &Method, path: &'a str) -> Op<'a> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        match (parts.as_slice(), get, post) {
            (["users"], true, _) => Op::ListUsers,
            (["users"], _, true) => Op::CreateUser,
            (["users", id], true, _) => Op::ReadUser(id),
            (["users", id, "messages"], _, true) => Op::SendToUser(id),
            (["users", id, "disconnect"], _, true) => Op::DisconnectUser(id),
            (["users", id, "subscribe" | "unsubscribe"], _, true) => Op::ControlUser(id),
            (["users", id, "status"], true, _) => Op::UserStatus(id),
            (["rooms"], true, _) => Op::ListRooms,
            (["rooms"], _, true) => Op::CreateRoom,
            (["rooms", id], true, _) => Op::ReadRoom(id),
            (["rooms", id, "join"], _, true) => Op::JoinRoom(id),
            (["rooms", id, "messages"], true, _) => Op::ReadHistory(id),
            (["rooms", id, "messages"], _, true) => Op::Publish(id),
            (["rooms", id, "presence"], true, _) => Op::ReadPresence(id),
            (["metrics"], true, _) => Op::Metrics,
            (
                [""] | ["chat"] | ["client.js"] | ["session.js"] | ["health"] | ["ready"],
                true,
                _,
            ) => Op::Public,
            (["ws"], true, _)
            | (["ws", _, _], true, _)
            | (["api", "v1", "chats", _, "ws"], true, _) => Op::Socket,
            _ => Op::Unknown,
        }
    }
}

/// The access table's inputs, from the settings.
#[derive(Debug, Clone)]
pub struct Access {
    auth_on: bool,
    server_key: Option<String>,
    users_create_rooms: bool,
    users_join_rooms: bool,
    /// `/metrics` is served on `METRICS_PORT` only.
    metrics_elsewhere: bool,
}

/// A refusal and the label it is counted under.
#[derive(Debug)]
pub struct Denied {
    pub error: ApiError,
    /// `unauthorized` or `forbidden`.
    pub reason: &'static str,
    pub caller: &'static str,
}

impl Access {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            auth_on: s.auth.jwt_secret.is_some() || s.auth.jwt_public_key_file.is_some(),
            server_key: s.auth.server_api_key.clone(),
            users_create_rooms: s.auth.users_create_rooms,
            users_join_rooms: s.auth.users_join_rooms,
            metrics_elsewhere: s.server.metrics_port.is_some(),
        }
    }

    /// Who sent `headers` (and `query_token`, a socket-style `?token=`).
    /// The server key is recognised in `Authorization: Bearer`; a token,
    /// with auth on, in the query, the header or a `token` cookie. A token
    /// that does not verify is refused (401), never taken as anonymous.
    pub fn identify(
        &self,
        auth: &Authenticator,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if let (Some(given), Some(key)) = (bearer, &self.server_key)
            && constant_time_eq(given.as_bytes(), key.as_bytes())
        {
            return Ok(Caller::Server);
        }
        if !self.auth_on {
            return Ok(Caller::Anonymous);
        }
        match find_token(query_token, headers) {
            None => Ok(Caller::Anonymous),
            Some(token) => auth
                .verify(Some(token))
                .map(Caller::User)
                .map_err(|e| ApiError::Unauthorized(e.to_string())),
        }
    }

    /// The access table.
    pub fn decide(&self, caller: &Caller, op: Op<'_>) -> Result<(), Denied> {
        use Caller::{Anonymous, Server, User};
        let deny = |error: ApiError, reason| {
            Err(Denied {
                error,
                reason,
                caller: caller.kind(),
            })
        };
        let forbidden = |why: &str| deny(ApiError::Forbidden(why.to_owned()), "forbidden");
        let unauthorized = |why: &str| deny(ApiError::Unauthorized(why.to_owned()), "unauthorized");
        match op {
            Op::Public | Op::Socket | Op::Unknown => return Ok(()),
            Op::Metrics if self.metrics_elsewhere => {
                return deny(ApiError::NotFound("Not Found"), "not_found");
            }
            Op::Metrics => return Ok(()),
            Op::Publish(_) | Op::SendToUser(_) | Op::DisconnectUser(_) | Op::ControlUser(_) => {
                return match caller {
                    Server => Ok(()),
                    _ if self.server_key.is_none() => unauthorized(
                        "the application backend's routes are disabled: SERVER_API_KEY (PUBLISH_API_KEY) is not set",
                    ),
                    User(_) => forbidden("only the application backend (server key) may do this"),
                    Anonymous => unauthorized("missing or wrong server key"),
                };
            }
            _ => {}
        }
        if !self.auth_on {
            return Ok(());
        }
        let room_ok =
            |id: &Identity, room: &str| RoomId::parse(room).is_ok_and(|r| id.may_join(&r));
        match (caller, op) {
            (Server, _) => Ok(()),
            (Anonymous, _) => unauthorized("a token is required"),
            (User(_), Op::ListUsers | Op::CreateUser | Op::ListRooms) => {
                forbidden("only the application backend (server key) may do this")
            }
            // Who is online is what a chat's contact list shows everyone.
            (User(_), Op::UserStatus(_)) => Ok(()),
            (User(id), Op::ReadUser(user)) if id.user_id.as_str() == user => Ok(()),
            (User(_), Op::ReadUser(_)) => forbidden("a user may read only itself"),
            (User(_), Op::CreateRoom) if self.users_create_rooms => Ok(()),
            (User(_), Op::CreateRoom) => {
                forbidden("users may not create rooms (auth.users_create_rooms is off)")
            }
            (User(id), Op::JoinRoom(room)) if self.users_join_rooms && room_ok(id, room) => Ok(()),
            (User(_), Op::JoinRoom(_)) if !self.users_join_rooms => {
                forbidden("users may not join over REST (auth.users_join_rooms is off)")
            }
            (User(id), Op::ReadRoom(room) | Op::ReadHistory(room) | Op::ReadPresence(room))
                if room_ok(id, room) =>
            {
                Ok(())
            }
            (User(_), _) => forbidden("room not allowed by the token"),
        }
    }

    /// Whether `caller` may act for `user` (e.g. the `user_id` of a REST
    /// join): the backend for anyone, a user for itself, anyone with auth off.
    pub fn may_act_as(&self, caller: &Caller, user: &UserId) -> Result<(), ApiError> {
        match caller {
            Caller::User(id) if id.user_id != *user => {
                Err(ApiError::Forbidden("a user may act only for itself".into()))
            }
            _ => Ok(()),
        }
    }
}

/// Compares without an early exit, so response timing says nothing about
/// how much of a guessed key was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_maps_to_its_operation() {
        let cases = [
            (Method::GET, "/users", Op::ListUsers),
            (Method::POST, "/users", Op::CreateUser),
            (Method::GET, "/users/u1", Op::ReadUser("u1")),
            (Method::GET, "/rooms", Op::ListRooms),
            (Method::POST, "/rooms", Op::CreateRoom),
            (Method::GET, "/rooms/r", Op::ReadRoom("r")),
            (Method::POST, "/rooms/r/join", Op::JoinRoom("r")),
            (Method::GET, "/rooms/r/messages", Op::ReadHistory("r")),
            (Method::POST, "/rooms/r/messages", Op::Publish("r")),
            (Method::GET, "/rooms/r/presence", Op::ReadPresence("r")),
            (Method::GET, "/metrics", Op::Metrics),
            (Method::GET, "/", Op::Public),
            (Method::GET, "/health", Op::Public),
            (Method::GET, "/ws/r/u", Op::Socket),
            (Method::GET, "/ws", Op::Socket),
            (Method::GET, "/api/v1/chats/r/ws", Op::Socket),
            (Method::GET, "/rooms/r/elsewhere", Op::Unknown),
            (Method::DELETE, "/rooms/r", Op::Unknown),
        ];
        for (m, p, op) in cases {
            assert_eq!(Op::of(&m, p), op, "{m} {p}");
        }
    }
}
