//! Concurrency limits: slots per key, taken when a request passes and given
//! back when its response body is dropped (sent whole, or abandoned by the
//! client).
//!
//! Only keys with a request in flight are tracked: a count back to 0 removes
//! its key. The map holds at most `max_keys` keys; when a key's shard is full
//! of busy keys, a request with a new key is refused (429), since no busy
//! key can be forgotten without letting its requests exceed the limit.

use std::sync::Arc;

use super::local::ShardedMap;

/// One `concurrency` limit: requests in flight per key.
pub struct ConcurrencyLimiter {
    limit: u32,
    in_flight: ShardedMap<u32>,
}

/// Why a slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The key has `limit` requests in flight.
    Full,
    /// `max_keys` keys have requests in flight.
    TooManyKeys,
}

impl ConcurrencyLimiter {
    /// `limit` requests in flight per key, for at most `max_keys` keys.
    pub fn new(limit: u32, max_keys: usize) -> Self {
        Self {
            limit,
            in_flight: ShardedMap::new(max_keys),
        }
    }

    /// Takes a slot for `key`; with it, the slots still free for that key.
    pub fn acquire(self: &Arc<Self>, key: u64) -> Result<(Slot, u32), Refused> {
        let mut shard = self.in_flight.lock(key);
        let full = shard.len() >= self.in_flight.per_shard();
        let taken = match shard.get_mut(&key) {
            Some(n) if *n >= self.limit => return Err(Refused::Full),
            Some(n) => {
                *n += 1;
                *n
            }
            None if full => return Err(Refused::TooManyKeys),
            None if self.limit == 0 => return Err(Refused::Full),
            None => {
                shard.insert(key, 1);
                1
            }
        };
        let slot = Slot {
            limiter: self.clone(),
            key,
        };
        Ok((slot, self.limit - taken))
    }

    fn release(&self, key: u64) {
        let mut shard = self.in_flight.lock(key);
        if let Some(n) = shard.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&key);
            }
        }
    }

    /// Keys with a request in flight.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.in_flight.count()
    }
}

/// One request's slot under one limit; dropping it gives the slot back.
pub struct Slot {
    limiter: Arc<ConcurrencyLimiter>,
    key: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limiter.release(self.key);
    }
}

/// The concurrency slots a request holds.
#[derive(Default)]
pub struct Held {
    // Most routes have at most one concurrency limit: no allocation for it.
    first: Option<Slot>,
    more: Vec<Slot>,
}

impl Held {
    /// Keeps `slot` until this is dropped.
    pub fn push(&mut self, slot: Slot) {
        if self.first.is_none() {
            self.first = Some(slot);
        } else {
            self.more.push(slot);
        }
    }

    /// Moves every slot of `other` here.
    pub fn append(&mut self, other: Held) {
        let Held { first, more } = other;
        for slot in first.into_iter().chain(more) {
            self.push(slot);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back_when_dropped() {
        let l = Arc::new(ConcurrencyLimiter::new(2, 100));
        let (a, free) = l.acquire(1).unwrap();
        assert_eq!(free, 1);
        let (b, free) = l.acquire(1).unwrap();
        assert_eq!(free, 0);
        assert_eq!(l.acquire(1).err(), Some(Refused::Full));
        let (_other, _) = l.acquire(2).unwrap();
        drop(a);
        let (c, free) = l.acquire(1).unwrap();
        assert_eq!(free, 0);
        drop((b, c));
        assert_eq!(l.keys(), 1, "a key back to 0 is removed");
    }

    #[test]
    fn a_map_full_of_busy_keys_refuses_new_keys() {
        let l = Arc::new(ConcurrencyLimiter::new(1, 3));
        let mut held = Held::default();
        for key in 0..3 {
            held.push(l.acquire(key).unwrap().0);
        }
        assert_eq!(l.acquire(99).err(), Some(Refused::TooManyKeys));
        assert_eq!(l.acquire(0).err(), Some(Refused::Full));
        drop(held);
        assert_eq!(l.keys(), 0);
        assert!(l.acquire(99).is_ok());
    }

    #[test]
    fn held_moves_slots() {
        let l = Arc::new(ConcurrencyLimiter::new(5, 10));
        let mut a = Held::default();
        let mut b = Held::default();
        for _ in 0..3 {
            b.push(l.acquire(4).unwrap().0);
        }
        a.append(b);
        assert_eq!(l.acquire(4).unwrap().1, 1);
        drop(a);
        assert_eq!(l.keys(), 0);
    }

    #[test]
    fn many_threads_keep_exact_counts() {
        let l = Arc::new(ConcurrencyLimiter::new(3, 100));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let mut max_seen = 0;
                    for _ in 0..2000 {
                        if let Ok((slot, free)) = l.acquire(42) {
                            max_seen = max_seen.max(3 - free);
                            drop(slot);
                        }
                    }
                    max_seen
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap() <= 3);
        }
        assert_eq!(l.keys(), 0, "every slot came back");
    }
}
