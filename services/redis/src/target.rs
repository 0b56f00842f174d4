//! Where commands and pub/sub go: one Redis named by a URL, or the primary
//! that Redis Sentinel names for a master group, followed across failovers.
//!
//! In Sentinel mode the target asks the sentinels (in the order given; the
//! first that knows the group answers) for the primary's address, and
//! believes it only once that server itself says `ROLE` master: a sentinel
//! that has not heard of a failover yet, or a demoted primary that still
//! answers, is never chosen knowingly. [`watch`] asks again every second,
//! and at once when a command was refused as `READONLY` (it reached a
//! demoted primary). When the address changes, [`Target::generation`]
//! moves on: command lanes opened under an older generation are dropped
//! before their next command, and the pub/sub session starts over on the
//! new primary, catching every room up from its stream. So after a
//! failover nothing keeps writing to the old primary for longer than one
//! check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Client;
use roomcast_core::{BackendError, BackendStats};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client::unavailable;

/// How often the sentinels are asked again.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// One question to one sentinel or one candidate primary.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach Redis, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// One Redis (`REDIS_URL`).
    Url(String),
    /// The primary of `master` as the `sentinels` (`host:port`) see it.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// `AUTH` for the primary (and its replicas), if they need one.
        password: Option<String>,
        /// `AUTH` for the sentinels, if they need one.
        sentinel_password: Option<String>,
    },
}

/// The resolved target: a client for the current primary, and its
/// generation.
pub struct Target {
    spec: TargetSpec,
    /// The primary's `host:port` and a client for it; `None` until found.
    /// Locked only to read or swap, never across an `.await`.
    current: Mutex<Option<(String, Client)>>,
    generation: AtomicU64,
    recheck: Notify,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field(
                "primary",
                &self.current.lock().as_ref().map(|(a, _)| a.clone()),
            )
            .field("generation", &self.generation())
            .finish()
    }
}

impl Target {
    /// Checks the spec (a URL that parses, at least one sentinel) without
    /// connecting: Redis may be down at start.
    pub fn new(spec: TargetSpec) -> Result<Target, BackendError> {
        let current = match &spec {
            TargetSpec::Url(url) => {
                let client = Client::open(url.as_str()).map_err(unavailable)?;
                Some((url.clone(), client))
            }
            TargetSpec::Sentinel {
                sentinels, master, ..
            } => {
                if sentinels.is_empty() || master.is_empty() {
                    return Err(unavailable(
                        "Sentinel mode needs sentinels and a master name",
                    ));
                }
                None
            }
        };
        Ok(Target {
            spec,
            current: Mutex::new(current),
            generation: AtomicU64::new(0),
            recheck: Notify::new(),
        })
    }

    /// Counts primary changes: lanes and the pub/sub session compare it
    /// with the one they connected under.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The primary's address, once known.
    pub fn primary(&self) -> Option<String> {
        self.current.lock().as_ref().map(|(a, _)| a.clone())
    }

    /// A client for the current primary (asking the sentinels if none is
    /// known yet), and the generation it belongs to.
    pub async fn client(&self) -> Result<(Client, u64), BackendError> {
        let generation = self.generation();
        if let Some((_, c)) = &*self.current.lock() {
            return Ok((c.clone(), generation));
        }
        self.resolve().await?;
        let generation = self.generation();
        match &*self.current.lock() {
            Some((_, c)) => Ok((c.clone(), generation)),
            None => Err(unavailable("no Redis primary known")),
        }
    }

    /// A command reached a server that refuses writes: ask the sentinels
    /// now rather than at the next tick.
    pub fn suspect(&self) {
        self.recheck.notify_one();
    }

    /// Asks the sentinels where the primary is and switches to it if it
    /// moved. True when it moved.
    pub async fn resolve(&self) -> Result<bool, BackendError> {
        let TargetSpec::Sentinel {
            sentinels,
            master,
            password,
            sentinel_password,
        } = &self.spec
        else {
            return Ok(false);
        };
        let mut problems = Vec::new();
        for sentinel in sentinels {
            let addr = match ask_sentinel(sentinel, sentinel_password.as_deref(), master).await {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    problems.push(format!("{sentinel}: does not know master {master:?}"));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{sentinel}: {e}"));
                    continue;
                }
            };
            match primary_at(&addr, password.as_deref()).await {
                Ok(client) => return Ok(self.switch(addr, client)),
                // Try the next sentinel: this one may not have seen the
                // failover yet.
                Err(e) => problems.push(format!("{sentinel} names {addr}: {e}")),
            }
        }
        Err(unavailable(format!(
            "no sentinel named a primary for {master:?}: {}",
            problems.join("; ")
        )))
    }

    fn switch(&self, addr: String, client: Client) -> bool {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|(a, _)| *a == addr) {
            return false;
        }
        let old = current.as_ref().map(|(a, _)| a.clone());
        *current = Some((addr.clone(), client));
        // Under the lock: a reader of `current` never sees the new primary
        // with the old generation for longer than this store.
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(current);
        match &old {
            Some(old) => tracing::warn!(%old, new = %addr, "redis primary changed (failover)"),
            None => tracing::info!(primary = %addr, "redis primary found through sentinel"),
        }
        old.is_some()
    }
}

/// Follows the primary in Sentinel mode until `shutdown`: asks every
/// second, or when a command suspected a demoted primary; counts changes in
/// `roomcast_redis_primary_changes_total`. Returns at once for a URL.
pub async fn watch(
    target: std::sync::Arc<Target>,
    stats: std::sync::Arc<BackendStats>,
    shutdown: CancellationToken,
) {
    if matches!(target.spec, TargetSpec::Url(_)) {
        return;
    }
    loop {
        match target.resolve().await {
            Ok(true) => BackendStats::add(&stats.redis_primary_changes, 1),
            Ok(false) => {}
            // The pub/sub session's round trip reports the outage.
            Err(e) => tracing::debug!(error = %e, "asking the sentinels failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
            _ = target.recheck.notified() => {}
        }
    }
}

/// A URL for `addr`, with the password percent-encoded into its userinfo.
fn url(addr: &str, password: Option<&str>) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    match password {
        Some(p) => format!(
            "redis://:{}@{addr}/0",
            utf8_percent_encode(p, NON_ALPHANUMERIC)
        ),
        None => format!("redis://{addr}/0"),
    }
}

async fn connect(
    addr: &str,
    password: Option<&str>,
) -> Result<redis::aio::MultiplexedConnection, BackendError> {
    let client = Client::open(url(addr, password)).map_err(unavailable)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ASK_TIMEOUT))
        .set_response_timeout(Some(ASK_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)
}

/// `SENTINEL get-master-addr-by-name`: the primary's `host:port`, or `None`
/// when this sentinel does not monitor `master`.
async fn ask_sentinel(
    sentinel: &str,
    password: Option<&str>,
    master: &str,
) -> Result<Option<String>, BackendError> {
    let mut c = connect(sentinel, password).await?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut c)
        .await
        .map_err(unavailable)?;
    Ok(addr.map(|(host, port)| format!("{host}:{port}")))
}

/// A client for `addr` if it says it is a primary (`ROLE`).
async fn primary_at(addr: &str, password: Option<&str>) -> Result<Client, BackendError> {
    let mut c = connect(addr, password).await?;
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut c)
        .await
        .map_err(unavailable)?;
    let first = role
        .into_iter()
        .next()
        .map(redis::from_redis_value::<String>)
        .transpose()
        .map_err(unavailable)?;
    if first.as_deref() != Some("master") {
        return Err(unavailable(format!(
            "says it is {}, not a primary",
            first.unwrap_or_default()
        )));
    }
    Client::open(url(addr, password)).map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_encoded_into_the_url() {
        assert_eq!(url("h:1", None), "redis://h:1/0");
        assert_eq!(url("h:1", Some("a b@c-d")), "redis://:a%20b%40c%2Dd@h:1/0");
        assert!(Client::open(url("h:1", Some("p:/?#"))).is_ok());
    }

    #[test]
    fn a_sentinel_spec_needs_sentinels_and_a_name() {
        let spec = |s: &[&str], m: &str| TargetSpec::Sentinel {
            sentinels: s.iter().map(|s| (*s).to_owned()).collect(),
            master: m.into(),
            password: None,
            sentinel_password: None,
        };
        assert!(Target::new(spec(&[], "m")).is_err());
        assert!(Target::new(spec(&["h:1"], "")).is_err());
        let t = Target::new(spec(&["h:1"], "m")).unwrap();
        assert_eq!((t.primary(), t.generation()), (None, 0));
    }
}
