//! What one caller may use of a node: token buckets (per socket, and keyed
//! by client address or user across requests and sockets), connection
//! counts per user and per address, and the client address itself (the
//! socket's, or a trusted proxy's `X-Forwarded-For`).
//!
//! Keyed state lives in sharded synchronous maps; each operation is a short
//! critical section with no `.await` inside. Idle keys are dropped as the
//! maps grow, so a caller rotating addresses or ids cannot grow memory
//! without bound: a map holds at most `MAX_KEYS` keys per shard before it
//! evicts full (i.e. idle) buckets.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use roomcast_core::shard::Sharded;

/// Keys one shard keeps before it drops idle ones.
const MAX_KEYS: usize = 4096;

/// A token bucket: `rate` tokens a second, up to `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    /// Seconds until the next token.
    pub fn wait_secs(&self, rate: f64) -> u64 {
        ((1.0 - self.tokens).max(0.0) / rate).ceil().max(1.0) as u64
    }
}

/// Token buckets by key (an address, a user).
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    rate: f64,
    burst: f64,
    map: Sharded<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            map: Sharded::new(16),
        }
    }

    /// Takes a token for `key`; `Err(seconds to wait)` when it has none.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), u64> {
        let (rate, burst) = (self.rate, self.burst);
        let take = |b: &mut Bucket| {
            if b.take(rate, burst, now) {
                Ok(())
            } else {
                Err(b.wait_secs(rate))
            }
        };
        let mut shard = self.map.shard(key).write();
        // A known key is found by reference: no clone on every frame.
        if let Some(bucket) = shard.get_mut(key) {
            return take(bucket);
        }
        if shard.len() >= MAX_KEYS {
            // Full buckets belong to keys idle for at least burst/rate.
            shard.retain(|_, b| {
                b.refill(rate, burst, now);
                b.tokens < burst
            });
        }
        take(
            shard
                .entry(key.clone())
                .or_insert_with(|| Bucket::full(burst, now)),
        )
    }
}

/// Open connections by key, with a cap.
#[derive(Debug)]
pub struct ConnCounts<K: Hash + Eq> {
    max: usize,
    map: Sharded<HashMap<K, usize>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct Counted<K: Hash + Eq + Clone> {
    counts: Arc<ConnCounts<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> ConnCounts<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            map: Sharded::new(16),
        })
    }

    /// Counts one more connection for `key`, or `None` at the cap.
    pub fn enter(self: &Arc<Self>, key: K) -> Option<Counted<K>> {
        let mut shard = self.map.shard(&key).write();
        let n = shard.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        drop(shard);
        Some(Counted {
            counts: self.clone(),
            key,
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for Counted<K> {
    fn drop(&mut self) {
        let mut shard = self.counts.map.shard(&self.key).write();
        if let Some(n) = shard.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

/// The TCP peer of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A trusted proxy: an address, or a network (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxies {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Proxies {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| ())?)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| ())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(());
        }
        Ok(Proxies { net, prefix })
    }
}

impl Proxies {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        // Both as 128 bits, an IPv4 address in the top 32: the prefix then
        // counts from the top either way.
        let bits = |a: &IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(*v)) << 96,
                IpAddr::V6(v) => u128::from(*v),
            }
        };
        if self.net.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let mask = match self.prefix {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        bits(&self.net) & mask == bits(ip) & mask
    }
}

fn trusted_by(list: &[Proxies], ip: &IpAddr) -> bool {
    list.iter().any(|p| p.contains(ip))
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy (entries further left are the client's to forge).
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[Proxies]) -> IpAddr {
    if !trusted_by(trusted, &peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted_by(trusted, a))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keyed_buckets_limit_each_key_alone() {
        let now = Instant::now();
        let b = KeyedBuckets::new(1.0, 2.0);
        assert!(b.take(&"a", now).is_ok() && b.take(&"a", now).is_ok());
        assert_eq!(b.take(&"a", now), Err(1));
        assert!(b.take(&"b", now).is_ok(), "another key has its own bucket");
        assert!(
            b.take(&"a", now + Duration::from_secs(1)).is_ok(),
            "refilled"
        );
    }

    #[test]
    fn idle_keys_are_dropped_when_a_shard_fills() {
        let now = Instant::now();
        let b = KeyedBuckets::new(1000.0, 1.0);
        for i in 0..(MAX_KEYS * 40) {
            let _ = b.take(&i, now + Duration::from_millis(i as u64 / 100));
        }
        let kept: usize = b.map.all().map(|s| s.read().len()).sum();
        assert!(kept <= MAX_KEYS * 16, "{kept}");
    }

    #[test]
    fn connection_counts_cap_and_release() {
        let c = ConnCounts::new(2);
        let a1 = c.enter("u").unwrap();
        let _a2 = c.enter("u").unwrap();
        assert!(c.enter("u").is_none());
        drop(a1);
        assert!(c.enter("u").is_some());
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted: Vec<Proxies> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.1.2.3".parse().unwrap(),
        );
        let client: IpAddr = "1.2.3.4".parse().unwrap();
        assert_eq!(
            client_addr(proxy, &h, &trusted),
            client,
            "right-most untrusted"
        );
        let stranger: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_addr(stranger, &h, &trusted), stranger);
        assert_eq!(client_addr(proxy, &HeaderMap::new(), &trusted), proxy);
        let one: Proxies = "192.168.1.7".parse().unwrap();
        assert!(one.contains(&"192.168.1.7".parse().unwrap()));
        assert!(!one.contains(&"192.168.1.8".parse().unwrap()));
        let v6: Proxies = "fd00::/8".parse().unwrap();
        assert!(v6.contains(&"fd12::1".parse().unwrap()));
        assert!(!v6.contains(&"fe80::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Proxies>().is_err());
        assert!("x".parse::<Proxies>().is_err());
    }
}
