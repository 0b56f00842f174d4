//! The pooled command side: a deadpool of multiplexed connections, with a
//! deadline on every operation so that an unreachable Redis turns into a
//! quick `unavailable` instead of a hung request.

use std::future::Future;
use std::time::Duration;

use deadpool_redis::{Config, Connection, Pool, PoolConfig, Runtime, Timeouts};
use roomcast_core::BackendError;

use crate::keys::Keys;

/// How long one Redis operation may take before it counts as failed.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Maps a driver error to the backend error callers understand.
pub fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

/// Shared handle to Redis for commands (not pub/sub).
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    pub keys: Keys,
    pub client: redis::Client,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl Redis {
    /// Builds the pool. Nothing connects yet: a Redis that is down at start
    /// shows as not ready, and the node recovers when it comes up.
    pub fn new(url: &str, prefix: &str, max_size: usize) -> Result<Redis, BackendError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let mut cfg = Config::from_url(url);
        let mut pool = PoolConfig::new(max_size);
        pool.timeouts = Timeouts {
            wait: Some(OP_TIMEOUT),
            create: Some(OP_TIMEOUT),
            recycle: Some(OP_TIMEOUT),
        };
        cfg.pool = Some(pool);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(unavailable)?;
        Ok(Redis {
            pool,
            keys: Keys::new(prefix),
            client,
        })
    }

    pub async fn conn(&self) -> Result<Connection, BackendError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// `PUBLISH channel payload`, with the operation deadline.
    pub async fn publish(
        &self,
        channel: String,
        payload: impl redis::ToRedisArgs + Send + Sync,
    ) -> Result<(), BackendError> {
        self.timed(async {
            let mut c = self.conn().await?;
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<()>(&mut c)
                .await
                .map_err(unavailable)
        })
        .await
    }

    /// Runs `op` with the operation deadline.
    pub async fn timed<T>(
        &self,
        op: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(OP_TIMEOUT, op)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Unavailable(
                    "redis operation timed out".into(),
                ))
            })
    }
}
