//! Node leases and the sweeper that clears the presence of dead nodes.
//!
//! Every edge holds a lease (`lease:<node>`, a key with a TTL) and renews it
//! every `interval`. The sweeper (in `roomcast-presence`, or in-process on
//! an edge) runs on one leader at a time (a lock with expiry) and, for each
//! known node whose lease is gone, atomically removes its connections from
//! presence and publishes `user_left` (in a big room, a one-user
//! `presence_diff`) for every user who has no connection left anywhere. With the default 1 s heartbeat, 3 s TTL and 0.5 s sweep,
//! a killed node's users are announced left within about 3.5 s, while a
//! live node can miss two heartbeats before anyone thinks it dead.
//!
//! A lease that expired while Redis itself was unreachable (or restarting:
//! expiry times are absolute, so a lease lapses during the downtime) says
//! nothing about its node. The sweeper therefore sweeps only after its own
//! connection has been healthy for a full TTL and Redis has been up for one
//! (`uptime_in_seconds`), which gives every live node a TTL to renew. A node
//! that renews a lapsed lease nobody swept has lost nothing and keeps its
//! sockets; only a node that was swept tells its clients to resync.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use roomcast_core::envelope::Envelope;
use roomcast_core::hub::{ConnId, Hub, KillReason};
use roomcast_core::{BackendError, BackendStats};
use roomcast_protocol::{PresenceUser, RoomId, ServerFrame, Timestamp, UserEventFrame, UserId};
use tokio_util::sync::CancellationToken;

use crate::client::{Redis, unavailable};
use crate::envelope;
use crate::presence::{RedisPresence, Registered, node_entry};
use crate::scripts::{LEASE, LOCK, SWEEP_NODE};
use roomcast_core::presence::{conn_key, diff_of};

/// Lease and sweep timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub lease_ttl: Duration,
    pub sweep_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(3),
            sweep_every: Duration::from_millis(500),
        }
    }
}

/// Removes `node`'s connections from presence (only if its lease is gone,
/// unless `force`) and announces `user_left` for users now gone. Returns
/// how many were announced.
pub async fn sweep_node(redis: &Redis, node: &str, force: bool) -> Result<u64, BackendError> {
    let k = &redis.keys;
    let (pres, presz, pconn, sep) = k.presence_parts();
    let left: Vec<String> = redis
        .timed(async {
            let mut c = redis.conn().await?;
            SWEEP_NODE
                .key(k.node_conns(node))
                .key(k.lease(node))
                .key(k.nodes())
                .key(k.presence_rooms())
                .key(k.events())
                .arg(node)
                .arg(if force { "1" } else { "0" })
                .arg(&pres)
                .arg(&pconn)
                .arg(sep)
                .arg(k.user_conns_prefix())
                .arg(redis.events_maxlen(false))
                .arg(k.control_channel())
                .arg(&presz)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)
        })
        .await?;
    let mut announced = 0;
    for gone in left.chunks_exact(4) {
        let (Ok(room), Ok(user_id), Ok(count)) = (
            RoomId::parse(&gone[0]),
            UserId::parse(&gone[1]),
            gone[3].parse::<u64>(),
        ) else {
            continue;
        };
        let user = PresenceUser {
            user_id,
            username: gone[2].clone(),
        };
        announce_left(redis, &room, user, count).await?;
        announced += 1;
    }
    if announced > 0 {
        tracing::info!(node, users = announced, "swept presence of a dead node");
    }
    Ok(announced)
}

/// Publishes `user_left` (or in a big room, the one-user diff) for a user
/// whose last connection in `room` went without its node saying so,
/// leaving `count` members. (Published after the sweep script: a sweep is
/// of a dead node's users, who rejoin, if at all, through another node.)
async fn announce_left(
    redis: &Redis,
    room: &RoomId,
    user: PresenceUser,
    count: u64,
) -> Result<(), BackendError> {
    let frame = if redis.summary.as_diff(false, count) {
        ServerFrame::PresenceDiff(diff_of(room, &user, false, count))
    } else {
        user_left(room, user)
    };
    let payload = envelope::encode_event(&Envelope::event(
        room.clone(),
        Bytes::from(frame.to_json()),
        None,
        "sweeper".into(),
    ));
    redis.publish(redis.keys.channel(room), payload).await
}

/// The `user_left` frame of `user` in `room`, now.
pub fn user_left(room: &RoomId, user: PresenceUser) -> ServerFrame {
    ServerFrame::UserLeft(UserEventFrame {
        room_id: room.clone(),
        user_id: user.user_id,
        username: user.username,
        timestamp: Timestamp::now(),
    })
}

/// Removes this node's presence entries that no local connection backs any
/// more (a connection that ended while Redis was unreachable could not
/// remove its own), announcing `user_left` where it was a user's last.
/// Returns how many entries were removed.
pub async fn reconcile(redis: &Redis, node: &str, hub: &Hub) -> Result<u64, BackendError> {
    // Redis first, the hub second: an entry exists only after its
    // connection joined the hub, so a live connection is always in the
    // snapshot taken afterwards.
    let entries = node_entries(redis, node).await?;
    let live: HashSet<String> = hub
        .local_connections()
        .into_iter()
        .map(|(room, user, conn)| node_entry(&room, &user, &conn_key(node, conn)))
        .collect();
    let presence = RedisPresence::new(redis.clone());
    let mut removed = 0;
    for entry in entries.iter().filter(|e| !live.contains(*e)) {
        let mut parts = entry.split(' ');
        let (Some(room), Some(user), Some(conn)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(room), Ok(user)) = (RoomId::parse(room), UserId::parse(user)) else {
            continue;
        };
        let username: Option<String> = redis
            .timed(async {
                let mut c = redis.conn().await?;
                redis::cmd("HGET")
                    .arg(redis.keys.presence(&room))
                    .arg(user.as_str())
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let user = PresenceUser {
            username: username.unwrap_or_else(|| user.to_string()),
            user_id: user,
        };
        let left = Bytes::from(user_left(&room, user.clone()).to_json());
        presence
            .leave_script(&room, &user, conn, redis.summary, left)
            .await?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(
            node,
            removed,
            "removed presence entries of connections that ended during an outage"
        );
    }
    Ok(removed)
}

/// After a lost lease: asks exactly the local connections whose presence
/// entries are gone (swept, or lost with Redis's data) to reconnect and
/// resynchronize. Connections registered since (clients that already came
/// back after a history reset, say) keep going, and so do connections whose
/// registration had not returned when the entries were read: it is being
/// written into Redis's current data, so nothing of theirs was lost (a
/// client that came back just as the loss was noticed would otherwise be
/// closed a second time). If the entries cannot be read, every connection
/// resyncs.
async fn resync_swept(redis: &Redis, node: &str, hub: &Hub, confirmed: &Registered) -> usize {
    // Taken before the read: an entry confirmed by then is in what it reads.
    let confirmed = confirmed.snapshot();
    match node_entries(redis, node).await {
        Ok(entries) => {
            // Connection ids are unique on a node; a multiplexed
            // connection has one entry per room.
            let present: HashSet<(RoomId, ConnId)> = hub
                .local_connections()
                .into_iter()
                .filter(|(room, user, conn)| {
                    entries.contains(&node_entry(room, user, &conn_key(node, *conn)))
                })
                .map(|(room, _, conn)| (room, conn))
                .collect();
            hub.kill_where(
                |room, conn| {
                    let key = (room.clone(), conn);
                    confirmed.contains(&key) && !present.contains(&key)
                },
                KillReason::Resync,
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this node's presence entries; resyncing every connection");
            hub.kill_all(KillReason::Resync)
        }
    }
}

/// The presence entries `node` holds (`presence::node_entry`).
async fn node_entries(redis: &Redis, node: &str) -> Result<HashSet<String>, BackendError> {
    redis
        .timed(async {
            let mut c = redis.conn().await?;
            redis::cmd("SMEMBERS")
                .arg(redis.keys.node_conns(node))
                .query_async(&mut c)
                .await
                .map_err(unavailable)
        })
        .await
}

/// Holds this node's lease until shutdown. First clears what an earlier
/// life of the same node id left behind. If the lease is ever found lost
/// (Redis unreachable for longer than the TTL, so the sweeper may have
/// announced this node's users as gone), every local client is told to
/// reconnect, which re-registers its presence.
pub async fn hold_lease(
    redis: Redis,
    node: String,
    hub: Arc<Hub>,
    registered: Arc<Registered>,
    stats: Arc<BackendStats>,
    timing: Timing,
    shutdown: CancellationToken,
) {
    let owner = uuid::Uuid::new_v4().to_string();
    let mut first = true;
    // After a failed renewal the next try comes sooner, so a node renews
    // within moments of Redis coming back.
    let retry = (timing.heartbeat / 4).max(Duration::from_millis(50));
    let mut wait = Duration::ZERO;
    // Good renewals to wait before reconciling presence (None: not due).
    // After an outage, waiting one beat gives other nodes time to
    // resubscribe, so they hear the `user_left` it may publish.
    let mut reconcile_in: Option<u32> = None;
    let mut beats: u64 = 0;
    let mut reconnects = BackendStats::get(&stats.broker_reconnects);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = timing.heartbeat;
        if first {
            match sweep_node(&redis, &node, true).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot clear this node's earlier presence yet");
                    wait = retry;
                    continue;
                }
            }
        }
        let k = &redis.keys;
        let renewed: Result<i64, BackendError> = redis
            .timed(async {
                let mut c = redis.conn().await?;
                LEASE
                    .key(k.lease(&node))
                    .key(k.nodes())
                    .arg(&node)
                    .arg(&owner)
                    .arg(timing.lease_ttl.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await;
        let ok = renewed.is_ok();
        match renewed {
            Ok(1) => {}
            Ok(_) if first => tracing::info!(node, "presence lease taken"),
            Ok(2) => {
                tracing::info!(
                    node,
                    "presence lease had lapsed (Redis unreachable) but was not swept; renewed, nothing lost"
                );
                reconcile_in.get_or_insert(2);
            }
            Ok(_) => {
                let n = resync_swept(&redis, &node, &hub, &registered).await;
                tracing::error!(
                    node,
                    connections = n,
                    "presence lease was lost (Redis unreachable past the TTL, or another process uses this NODE_ID); asking clients to reconnect"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                reconcile_in = Some(2);
                wait = retry;
            }
        }
        first = false;
        beats += 1;
        // An outage since the last beat (the pub/sub session reconnected) or
        // a removal that failed: entries may be stale.
        let now_reconnects = BackendStats::get(&stats.broker_reconnects);
        if now_reconnects != reconnects
            || stats
                .presence_dirty
                .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            reconnects = now_reconnects;
            reconcile_in.get_or_insert(2);
        }
        if ok {
            if beats.is_multiple_of(30) {
                reconcile_in.get_or_insert(1);
            }
            reconcile_in = match reconcile_in {
                Some(n) if n > 1 => Some(n - 1),
                Some(_) => match reconcile(&redis, &node, &hub).await {
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "presence reconcile failed; will retry");
                        Some(1)
                    }
                },
                None => None,
            };
        }
    }
    // Stop renewing and let the lease lapse: the drain that follows removes
    // each connection from presence itself, and whatever a drain cut short
    // is cleared by the sweeper once the TTL is over. Giving the lease back
    // now would let the sweeper race the drain.
}

/// Sweeps dead nodes while this process leads; until shutdown.
pub async fn run_sweeper(
    redis: Redis,
    stats: Arc<BackendStats>,
    timing: Timing,
    shutdown: CancellationToken,
) {
    let owner = uuid::Uuid::new_v4().to_string();
    let lock_ttl = (timing.sweep_every * 6).max(Duration::from_secs(3));
    let mut tick = tokio::time::interval(timing.sweep_every);
    let mut leading = false;
    // Since when this process has reached Redis without a failure.
    let mut healthy_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let trusted = healthy_since.is_some_and(|t| now - t >= timing.lease_ttl);
        match sweep_once(&redis, &owner, lock_ttl, timing.lease_ttl, trusted).await {
            Ok(Some(announced)) => {
                if !leading {
                    tracing::info!("presence sweeper leading");
                }
                leading = true;
                healthy_since.get_or_insert(now);
                BackendStats::add(&stats.presence_sweeps, 1);
                BackendStats::add(&stats.presence_swept_users, announced);
            }
            Ok(None) => {
                leading = false;
                healthy_since.get_or_insert(now);
            }
            Err(e) => {
                healthy_since = None;
                BackendStats::add(&stats.presence_sweep_errors, 1);
                tracing::warn!(error = %e, "presence sweep failed");
            }
        }
    }
}

/// One pass: `None` when another process leads. Nodes are swept only when
/// `trusted` (this process has reached Redis for a full TTL) and Redis has
/// been up for a full TTL; otherwise a lapsed lease may only mean Redis was
/// away, and its node gets the time to renew.
async fn sweep_once(
    redis: &Redis,
    owner: &str,
    lock_ttl: Duration,
    lease_ttl: Duration,
    trusted: bool,
) -> Result<Option<u64>, BackendError> {
    let k = &redis.keys;
    let (lead, nodes, uptime): (i64, Vec<String>, Duration) = redis
        .timed(async {
            let mut c = redis.conn().await?;
            let lead: i64 = LOCK
                .key(k.sweeper_leader())
                .arg(owner)
                .arg(lock_ttl.as_millis() as u64)
                .invoke_async(&mut c)
                .await
                .map_err(unavailable)?;
            if lead != 1 || !trusted {
                return Ok((lead, Vec::new(), Duration::ZERO));
            }
            let (nodes, info): (Vec<String>, String) = redis::pipe()
                .cmd("SMEMBERS")
                .arg(k.nodes())
                .cmd("INFO")
                .arg("server")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok((lead, nodes, uptime_of(&info)))
        })
        .await?;
    if lead != 1 {
        return Ok(None);
    }
    if !trusted || uptime < lease_ttl {
        return Ok(Some(0));
    }
    let mut announced = 0;
    for node in nodes {
        announced += sweep_node(redis, &node, false).await?;
    }
    Ok(Some(announced))
}

/// `uptime_in_seconds` of an `INFO server` reply (0 if absent: a server that
/// does not say is not trusted to have kept its leases).
fn uptime_of(info: &str) -> Duration {
    info.lines()
        .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
        .and_then(|v| v.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_read_from_info() {
        let info =
            "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:42\r\nuptime_in_days:0\r\n";
        assert_eq!(uptime_of(info), Duration::from_secs(42));
        assert_eq!(uptime_of("# Server\r\n"), Duration::ZERO);
    }
}
