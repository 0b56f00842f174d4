//! The webhook events queue on Redis: a stream (`Keys::events`) that the
//! presence, publish and sweep scripts append to, read through the consumer
//! group `webhooks` by one consumer name, `dispatcher`, that whichever node
//! holds the dispatcher lease reads as.
//!
//! Why one shared consumer name: the group's pending list of `dispatcher`
//! is exactly "read but not acknowledged". A leader that dies mid-batch
//! leaves its batch there, and the next leader reads that list first
//! (`XREADGROUP ... 0`) before anything new (`>`): nothing is lost, and a
//! redelivered event keeps its stream id. Delivered events are acknowledged
//! and deleted, so the stream holds only what is still owed.

use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use roomcast_core::BackendError;
use roomcast_core::events::{Event, EventName, EventQueue, Queued};
use roomcast_protocol::{RoomId, UserId};

use crate::client::{Redis, unavailable};
use crate::scripts::LOCK;

const GROUP: &str = "webhooks";
const CONSUMER: &str = "dispatcher";

#[derive(Debug, Clone)]
pub struct RedisEvents {
    redis: Redis,
}

impl RedisEvents {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// `XREADGROUP` from `from` (`0`: this consumer's pending, `>`: new).
    /// Creates the group (reading from the stream's start) when it is
    /// missing: before the first dispatcher ran, or after Redis lost it.
    async fn read_from(&self, from: &str, max: usize) -> Result<Value, BackendError> {
        let key = self.redis.keys.events();
        let read = || {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(CONSUMER)
                .arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(&key)
                .arg(from);
            cmd
        };
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                match read().query_async::<Value>(&mut c).await {
                    Err(e) if e.code() == Some("NOGROUP") => {
                        let created: Result<(), _> = redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(&key)
                            .arg(GROUP)
                            .arg("0")
                            .arg("MKSTREAM")
                            .query_async(&mut c)
                            .await;
                        if let Err(e) = created
                            && e.code() != Some("BUSYGROUP")
                        {
                            return Err(unavailable(e));
                        }
                        read().query_async(&mut c).await.map_err(unavailable)
                    }
                    r => r.map_err(unavailable),
                }
            })
            .await
    }
}

#[async_trait]
impl EventQueue for RedisEvents {
    async fn read(&self, max: usize) -> Result<Vec<Queued>, BackendError> {
        let (events, gone) = entries(self.read_from("0", max).await?);
        if !gone.is_empty() {
            // Pending entries whose data was trimmed away: nothing to send.
            self.ack(&gone).await?;
        }
        if !events.is_empty() {
            return Ok(events);
        }
        let (events, _) = entries(self.read_from(">", max).await?);
        Ok(events)
    }

    async fn ack(&self, ids: &[String]) -> Result<(), BackendError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.redis.keys.events();
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                redis::pipe()
                    .cmd("XACK")
                    .arg(&key)
                    .arg(GROUP)
                    .arg(ids)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&key)
                    .arg(ids)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await
    }

    async fn lead(&self, owner: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                let held: i64 = LOCK
                    .key(self.redis.keys.events_leader())
                    .arg(owner)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)?;
                Ok(held == 1)
            })
            .await
    }

    async fn waiting(&self) -> Result<u64, BackendError> {
        self.redis
            .timed(async {
                let mut c = self.redis.conn().await?;
                redis::cmd("XLEN")
                    .arg(self.redis.keys.events())
                    .query_async(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await
    }
}

/// The events of an `XREADGROUP` reply for one stream, and the ids of
/// entries that had no data left (trimmed while pending) or could not be
/// read (they are acknowledged, not retried forever).
fn entries(reply: Value) -> (Vec<Queued>, Vec<String>) {
    let mut events = Vec::new();
    let mut gone = Vec::new();
    let streams = match reply {
        Value::Array(s) => s,
        // RESP3 answers a map; a nil is "nothing new".
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => return (events, gone),
    };
    for stream in streams {
        let list = match stream {
            Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
            other => Some(other),
        };
        let Some(Value::Array(list)) = list else {
            continue;
        };
        for entry in list {
            let Value::Array(parts) = entry else { continue };
            let mut parts = parts.into_iter();
            let Some(id) = parts.next().and_then(|v| text(&v)) else {
                continue;
            };
            match parts.next().and_then(|f| event(&f)) {
                Some(event) => events.push(Queued {
                    time_ms: id
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse().ok())
                        .unwrap_or(0),
                    id,
                    event,
                }),
                None => gone.push(id),
            }
        }
    }
    (events, gone)
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value_ref(v).ok()
}

/// An event from an entry's field list (`n`, `r`, `u`, `un`, `m`).
fn event(fields: &Value) -> Option<Event> {
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut e = Event {
        name: EventName::RoomOccupied,
        room: None,
        user: None,
        username: None,
        message: None,
    };
    let mut named = false;
    for pair in fields.chunks_exact(2) {
        let (Some(k), Some(v)) = (text(&pair[0]), text(&pair[1])) else {
            continue;
        };
        match k.as_str() {
            "n" => {
                e.name = EventName::parse(&v)?;
                named = true;
            }
            "r" => e.room = RoomId::parse(&v).ok(),
            "u" => e.user = UserId::parse(&v).ok(),
            "un" => e.username = Some(v),
            "m" => e.message = Some(v),
            _ => {}
        }
    }
    named.then_some(e)
}
