//! Load-balancing algorithms: which endpoint of an upstream gets a request.
//!
//! A [`Balancer`] is compiled once per upstream (at config load) and shared by
//! every worker thread. Picking never takes a lock and never allocates:
//!
//! * `round_robin`: NGINX's smooth weighted round robin, precomputed at build
//!   time into a schedule (weights 5,1,1 give `a a b a c a a`). Each worker
//!   walks the schedule with its own cursor (one cache line each), starting at
//!   a staggered offset, so workers do not all begin on the first endpoint.
//!   Every worker on its own, and so all of them together, sends exactly the
//!   weighted share over each full pass of the schedule.
//!   Bounds: weights are divided by their gcd first. If their sum still exceeds
//!   65,536 they are scaled down proportionally (each at least 1), so shares are
//!   then approximate. If building NGINX's schedule would cost more than 2^22
//!   steps (sum × endpoint count, i.e. thousands of endpoints), an equally smooth
//!   earliest-deadline-first schedule is built instead (same shares, a slightly
//!   different interleaving).
//! * `random`: weighted random (prefix sums + binary search).
//! * `least_request`: power of two choices. Two distinct endpoints are drawn at
//!   random, weighted by weight; the one with the lower `in_flight / weight`
//!   wins (like Envoy, which divides load by weight). On a tie the first drawn
//!   wins, so an idle upstream receives exactly the weighted shares.
//! * `consistent_hash`: a ring of 160 virtual nodes per weight unit (weights
//!   divided by their gcd; at most 131,072 points in all, scaled down beyond),
//!   placed by hashing each endpoint's *id* (its configured address), so adding
//!   or removing an endpoint only moves the keys that must move. Hashing is
//!   FNV-1a 64 followed by a 64-bit finaliser: stable across runs, processes and
//!   platforms. When the request has no key, the pick is weighted random.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::state::{EndpointState, now_ms};
use crate::config::schema::BalanceConfig;

/// Longest round-robin schedule built from unscaled weights.
const MAX_SCHEDULE: u64 = 1 << 16;
/// Most work (schedule length × endpoints) spent on NGINX's O(n) per step build.
const SMOOTH_BUILD_BUDGET: u64 = 1 << 22;
/// Schedule entries round robin looks ahead for a usable endpoint.
const MAX_SKIPS: usize = 64;
/// Ring points consistent hashing walks past unusable owners.
const MAX_RING_WALK: usize = 1024;
/// Draws random and P2C policies make before giving up on finding a usable endpoint.
const MAX_DRAWS: usize = 8;
/// Virtual nodes on the hash ring per unit of (gcd-reduced) weight.
const RING_POINTS_PER_WEIGHT: u64 = 160;
/// Most points on one hash ring.
const MAX_RING_POINTS: u64 = 1 << 17;
/// 2^64 / golden ratio, the splitmix64 increment.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// One compiled balancer for one upstream, shared by all worker threads.
pub struct Balancer {
    len: usize,
    kind: Kind,
}

enum Kind {
    Empty,
    RoundRobin(RoundRobin),
    Random(Weighted),
    LeastRequest(Weighted),
    PeakEwma(Weighted),
    ConsistentHash { ring: Ring, fallback: Weighted },
}

impl Balancer {
    /// Builds the balancer for `ids` (stable identity per endpoint: its configured
    /// address text) with `weights` (1..=1000; 0 counts as 1, a missing weight as 1)
    /// for `workers` worker threads (0 counts as 1).
    pub fn new(policy: &BalanceConfig, ids: &[&str], weights: &[u32], workers: usize) -> Balancer {
        let len = ids.len();
        let weights: Vec<u64> = (0..len)
            .map(|i| u64::from(weights.get(i).copied().unwrap_or(1).max(1)))
            .collect();
        let kind = if len == 0 {
            Kind::Empty
        } else {
            match policy {
                BalanceConfig::RoundRobin => Kind::RoundRobin(RoundRobin::new(&weights, workers)),
                BalanceConfig::Random => Kind::Random(Weighted::new(&weights)),
                BalanceConfig::LeastRequest => Kind::LeastRequest(Weighted::new(&weights)),
                BalanceConfig::PeakEwma => Kind::PeakEwma(Weighted::new(&weights)),
                BalanceConfig::ConsistentHash(_) => Kind::ConsistentHash {
                    ring: Ring::new(ids, &weights),
                    fallback: Weighted::new(&weights),
                },
            }
        };
        Balancer { len, kind }
    }

    /// Picks an endpoint index for which `usable` holds; `None` when the
    /// policy found none in a few draws (the caller falls back to a scan).
    ///
    /// `worker` selects the round-robin cursor (taken modulo the worker count).
    /// `key` is used only by `consistent_hash`; there `None` means a weighted
    /// random pick, and an unusable owner passes the key on to the next
    /// endpoint round the ring. `states` gives the load that `least_request`
    /// and `peak_ewma` compare (a missing entry counts as idle).
    pub fn pick(
        &self,
        worker: usize,
        key: Option<&[u8]>,
        states: &[EndpointState],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match &self.kind {
            Kind::Empty => None,
            Kind::RoundRobin(rr) => rr.pick(worker, usable),
            Kind::Random(w) => redraw(|| Some(w.pick()).filter(|&i| usable(i))),
            Kind::LeastRequest(w) => redraw(|| p2c(w, &usable, |i| load(states, i))),
            Kind::PeakEwma(w) => {
                let now = now_ms();
                redraw(|| p2c(w, &usable, |i| states.get(i).map_or(0.0, |s| s.cost(now))))
            }
            Kind::ConsistentHash { ring, fallback } => match key {
                Some(key) => ring.lookup(key, usable),
                None => redraw(|| Some(fallback.pick()).filter(|&i| usable(i))),
            },
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no endpoints (every pick is `None`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = match &self.kind {
            Kind::Empty => "empty",
            Kind::RoundRobin(_) => "round_robin",
            Kind::Random(_) => "random",
            Kind::LeastRequest(_) => "least_request",
            Kind::PeakEwma(_) => "peak_ewma",
            Kind::ConsistentHash { .. } => "consistent_hash",
        };
        f.debug_struct("Balancer")
            .field("policy", &policy)
            .field("endpoints", &self.len)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Weights

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Divides all weights by their greatest common divisor.
fn reduce_by_gcd(weights: &mut [u64]) {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    if g > 1 {
        for w in weights {
            *w /= g;
        }
    }
}

/// Weighted random choice over endpoints.
struct Weighted {
    /// `prefix[i]` = sum of weights `0..=i`.
    prefix: Box<[u64]>,
    weights: Box<[u64]>,
    uniform: bool,
}

impl Weighted {
    fn new(weights: &[u64]) -> Self {
        let mut sum = 0;
        let prefix = weights
            .iter()
            .map(|&w| {
                sum += w;
                sum
            })
            .collect();
        let uniform = weights.windows(2).all(|p| p[0] == p[1]);
        Weighted {
            prefix,
            weights: weights.into(),
            uniform,
        }
    }

    fn len(&self) -> usize {
        self.weights.len()
    }

    fn total(&self) -> u64 {
        self.prefix.last().copied().unwrap_or(0)
    }

    fn weight(&self, i: usize) -> u64 {
        self.weights.get(i).copied().unwrap_or(1)
    }

    /// The endpoint owning point `r` of `0..total`.
    fn owner_of(&self, r: u64) -> usize {
        self.prefix.partition_point(|&c| c <= r)
    }

    /// A weighted random endpoint. Needs at least one endpoint.
    fn pick(&self) -> usize {
        if self.uniform {
            fastrand::usize(..self.len())
        } else {
            self.owner_of(fastrand::u64(..self.total()))
        }
    }

    /// A weighted random endpoint other than `first`. Needs at least two endpoints.
    fn pick_excluding(&self, first: usize) -> usize {
        if self.uniform {
            let j = fastrand::usize(..self.len() - 1);
            if j >= first { j + 1 } else { j }
        } else {
            let w = self.weight(first);
            let before = self.prefix.get(first).copied().unwrap_or(0) - w;
            let mut r = fastrand::u64(..self.total() - w);
            if r >= before {
                r += w;
            }
            self.owner_of(r)
        }
    }
}

// ---------------------------------------------------------------------------
// Round robin

/// A per-worker cursor on its own cache line.
#[repr(align(64))]
struct Cursor(AtomicUsize);

struct RoundRobin {
    schedule: Box<[u32]>,
    cursors: Box<[Cursor]>,
}

impl RoundRobin {
    fn new(weights: &[u64], workers: usize) -> Self {
        let schedule = build_schedule(weights);
        let len = schedule.len() as u128;
        let workers = workers.max(1);
        let cursors = (0..workers)
            .map(|w| {
                Cursor(AtomicUsize::new(
                    (w as u128 * len / workers as u128) as usize,
                ))
            })
            .collect();
        RoundRobin {
            schedule: schedule.into(),
            cursors,
        }
    }

    /// The next usable endpoint in the schedule, looking at most
    /// `MAX_SKIPS` entries ahead.
    fn pick(&self, worker: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let cursor = self.cursors.get(worker % self.cursors.len())?;
        for _ in 0..self.schedule.len().min(MAX_SKIPS) {
            let at = cursor.0.fetch_add(1, Ordering::Relaxed);
            let i = self
                .schedule
                .get(at % self.schedule.len())
                .map_or(0, |&i| i as usize);
            if usable(i) {
                return Some(i);
            }
        }
        None
    }
}

/// The full round-robin cycle: one entry per pick, endpoint indices.
fn build_schedule(weights: &[u64]) -> Vec<u32> {
    let mut w = weights.to_vec();
    reduce_by_gcd(&mut w);
    let mut total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = ((*x * MAX_SCHEDULE + total / 2) / total).max(1);
        }
        reduce_by_gcd(&mut w);
        total = w.iter().sum();
    }
    if w.iter().all(|&x| x == 1) {
        return (0..w.len() as u32).collect();
    }
    if total.saturating_mul(w.len() as u64) <= SMOOTH_BUILD_BUDGET {
        smooth_schedule(&w, total)
    } else {
        edf_schedule(&w, total)
    }
}

/// NGINX's smooth weighted round robin: every step each endpoint gains its
/// weight, the highest (first on ties) is picked and loses the total.
fn smooth_schedule(w: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        let mut best_value = i64::MIN;
        for (i, (c, &wi)) in current.iter_mut().zip(w).enumerate() {
            *c += wi as i64;
            if *c > best_value {
                best_value = *c;
                best = i;
            }
        }
        if let Some(c) = current.get_mut(best) {
            *c -= total as i64;
        }
        out.push(best as u32);
    }
    out
}

/// An endpoint's next deadline `num / den` in the EDF schedule.
#[derive(PartialEq, Eq)]
struct Due {
    num: u64,
    den: u64,
    index: u32,
}

impl Ord for Due {
    /// Earlier deadline (then lower index) is greater: `BinaryHeap` pops it first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.num * self.den)
            .cmp(&(self.num * other.den))
            .then(other.index.cmp(&self.index))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

/// Earliest deadline first: the k-th pick (k from 0) of endpoint i is due at
/// `(k + 1/2) / w_i`. O(total · log n), used when NGINX's build is too costly.
fn edf_schedule(w: &[u64], total: u64) -> Vec<u32> {
    let mut heap: BinaryHeap<Due> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| Due {
            num: 1,
            den: 2 * wi,
            index: i as u32,
        })
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let Some(mut due) = heap.pop() else { break };
        out.push(due.index);
        due.num += 2;
        heap.push(due);
    }
    out
}

// ---------------------------------------------------------------------------
// Least request

fn load(states: &[EndpointState], i: usize) -> f64 {
    states.get(i).map_or(0.0, |s| f64::from(s.inflight()))
}

/// Power of two choices: lower `cost / weight` wins, ties go to the first
/// drawn; an unusable draw loses to a usable one.
fn p2c(w: &Weighted, usable: impl Fn(usize) -> bool, cost: impl Fn(usize) -> f64) -> Option<usize> {
    if w.len() == 1 {
        return Some(0);
    }
    let a = w.pick();
    let b = w.pick_excluding(a);
    match (usable(a), usable(b)) {
        (true, false) => return Some(a),
        (false, true) => return Some(b),
        (false, false) => return None,
        (true, true) => {}
    }
    // cost_b / w_b < cost_a / w_a, cross-multiplied.
    if cost(b) * (w.weight(a) as f64) < cost(a) * (w.weight(b) as f64) {
        Some(b)
    } else {
        Some(a)
    }
}

/// Draws up to `MAX_DRAWS` times until a draw finds a usable endpoint (each
/// draw checks usability itself, once per endpoint it looks at: the check
/// may be random, under slow start).
fn redraw(draw: impl Fn() -> Option<usize>) -> Option<usize> {
    (0..MAX_DRAWS).find_map(|_| draw())
}

// ---------------------------------------------------------------------------
// Consistent hash

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The splitmix64 / murmur3-style finaliser: full avalanche over 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a request key lands on the ring.
fn hash_key(key: &[u8]) -> u64 {
    mix64(fnv1a(key))
}

/// Sorted ring points and the endpoint owning each.
struct Ring {
    hashes: Box<[u64]>,
    owners: Box<[u32]>,
}

impl Ring {
    fn new(ids: &[&str], weights: &[u64]) -> Self {
        let mut w = weights.to_vec();
        reduce_by_gcd(&mut w);
        let wanted: u64 = w.iter().map(|&x| x * RING_POINTS_PER_WEIGHT).sum();
        let counts: Vec<u64> = w
            .iter()
            .map(|&x| {
                let n = x * RING_POINTS_PER_WEIGHT;
                if wanted > MAX_RING_POINTS {
                    (n * MAX_RING_POINTS / wanted).max(1)
                } else {
                    n
                }
            })
            .collect();

        // The same id listed twice gets a distinct seed for each occurrence.
        let mut seen: HashMap<&str, u64> = HashMap::new();
        let mut points: Vec<(u64, u64, u32)> =
            Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        for (i, (&id, &count)) in ids.iter().zip(&counts).enumerate() {
            let occurrence = seen.entry(id).or_insert(0);
            let base = fnv1a(id.as_bytes());
            let seed = if *occurrence == 0 {
                base
            } else {
                mix64(base ^ occurrence.wrapping_mul(GOLDEN))
            };
            *occurrence += 1;
            for j in 0..count {
                let h = mix64(seed.wrapping_add((j + 1).wrapping_mul(GOLDEN)));
                points.push((h, seed, i as u32));
            }
        }
        // Ties (practically never) are broken by the id's seed, not by config order.
        points.sort_unstable();
        Ring {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.2).collect(),
        }
    }

    /// The owner of the first point at or after the key's hash (wrapping
    /// round) that is usable: a key whose endpoint is down moves to the next
    /// endpoint on the ring, and only that key's share moves.
    fn lookup(&self, key: &[u8], usable: impl Fn(usize) -> bool) -> Option<usize> {
        let h = hash_key(key);
        let start = self.hashes.partition_point(|&p| p < h);
        let n = self.owners.len();
        // Bounded, so that an outage does not cost a walk of the whole ring
        // per request; past the bound the caller scans the endpoints.
        (0..n.min(MAX_RING_WALK))
            .map(|k| self.owners[(start + k) % n] as usize)
            .find(|&i| usable(i))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::schema::HashKey;

    fn idle(n: usize) -> Vec<EndpointState> {
        loaded(&vec![0; n])
    }

    /// Endpoint states with these requests in flight.
    fn loaded(inflight: &[u32]) -> Vec<EndpointState> {
        inflight
            .iter()
            .map(|&n| {
                let s = EndpointState::default();
                (0..n).for_each(|_| s.begin());
                s
            })
            .collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:80", i + 1)).collect()
    }

    fn build(policy: &BalanceConfig, ids: &[String], weights: &[u32], workers: usize) -> Balancer {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        Balancer::new(policy, &refs, weights, workers)
    }

    fn counts(b: &Balancer, worker: usize, picks: usize, inflight: &[EndpointState]) -> Vec<usize> {
        let mut c = vec![0; b.len()];
        for _ in 0..picks {
            c[b.pick(worker, None, inflight, |_| true).unwrap()] += 1;
        }
        c
    }

    fn assert_within(counts: &[usize], weights: &[u32], tolerance: f64) {
        let picks: usize = counts.iter().sum();
        let total: u32 = weights.iter().sum();
        for (i, (&c, &w)) in counts.iter().zip(weights).enumerate() {
            let expected = picks as f64 * f64::from(w) / f64::from(total);
            let off = (c as f64 - expected).abs() / expected;
            assert!(
                off <= tolerance,
                "endpoint {i}: {c} picks, expected {expected} ({counts:?})"
            );
        }
    }

    fn ch() -> BalanceConfig {
        BalanceConfig::ConsistentHash(HashKey::Path)
    }

    fn all_policies() -> Vec<BalanceConfig> {
        vec![
            BalanceConfig::RoundRobin,
            BalanceConfig::Random,
            BalanceConfig::LeastRequest,
            ch(),
        ]
    }

    #[test]
    fn balancer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Balancer>();
    }

    #[test]
    fn empty_upstream_picks_nothing() {
        for policy in all_policies() {
            let b = Balancer::new(&policy, &[], &[], 4);
            assert!(b.is_empty());
            assert_eq!(b.pick(0, None, &[], |_| true), None);
            assert_eq!(b.pick(0, Some(b"k"), &[], |_| true), None);
        }
    }

    #[test]
    fn single_endpoint_always_picked() {
        for policy in all_policies() {
            let b = build(&policy, &ids(1), &[7], 2);
            for w in 0..4 {
                assert_eq!(b.pick(w, None, &idle(1), |_| true), Some(0));
                assert_eq!(b.pick(w, Some(b"x"), &idle(1), |_| true), Some(0));
            }
        }
    }

    #[test]
    fn smooth_wrr_matches_nginx_sequence() {
        let b = build(&BalanceConfig::RoundRobin, &ids(3), &[5, 1, 1], 1);
        let seq: Vec<usize> = (0..14)
            .map(|_| b.pick(0, None, &[], |_| true).unwrap())
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn smooth_wrr_exact_proportions() {
        let b = build(&BalanceConfig::RoundRobin, &ids(3), &[3, 2, 1], 1);
        assert_eq!(counts(&b, 0, 6000, &[]), [3000, 2000, 1000]);
        // Never two of the smaller endpoints' picks in a row when a bigger one is due.
        let seq: Vec<usize> = (0..6)
            .map(|_| b.pick(0, None, &[], |_| true).unwrap())
            .collect();
        assert_eq!(seq, [0, 1, 0, 2, 1, 0]);
    }

    #[test]
    fn weights_reduced_by_gcd() {
        let b = build(&BalanceConfig::RoundRobin, &ids(2), &[10, 20], 1);
        let seq: Vec<usize> = (0..6)
            .map(|_| b.pick(0, None, &[], |_| true).unwrap())
            .collect();
        assert_eq!(seq, [1, 0, 1, 1, 0, 1]);
    }

    #[test]
    fn equal_weights_rotate() {
        let b = build(&BalanceConfig::RoundRobin, &ids(3), &[4, 4, 4], 1);
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(0, None, &[], |_| true).unwrap())
            .collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn workers_have_own_staggered_cursors() {
        let b = build(&BalanceConfig::RoundRobin, &ids(4), &[1, 1, 1, 1], 4);
        let first: Vec<usize> = (0..4)
            .map(|w| b.pick(w, None, &[], |_| true).unwrap())
            .collect();
        assert_eq!(first, [0, 1, 2, 3]);

        let b = build(&BalanceConfig::RoundRobin, &ids(3), &[3, 2, 1], 4);
        for w in 0..4 {
            assert_eq!(counts(&b, w, 600, &[]), [300, 200, 100], "worker {w}");
        }
        // Out-of-range worker numbers wrap instead of panicking.
        assert!(b.pick(17, None, &[], |_| true).is_some());
    }

    #[test]
    fn workers_in_parallel_keep_proportions() {
        let b = build(&BalanceConfig::RoundRobin, &ids(3), &[5, 1, 1], 4);
        let b = &b;
        let all = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|w| s.spawn(move || counts(b, w, 7000, &[])))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        for c in all {
            assert_eq!(c, [5000, 1000, 1000]);
        }
    }

    #[test]
    fn large_weight_sums_are_scaled() {
        // Sum 99,950 > 65,536: scaled, shares stay close.
        let weights: Vec<u32> = (0..100)
            .map(|i| if i % 2 == 0 { 1000 } else { 999 })
            .collect();
        let schedule = build_schedule(&weights.iter().map(|&w| u64::from(w)).collect::<Vec<_>>());
        assert!(schedule.len() as u64 <= MAX_SCHEDULE + 100);
        let b = build(&BalanceConfig::RoundRobin, &ids(100), &weights, 1);
        assert_within(&counts(&b, 0, schedule.len(), &[]), &weights, 0.01);
    }

    #[test]
    fn many_endpoints_use_edf_schedule() {
        // 5000 endpoints: NGINX's build would cost too much; EDF keeps the shares.
        let weights: Vec<u32> = (0..5000).map(|i| 1 + (i % 4)).collect();
        let w64: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
        let schedule = build_schedule(&w64);
        assert_eq!(schedule.len(), 12_500);
        let mut c = vec![0usize; 5000];
        for &i in &schedule {
            c[i as usize] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            assert_eq!(c[i] as u32, w);
        }
    }

    #[test]
    fn edf_interleaves() {
        assert_eq!(edf_schedule(&[5, 1, 1], 7), [0, 0, 0, 1, 2, 0, 0]);
    }

    #[test]
    fn random_distribution() {
        let b = build(&BalanceConfig::Random, &ids(3), &[3, 2, 1], 1);
        assert_within(&counts(&b, 0, 60_000, &[]), &[3, 2, 1], 0.05);
        let b = build(&BalanceConfig::Random, &ids(4), &[1, 1, 1, 1], 1);
        assert_within(&counts(&b, 0, 60_000, &[]), &[1, 1, 1, 1], 0.05);
    }

    #[test]
    fn pick_excluding_never_returns_excluded() {
        for weights in [vec![1, 1, 1], vec![3, 2, 1]] {
            let w = Weighted::new(&weights);
            for first in 0..3 {
                for _ in 0..1000 {
                    let j = w.pick_excluding(first);
                    assert!(j < 3 && j != first);
                }
            }
        }
    }

    #[test]
    fn least_request_idle_distribution() {
        let b = build(&BalanceConfig::LeastRequest, &ids(4), &[1, 1, 1, 1], 1);
        assert_within(&counts(&b, 0, 60_000, &idle(4)), &[1, 1, 1, 1], 0.05);
        let b = build(&BalanceConfig::LeastRequest, &ids(3), &[3, 2, 1], 1);
        assert_within(&counts(&b, 0, 60_000, &idle(3)), &[3, 2, 1], 0.05);
    }

    #[test]
    fn least_request_prefers_fewer_in_flight() {
        let b = build(&BalanceConfig::LeastRequest, &ids(2), &[1, 1], 1);
        assert!(counts(&b, 0, 2000, &loaded(&[5, 0]))[0] == 0);
        assert!(counts(&b, 0, 2000, &loaded(&[0, 1]))[1] == 0);

        // With more endpoints the busiest one can never win a comparison.
        let b = build(&BalanceConfig::LeastRequest, &ids(4), &[1, 1, 1, 1], 1);
        let c = counts(&b, 0, 4000, &loaded(&[0, 0, 9, 0]));
        assert_eq!(c[2], 0);
        assert!(c.iter().enumerate().all(|(i, &n)| i == 2 || n > 1000));
    }

    #[test]
    fn least_request_divides_by_weight() {
        // 3 in flight at weight 4 (0.75) beats 1 in flight at weight 1.
        let b = build(&BalanceConfig::LeastRequest, &ids(2), &[4, 1], 1);
        assert_eq!(counts(&b, 0, 1000, &loaded(&[3, 1])), [1000, 0]);
        // 5 at weight 4 (1.25) loses to 1 at weight 1.
        assert_eq!(counts(&b, 0, 1000, &loaded(&[5, 1])), [0, 1000]);
    }

    #[test]
    fn least_request_tolerates_short_inflight_slice() {
        let b = build(&BalanceConfig::LeastRequest, &ids(3), &[1, 1, 1], 1);
        assert!(b.pick(0, None, &[], |_| true).is_some());
    }

    fn keys() -> Vec<String> {
        (0..10_000).map(|i| format!("user-{i}")).collect()
    }

    /// The id each key maps to.
    fn assignment(ids: &[String], weights: &[u32]) -> Vec<String> {
        let b = build(&ch(), ids, weights, 1);
        keys()
            .iter()
            .map(|k| ids[b.pick(0, Some(k.as_bytes()), &[], |_| true).unwrap()].clone())
            .collect()
    }

    #[test]
    fn hash_is_stable() {
        // Fixed values: the ring must not change between builds or releases.
        assert_eq!(fnv1a(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xAF63_DC4C_8601_EC8C);
        let b = build(&ch(), &ids(5), &[1; 5], 1);
        let again = build(&ch(), &ids(5), &[1; 5], 3);
        for k in keys().iter().take(1000) {
            let first = b.pick(0, Some(k.as_bytes()), &[], |_| true);
            assert_eq!(b.pick(1, Some(k.as_bytes()), &[], |_| true), first);
            assert_eq!(again.pick(2, Some(k.as_bytes()), &[], |_| true), first);
        }
    }

    #[test]
    fn consistent_hash_even_distribution() {
        let ids = ids(4);
        let got = assignment(&ids, &[1; 4]);
        for id in &ids {
            let n = got.iter().filter(|g| *g == id).count();
            assert!((1875..=3125).contains(&n), "{id}: {n} keys");
        }
    }

    #[test]
    fn consistent_hash_ignores_config_order() {
        let forward = ids(5);
        let mut reversed = forward.clone();
        reversed.reverse();
        assert_eq!(
            assignment(&forward, &[1; 5]),
            assignment(&reversed, &[1; 5])
        );
    }

    #[test]
    fn consistent_hash_removal_moves_only_removed_keys() {
        let five = ids(5);
        let before = assignment(&five, &[1; 5]);
        let removed = &five[2];
        let four: Vec<String> = five.iter().filter(|i| *i != removed).cloned().collect();
        let after = assignment(&four, &[1; 4]);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == removed {
                assert_ne!(a, removed);
                moved += 1;
            } else {
                assert_eq!(a, b, "a key not on the removed endpoint moved");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn consistent_hash_addition_moves_about_one_sixth_to_new() {
        let five = ids(5);
        let six = ids(6);
        let before = assignment(&five, &[1; 5]);
        let after = assignment(&six, &[1; 6]);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                assert_eq!(a, &six[5], "a moved key went to an old endpoint");
                moved += 1;
            }
        }
        assert!((800..=2500).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn consistent_hash_respects_weight() {
        let ids = ids(3);
        let got = assignment(&ids, &[1, 2, 1]);
        let n: Vec<usize> = ids
            .iter()
            .map(|id| got.iter().filter(|g| *g == id).count())
            .collect();
        let ratio = n[1] as f64 / ((n[0] + n[2]) as f64 / 2.0);
        assert!((1.6..=2.4).contains(&ratio), "counts {n:?}");
    }

    #[test]
    fn consistent_hash_duplicate_ids_both_used() {
        let ids = vec!["a:80".to_owned(), "a:80".to_owned()];
        let b = build(&ch(), &ids, &[1, 1], 1);
        let mut c = [0; 2];
        for k in keys() {
            c[b.pick(0, Some(k.as_bytes()), &[], |_| true).unwrap()] += 1;
        }
        assert!(c[0] > 3000 && c[1] > 3000, "{c:?}");
    }

    #[test]
    fn consistent_hash_without_key_is_weighted_random() {
        let b = build(&ch(), &ids(3), &[3, 2, 1], 1);
        assert_within(&counts(&b, 0, 60_000, &[]), &[3, 2, 1], 0.05);
    }

    #[test]
    fn ring_size_is_capped() {
        let weights: Vec<u64> = (0..200).map(|i| 999 + (i % 2)).collect();
        let ids = ids(200);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let ring = Ring::new(&refs, &weights);
        assert!(ring.hashes.len() as u64 <= MAX_RING_POINTS);
        assert!(ring.hashes.len() as u64 > MAX_RING_POINTS - 400);
        assert!(ring.hashes.windows(2).all(|p| p[0] <= p[1]));
    }
}
