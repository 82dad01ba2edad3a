//! `mode: reconcile`: decide locally, share through Redis every
//! `sync_interval`.
//!
//! Each instance keeps its own GCRA state per key (bounded by `max_keys`)
//! and the cost it admitted per key since its last sync. A key's first
//! request on an instance is decided exactly in Redis, which also gives the
//! key's shared state, so a key busy elsewhere starts busy here too. Every
//! `sync_interval`, each key used since the last sync is sent to Redis in
//! one script call: the cost admitted here is added to the shared TAT
//! (forced: those requests already passed) and the shared TAT comes back;
//! the local TAT moves up to it. Instances thus see each other's traffic
//! within a window W = 3 * sync_interval + d (local state is trusted for two
//! intervals, and a sync may land an interval late), which bounds the
//! overshoot (see docs/api-management.md): at most
//! `(N - 1) * min(burst + rate * W, λ * W)` requests over the limit for N
//! instances, round trip d and arrival rate λ per instance.
//!
//! When Redis is unreachable, decisions go on locally with
//! `on_store_error: open` (each instance enforces the limit on its own)
//! and fail with `closed` until Redis answers again.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;

use super::super::gcra::Decision;
use super::super::local::{PassThrough, ShardedMap, now_ns};
use super::{Inner, StoreError};
use crate::config::{FailMode, RateLimitConfig};

/// Keys of one limiter synced at once (the multiplexed connection
/// pipelines them on the wire).
const SYNC_CONCURRENCY: usize = 64;

/// One key's local state.
struct Entry {
    /// The key, for its Redis name at sync time.
    key: Box<str>,
    /// TAT on the [`now_ns`] clock.
    tat: u64,
    /// Cost admitted here and not yet added in Redis. Atomic (like
    /// `touched`) so that the sync pass takes it through a shared reference
    /// while it holds the shard's lock.
    pending: AtomicU64,
    /// A request came since the last sync.
    touched: AtomicBool,
    /// When the key's state last came from Redis ([`now_ns`] clock).
    fresh_at: u64,
}

/// The local side of a `reconcile` limiter.
pub(super) struct Reconciler {
    interval: u64,
    closed: bool,
    entries: ShardedMap<Entry>,
    syncing: AtomicBool,
    /// When the next sync is due, on the [`now_ns`] clock.
    next_sync: AtomicU64,
}

/// Clears the `syncing` flag when dropped.
struct Syncing<'a>(&'a AtomicBool);

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The local map's key of a Redis limit key (a digest already; any stable
/// hash spreads it over the shards).
fn slot(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(key.as_bytes());
    h.finish()
}

impl Reconciler {
    pub(super) fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            interval: u64::try_from(cfg.sync_interval.0.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1_000_000),
            closed: cfg.on_store_error == FailMode::Closed,
            entries: ShardedMap::new(cfg.max_keys),
            syncing: AtomicBool::new(false),
            next_sync: AtomicU64::new(0),
        }
    }

    /// Decides a request: locally for a known key, exactly in Redis for a
    /// new one.
    pub(super) async fn decide(
        &self,
        inner: &Inner,
        key: &str,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        let mut available = inner.store.available();
        if !available {
            inner.store.first_attempt().await;
            available = inner.store.available();
        }
        if !available && self.closed {
            return Err(StoreError("redis: unreachable".into()));
        }
        let slot = slot(key);
        if let Some(d) = self.decide_local(inner, slot, key, cost, false) {
            return Ok(d);
        }
        if available {
            match inner.exact(key, cost).await {
                Ok((decision, tat)) => {
                    self.learn(slot, key, now_ns().saturating_add(tat));
                    return Ok(decision);
                }
                Err(e) if self.closed => return Err(e),
                Err(_) => {
                    inner.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Redis is unreachable and the limit fails open: this instance
        // enforces the limit on its own.
        Ok(self
            .decide_local(inner, slot, key, cost, true)
            .unwrap_or_else(|| inner.gcra.decide(None, now_ns(), cost).1))
    }

    /// The local decision for a known key; with `add`, a new key is added
    /// (when there is room). `None`: not known (and not added).
    fn decide_local(
        &self,
        inner: &Inner,
        slot: u64,
        key: &str,
        cost: u64,
        add: bool,
    ) -> Option<Decision> {
        let now = now_ns();
        let mut shard = self.entries.lock(slot);
        // A state not refreshed from Redis for two sync intervals (the key
        // was idle here) is stale: the key goes back to Redis first.
        let known = shard.get(&slot).is_some_and(|e| {
            &*e.key == key
                && (add || now.saturating_sub(e.fresh_at) <= self.interval.saturating_mul(2))
        });
        if !known {
            // A different key with the same 64-bit slot is not ours to use.
            if !add || shard.contains_key(&slot) || !self.make_room(&mut shard, now) {
                return None;
            }
            shard.insert(slot, Entry::new(key, now));
        }
        let entry = shard.get_mut(&slot)?;
        let (tat, decision) = inner.gcra.decide(Some(entry.tat), now, cost);
        entry.touched.store(true, Ordering::Relaxed);
        if decision.allowed {
            entry.tat = tat;
            entry.pending.fetch_add(cost, Ordering::Relaxed);
        }
        Some(decision)
    }

    /// Records the shared TAT of a key just decided in Redis.
    fn learn(&self, slot: u64, key: &str, tat: u64) {
        let now = now_ns();
        let mut shard = self.entries.lock(slot);
        match shard.get_mut(&slot) {
            Some(e) if &*e.key == key => {
                e.tat = e.tat.max(tat);
                e.fresh_at = now;
            }
            Some(_) => {}
            None => {
                if self.make_room(&mut shard, now) {
                    let mut entry = Entry::new(key, now);
                    entry.tat = tat;
                    shard.insert(slot, entry);
                }
            }
        }
    }

    /// Whether a shard has room for one more key, after dropping idle keys
    /// with nothing to sync (no loss: the next request decides in Redis).
    fn make_room(
        &self,
        shard: &mut HashMap<u64, Entry, BuildHasherDefault<PassThrough>>,
        now: u64,
    ) -> bool {
        if shard.len() < self.entries.per_shard() {
            return true;
        }
        shard.retain(|_, e| e.tat > now || e.pending.load(Ordering::Relaxed) > 0);
        shard.len() < self.entries.per_shard()
    }

    /// Starts a sync of `inner` on this runtime when one is due and none is
    /// running; returns the time until the next one is due.
    pub(super) fn start_sync_if_due(&self, inner: &Arc<Inner>) -> Duration {
        let now = now_ns();
        let due = self.next_sync.load(Ordering::Relaxed);
        if now < due {
            return Duration::from_nanos(due - now);
        }
        // Also while Redis is down: the pushes then fail at once, and
        // `settle` caps what is kept for later.
        if self.syncing.swap(true, Ordering::Relaxed) {
            return Duration::from_nanos(self.interval);
        }
        self.next_sync
            .store(now.saturating_add(self.interval), Ordering::Relaxed);
        let inner = inner.clone();
        tokio::spawn(async move {
            if let Some(r) = &inner.reconcile {
                // Cleared however the sync ends (a task that panics or is
                // cancelled must not stop every later sync).
                let _done = Syncing(&r.syncing);
                r.sync(&inner).await;
            }
        });
        Duration::from_nanos(self.interval)
    }

    /// Sends every key used since the last sync to Redis and moves the
    /// local TATs up to the shared ones; drops idle keys.
    pub(super) async fn sync(&self, inner: &Arc<Inner>) {
        let now = now_ns();
        let mut batch: Vec<(Box<str>, u64)> = Vec::new();
        self.entries.retain(|e| {
            if e.touched.swap(false, Ordering::Relaxed) {
                batch.push((e.key.clone(), e.pending.swap(0, Ordering::Relaxed)));
                return true;
            }
            e.tat > now || e.pending.load(Ordering::Relaxed) > 0
        });
        let mut tasks: JoinSet<(Box<str>, u64, Result<u64, StoreError>)> = JoinSet::new();
        for (key, cost) in batch {
            while tasks.len() >= SYNC_CONCURRENCY {
                if let Some(Ok((key, cost, result))) = tasks.join_next().await {
                    self.settle(inner, &key, cost, result);
                }
            }
            let inner = inner.clone();
            tasks.spawn(async move {
                let result = inner.push(&key, cost).await;
                (key, cost, result)
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok((key, cost, result)) = done {
                self.settle(inner, &key, cost, result);
            }
        }
    }

    /// Applies the answer of one key's sync: the shared TAT (relative to
    /// Redis's now) plus what was admitted here since; or, on failure, the
    /// cost goes back to pending for the next sync. During a long outage
    /// pending stops at one burst: the outage's local traffic is not
    /// charged to the shared state as a debt of hours.
    fn settle(&self, inner: &Inner, key: &str, cost: u64, result: Result<u64, StoreError>) {
        let slot = slot(key);
        let now = now_ns();
        let mut shard = self.entries.lock(slot);
        let Some(entry) = shard.get_mut(&slot).filter(|e| &*e.key == key) else {
            return;
        };
        match result {
            Ok(shared) => {
                let since = inner
                    .gcra
                    .emission
                    .saturating_mul(entry.pending.load(Ordering::Relaxed));
                entry.tat = entry
                    .tat
                    .max(now.saturating_add(shared).saturating_add(since));
                entry.fresh_at = now;
            }
            Err(_) => {
                inner.errors.fetch_add(1, Ordering::Relaxed);
                let pending = entry.pending.load(Ordering::Relaxed).saturating_add(cost);
                entry
                    .pending
                    .store(pending.min(inner.gcra.burst), Ordering::Relaxed);
                entry.touched.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Entry {
    fn new(key: &str, now: u64) -> Self {
        Self {
            key: key.into(),
            tat: now,
            pending: AtomicU64::new(0),
            touched: AtomicBool::new(false),
            fresh_at: now,
        }
    }
}
