//! Room-keyed state split over several locks.
//!
//! Hot per-room state (the hub's member lists, the in-memory history) is
//! touched by every publish. One lock for all rooms would make unrelated
//! rooms wait on each other; a lock per room costs an allocation and a map
//! lookup anyway. A fixed number of shards, picked by the room id's hash,
//! is the usual middle ground. The locks are synchronous (`parking_lot`):
//! every critical section is short and never awaits, so an async lock would
//! only add overhead.

use std::hash::{BuildHasher, Hash};

use parking_lot::RwLock;

/// `N` locks, each guarding a `T`, chosen by key hash.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: Box<[RwLock<T>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl<T: Default> Sharded<T> {
    pub fn new(count: usize) -> Self {
        Self {
            shards: (0..count.max(1)).map(|_| RwLock::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl<T> Sharded<T> {
    /// The lock guarding `key`'s shard.
    pub fn shard<K: Hash + ?Sized>(&self, key: &K) -> &RwLock<T> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[i]
    }

    /// Every shard, for whole-map reads (metrics, listings).
    pub fn all(&self) -> impl Iterator<Item = &RwLock<T>> {
        self.shards.iter()
    }
}
