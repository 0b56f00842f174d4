//! `redis.ack_replicas`: a publish is acknowledged (and shown to anyone)
//! only once N replicas have it, at the cost of one replication round trip
//! shared by every publish waiting at the time (a group commit).
//!
//! A publish stores its message on the primary (the script does not
//! `PUBLISH` in this mode), then waits here. One task runs barriers, one at
//! a time: each writes a key on a connection of its own and `WAIT`s for N
//! replicas to have that write. Replication is one ordered stream, so a
//! replica that has the barrier's write has every write that finished
//! before it: the stores of every publish that was waiting when the
//! barrier started, on whatever connection they ran (`WAIT` itself only
//! counts its own connection's writes, hence the write). Publishes that
//! arrive meanwhile wait for the next barrier, so the number of `WAIT`s
//! follows the replicas' round trip, not the publish rate, and `WAIT`,
//! which blocks its connection, holds up no other command.

use roomcast_core::BackendError;
use tokio::sync::{mpsc, oneshot};

use crate::client::{AckReplicas, Redis};

type Waiter = oneshot::Sender<Result<(), BackendError>>;

/// Where publishes wait for replicas. Cloning shares the barrier task, which
/// ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Replicas {
    /// Unbounded, but each waiting publish holds one entry and awaits it:
    /// bounded by the publishes in flight.
    waiters: mpsc::UnboundedSender<Waiter>,
}

impl Replicas {
    /// Starts the barrier task.
    pub fn start(redis: Redis, ack: AckReplicas) -> Replicas {
        let (waiters, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(redis, ack, rx));
        Replicas { waiters }
    }

    /// Resolves once `ack.replicas` replicas have every write this process
    /// finished before the call. A timeout (or a lost connection) is
    /// [`BackendError::Indeterminate`]: the writes are on the primary and
    /// may or may not be on the replicas.
    pub async fn wait(&self) -> Result<(), BackendError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .map_err(|_| BackendError::Unavailable("replica barrier stopped".into()))?;
        rx.await.unwrap_or_else(|_| {
            Err(BackendError::Indeterminate(
                "replica barrier stopped".into(),
            ))
        })
    }
}

async fn run(redis: Redis, ack: AckReplicas, mut waiters: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = waiters.recv().await {
        let mut batch = vec![first];
        while let Ok(w) = waiters.try_recv() {
            batch.push(w);
        }
        let result = barrier(&redis, ack).await;
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}

/// One write, then `WAIT` for it.
async fn barrier(redis: &Redis, ack: AckReplicas) -> Result<(), BackendError> {
    let unknown = |e: &dyn std::fmt::Display| {
        BackendError::Indeterminate(format!(
            "stored on the primary; waiting for replicas failed: {e}"
        ))
    };
    redis
        .timed_durable_write(async {
            let mut c = redis.durable_conn().await.map_err(|e| unknown(&e))?;
            let (_, reached): (i64, u32) = redis::pipe()
                .cmd("INCR")
                .arg(redis.keys.replica_barrier())
                .cmd("WAIT")
                .arg(ack.replicas)
                .arg(ack.timeout.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(|e| unknown(&e))?;
            if reached < ack.replicas {
                return Err(BackendError::Indeterminate(format!(
                    "stored on the primary, but {reached} of {} replicas confirmed it within {:?}",
                    ack.replicas, ack.timeout
                )));
            }
            Ok(())
        })
        .await
}
