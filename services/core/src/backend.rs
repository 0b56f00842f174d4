//! A complete backend: one implementation of each trait, shared by all the
//! connections and REST handlers of a node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::broker::{Broker, MemoryBroker};
use crate::events::{EventQueue, MemoryEvents, Recording};
use crate::history::{History, HistoryOptions, MemoryHistory};
use crate::hub::Hub;
use crate::presence::{MemoryPresence, Presence};
use crate::store::{MemoryStore, Store};

/// The backend a node runs on. Cloning shares it.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub history: Arc<dyn History>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn Presence>,
    /// Webhook events waiting for delivery (when the backend records any).
    pub events: Option<Arc<dyn EventQueue>>,
    pub stats: Arc<BackendStats>,
}

/// Counters a backend keeps about itself, read by the node's metrics.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Whether the broker can publish and receive (pub/sub round trip).
    pub broker_up: AtomicBool,
    /// Times the pub/sub connection was re-established.
    pub broker_reconnects: AtomicU64,
    /// Messages a node fetched from history to fill a gap in its subscription.
    pub history_backfilled: AtomicU64,
    /// Reads of one room's stream by the pub/sub session that failed and
    /// were retried (or, after the last attempt, gave the room up).
    pub room_read_failures: AtomicU64,
    /// Rooms whose stream was found behind what this node had delivered
    /// (Redis lost acknowledged writes: a failover to a replica that had
    /// not received them, a restart from an old snapshot); their clients
    /// were told to resync.
    pub history_rewinds: AtomicU64,
    /// Times the Redis primary moved (Sentinel mode).
    pub redis_primary_changes: AtomicU64,
    /// Sweeps of dead nodes' presence run by this process.
    pub presence_sweeps: AtomicU64,
    /// Users announced left because their node died.
    pub presence_swept_users: AtomicU64,
    /// Sweeps that failed (Redis unreachable, script error).
    pub presence_sweep_errors: AtomicU64,
    /// A presence removal failed: this node's entries may list connections
    /// that are gone, until it reconciles them.
    pub presence_dirty: AtomicBool,
}

impl BackendStats {
    pub fn up() -> Arc<Self> {
        let s = Self::default();
        s.broker_up.store(true, Ordering::Relaxed);
        Arc::new(s)
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.broker.kind())
            .finish()
    }
}

impl Backend {
    /// The embedded single-node backend: everything in this process's memory,
    /// delivering straight into `hub`, keeping history as `history` says
    /// at most `max_users` users and `max_rooms` rooms, and queueing the
    /// webhook events `recording` names.
    pub fn memory(
        hub: Arc<Hub>,
        node_id: &str,
        history: HistoryOptions,
        (max_users, max_rooms): (usize, usize),
        recording: Recording,
    ) -> Backend {
        let history = Arc::new(MemoryHistory::new(history));
        let events = recording
            .is_on()
            .then(|| Arc::new(MemoryEvents::new(recording)));
        let presence = MemoryPresence::new(hub.clone(), node_id, events.clone());
        let mut broker = MemoryBroker::new(history.clone(), hub, node_id);
        if let Some(q) = &events {
            broker = broker.with_events(q.clone());
        }
        Backend {
            store: Arc::new(MemoryStore::new(max_users, max_rooms)),
            broker: Arc::new(broker),
            history,
            presence: Arc::new(presence),
            events: events.map(|q| q as Arc<dyn EventQueue>),
            stats: BackendStats::up(),
        }
    }
}
