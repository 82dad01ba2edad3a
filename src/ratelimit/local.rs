//! Local rate limits: GCRA state shared by every worker of this process.
//!
//! A key's state is one `u64` (its TAT, see [`super::gcra`]) in a map split
//! into shards, each behind its own mutex: two requests contend only when
//! their keys fall in the same shard, and a lock is held for one map lookup.
//!
//! Memory is bounded by the limit's `max_keys`. A shard that is full when a
//! new key arrives first drops its idle keys (TAT at or before now: the same
//! as no state, so nothing is lost); when none is idle, it evicts the key
//! nearest to idle (smallest TAT). That key's client then gets a full burst
//! again sooner than it should: under a flood of distinct keys the limit
//! forgives the least-used key rather than refusing new clients or growing
//! without bound. [`LocalLimiter::sweep`] also drops idle keys periodically.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::gcra::{Decision, Gcra};

/// Most shards of one map; fewer for small `max_keys` so that each shard
/// still holds a useful share of the bound.
const MAX_SHARDS: usize = 64;
/// Fewest keys per shard before the map is split further.
const MIN_PER_SHARD: usize = 64;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Nanoseconds on a monotonic clock shared by every limit of the process
/// (it outlives reloads, so kept TATs stay meaningful).
pub fn now_ns() -> u64 {
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A hasher for keys that already are keyed hashes: no second hashing.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in for correctness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// A map from key hashes to `V`, split into shards, holding at most
/// `max_keys` entries in all.
pub struct ShardedMap<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
}

impl<V> ShardedMap<V> {
    /// A map for at most `max_keys` keys (at least 1).
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let wanted = (max_keys / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        // A power of two: the shard is a mask of the key's bits.
        let count = if wanted.is_power_of_two() {
            wanted
        } else {
            wanted.next_power_of_two() / 2
        };
        Self {
            shards: (0..count).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: max_keys / count,
        }
    }

    /// The most keys one shard holds.
    pub fn per_shard(&self) -> usize {
        self.per_shard
    }

    /// The shard of `key`, locked. The shard is chosen from the middle
    /// bits: the map inside uses the low bits for buckets and the top ones
    /// for its tags, which must both vary within a shard.
    pub fn lock(&self, key: u64) -> MutexGuard<'_, Shard<V>> {
        let index = usize::try_from(key >> 32).unwrap_or(0) & (self.shards.len() - 1);
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Keys held, over all shards.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Keeps only the entries `keep` accepts, one shard locked at a time.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, v| keep(v));
        }
    }
}

/// One local rate limit: its GCRA parameters and the TAT of each key.
pub struct LocalLimiter {
    gcra: Gcra,
    tats: ShardedMap<u64>,
}

impl LocalLimiter {
    /// A limiter with `gcra`'s parameters tracking at most `max_keys` keys.
    pub fn new(gcra: Gcra, max_keys: usize) -> Self {
        Self {
            gcra,
            tats: ShardedMap::new(max_keys),
        }
    }

    /// Decides a request of `cost` for `key` now; an allowed one is counted.
    pub fn decide(&self, key: u64, cost: u64) -> Decision {
        self.decide_at(key, cost, now_ns())
    }

    fn decide_at(&self, key: u64, cost: u64, now: u64) -> Decision {
        let mut shard = self.tats.lock(key);
        let tat = shard.get(&key).copied();
        let (new_tat, decision) = self.gcra.decide(tat, now, cost);
        if decision.allowed {
            if tat.is_none() && shard.len() >= self.tats.per_shard() {
                make_room(&mut shard, now);
            }
            shard.insert(key, new_tat);
        }
        decision
    }

    /// Gives back `cost` taken from `key` (a later limit refused the request).
    pub fn refund(&self, key: u64, cost: u64) {
        let now = now_ns();
        let mut shard = self.tats.lock(key);
        if let Some(tat) = shard.get_mut(&key) {
            *tat = self.gcra.refund(*tat, cost);
            if *tat <= now {
                shard.remove(&key);
            }
        }
    }

    /// Drops idle keys (no loss: an idle key is the same as no state).
    pub fn sweep(&self) {
        let now = now_ns();
        self.tats.retain(|tat| *tat > now);
    }

    /// Keys tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tats.count()
    }
}

/// Frees one place in a full shard: every idle key, or else the key
/// nearest to idle.
fn make_room(shard: &mut Shard<u64>, now: u64) {
    let before = shard.len();
    shard.retain(|_, tat| *tat > now);
    if shard.len() < before {
        return;
    }
    if let Some(key) = shard.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k) {
        shard.remove(&key);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::config::units::Rate;

    fn gcra(count: u64, secs: u64, burst: u64) -> Gcra {
        Gcra::new(
            Rate {
                count,
                period: Duration::from_secs(secs),
            },
            burst,
        )
    }

    #[test]
    fn shards_never_hold_more_than_max_keys() {
        for max in [1, 10, 63, 64, 100, 1000, 4096, 100_000, 1_000_000] {
            let m: ShardedMap<u64> = ShardedMap::new(max);
            assert!(m.shards.len().is_power_of_two());
            assert!(m.shards.len() * m.per_shard <= max, "{max}");
            assert!(m.per_shard >= 1);
        }
        assert_eq!(ShardedMap::<u64>::new(100_000).shards.len(), 64);
    }

    #[test]
    fn a_flood_of_keys_stays_within_the_bound() {
        // One request per key per hour: no key is ever idle during the test.
        let l = LocalLimiter::new(gcra(1, 3600, 1), 100);
        for key in 0..10_000u64 {
            let key = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert!(l.decide_at(key, 1, 1_000_000_000).allowed);
            assert!(l.len() <= 100);
        }
        assert_eq!(l.len(), 100);
    }

    #[test]
    fn idle_keys_go_first_then_the_nearest_to_idle() {
        let l = LocalLimiter::new(gcra(1, 10, 1), 3);
        let s = 1_000_000_000;
        // Keys 1, 2, 3 taken at 0 s, 1 s, 2 s: TATs 10 s, 11 s, 12 s.
        for (key, at) in [(1, 0), (2, s), (3, 2 * s)] {
            assert!(l.decide_at(key, 1, at).allowed);
        }
        // Full, none idle at 3 s: key 1 (TAT 10 s) is evicted for key 4.
        assert!(l.decide_at(4, 1, 3 * s).allowed);
        assert!(!l.decide_at(2, 1, 3 * s).allowed, "key 2 kept its state");
        assert!(l.decide_at(1, 1, 3 * s).allowed, "key 1 was forgotten");
        // That evicted key 2 (TAT 11 s). At 12.5 s key 3 (TAT 12 s) is idle:
        // dropped for key 5, while the busy keys 4 and 1 stay.
        assert!(l.decide_at(5, 1, 12 * s + s / 2).allowed);
        assert_eq!(l.len(), 3);
        assert!(
            !l.decide_at(4, 1, 12 * s + s / 2).allowed,
            "busy key 4 kept"
        );
        assert!(
            !l.decide_at(1, 1, 12 * s + s / 2).allowed,
            "busy key 1 kept"
        );
    }

    #[test]
    fn refund_and_sweep() {
        let l = LocalLimiter::new(gcra(2, 3600, 2), 10);
        assert!(l.decide(7, 1).allowed);
        assert!(l.decide(7, 1).allowed);
        assert!(!l.decide(7, 1).allowed);
        l.refund(7, 1);
        assert!(l.decide(7, 1).allowed);
        l.refund(7, 1);
        l.refund(7, 1);
        assert_eq!(l.len(), 0, "a key refunded to idle is dropped");
        let short = LocalLimiter::new(gcra(1000, 1, 1000), 10);
        assert!(short.decide(1, 1).allowed);
        std::thread::sleep(Duration::from_millis(5));
        short.sweep();
        assert_eq!(short.len(), 0);
    }

    #[test]
    fn many_threads_get_exact_counts() {
        let l = Arc::new(LocalLimiter::new(gcra(500, 3600, 500), 1000));
        let allowed = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, allowed) = (l.clone(), allowed.clone());
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        // Two keys, each hit by every thread.
                        let key = if i % 2 == 0 { 11 } else { 1 << 40 };
                        if l.decide(key, 1).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(allowed.load(Ordering::Relaxed), 1000);
    }
}
