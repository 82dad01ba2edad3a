//! What the request path, the health checker and the admin API share about an
//! upstream and its endpoints: atomics only, no lock.
//!
//! The state lives in the [`super::Upstream`], so it survives a reload exactly
//! when the upstream does (its definition unchanged).

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::observe::metrics::Histogram;

/// Milliseconds on the process's monotonic clock; never 0.
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_millis() as u64 + 1
}

/// One endpoint's health, ejection, load and latency. Aligned to a cache line
/// so that one endpoint's in-flight count, written by every request to it,
/// does not share a line with its neighbours' health.
#[repr(align(64))]
pub struct EndpointState {
    /// Active health checks' verdict (true without checks).
    healthy: AtomicBool,
    /// Ejected by outlier detection until this time (`now_ms`); 0 when not
    /// (reset once the time has passed, so the common case reads no clock).
    ejected_until: AtomicU64,
    /// When the last ejection ended (`now_ms`), for growing ejection times.
    last_return: AtomicU64,
    /// Ejections in a row; each lasts longer. Reset when an endpoint that
    /// came back goes a whole ejection time without being ejected again.
    ejections: AtomicU32,
    /// When the endpoint last became available (`now_ms`), for slow start.
    available_since: AtomicU64,
    /// Requests in flight, all workers together.
    inflight: AtomicU32,
    /// Peak-EWMA response time in microseconds, as f64 bits.
    ewma_micros: AtomicU64,
    /// When `ewma_micros` was last updated (`now_ms`).
    ewma_at: AtomicU64,
    /// Passive checks: consecutive 5xx answers.
    pub(crate) consecutive_5xx: AtomicU32,
    /// Passive checks: consecutive connect failures.
    pub(crate) consecutive_connect: AtomicU32,
    /// Passive checks: start of the current failure-ratio window (`now_ms`).
    pub(crate) window_start: AtomicU64,
    /// Passive checks: requests and failures in the current window, packed
    /// as `requests << 32 | failures` so both move together.
    pub(crate) window_counts: AtomicU64,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            last_return: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            available_since: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            ewma_micros: AtomicU64::new(0f64.to_bits()),
            ewma_at: AtomicU64::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            window_counts: AtomicU64::new(0),
        }
    }
}

/// Decay time of the peak-EWMA latency (linkerd2-proxy's default).
const EWMA_DECAY_MS: f64 = 10_000.0;
/// Latency assumed for an endpoint with no sample yet (linkerd2-proxy's default).
const EWMA_DEFAULT_MICROS: f64 = 30_000.0;

impl EndpointState {
    /// Whether active checks consider the endpoint healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records the active checks' verdict; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed && healthy && !self.is_ejected(now_ms()) {
            self.available_since.store(now_ms(), Ordering::Relaxed);
        }
        changed
    }

    /// Whether outlier detection has the endpoint ejected at `now` (`now_ms`).
    pub fn is_ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// Until when the endpoint is ejected (`now_ms`), if it is.
    pub fn ejected_until(&self) -> Option<u64> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (until != 0 && now_ms() < until).then_some(until)
    }

    /// Ejections in a row.
    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Whether the balancer may pick the endpoint: healthy and not ejected.
    /// The common case (not ejected) reads two atomics and no clock.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && {
            let until = self.ejected_until.load(Ordering::Relaxed);
            until == 0 || self.returned(until)
        }
    }

    /// Whether an ejection lasting `until` is over; the first to see it so
    /// clears it and records the return.
    fn returned(&self, until: u64) -> bool {
        let now = now_ms();
        if now < until {
            return false;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.last_return.store(until, Ordering::Relaxed);
        }
        true
    }

    /// Ejects the endpoint for `base` times the number of ejections in a row,
    /// at most `max`. Returns false when it already was ejected.
    pub(crate) fn eject(&self, base: Duration, max: Duration) -> bool {
        let now = now_ms();
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0 && !self.returned(until) {
            return false;
        }
        // An endpoint back for a whole base time without failing starts over.
        let back = self.last_return.load(Ordering::Relaxed);
        let n = if back != 0 && now.saturating_sub(back) < base.as_millis() as u64 {
            self.ejections.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.ejections.store(1, Ordering::Relaxed);
            1
        };
        let time = base.saturating_mul(n).min(max);
        let new_until = now + (time.as_millis() as u64).max(1);
        if self
            .ejected_until
            .compare_exchange(0, new_until, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_connect.store(0, Ordering::Relaxed);
        self.window_counts.store(0, Ordering::Relaxed);
        self.available_since.store(new_until, Ordering::Relaxed);
        true
    }

    /// How far into its slow start the endpoint is at `now` (`now_ms`):
    /// 1.0 once `slow_start` has passed since it became available.
    pub fn warmth(&self, slow_start: Duration, now: u64) -> f64 {
        let since = self.available_since.load(Ordering::Relaxed);
        let window = slow_start.as_millis() as u64;
        if since == 0 || window == 0 || now >= since + window {
            return 1.0;
        }
        // Never quite 0, so that a warming endpoint still gets a trickle.
        (now.saturating_sub(since) as f64 / window as f64).max(0.05)
    }

    /// Requests in flight to the endpoint.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The peak-EWMA response time, decayed to `now` (`now_ms`), in microseconds.
    pub fn ewma_micros(&self, now: u64) -> f64 {
        let at = self.ewma_at.load(Ordering::Relaxed);
        if at == 0 {
            return EWMA_DEFAULT_MICROS;
        }
        let v = f64::from_bits(self.ewma_micros.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(at) as f64;
        v * (-elapsed / EWMA_DECAY_MS).exp()
    }

    /// Folds one response time into the peak EWMA: a slower sample takes over
    /// at once, faster ones pull it down with the decay.
    pub(crate) fn observe_latency(&self, rtt: Duration) {
        let now = now_ms();
        let sample = rtt.as_secs_f64() * 1e6;
        let at = self.ewma_at.load(Ordering::Relaxed);
        let old = f64::from_bits(self.ewma_micros.load(Ordering::Relaxed));
        let new = if at == 0 || sample > old {
            sample
        } else {
            let w = (-(now.saturating_sub(at) as f64) / EWMA_DECAY_MS).exp();
            old * w + sample * (1.0 - w)
        };
        // Racing updates from other workers may overwrite this one: each is a
        // valid recent estimate, which is all the balancer needs.
        self.ewma_micros.store(new.to_bits(), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    /// The peak-EWMA load: latency times (in flight + 1).
    pub fn cost(&self, now: u64) -> f64 {
        self.ewma_micros(now) * f64::from(self.inflight() + 1)
    }
}

/// One unit of a shared gauge (requests, pending requests, retries,
/// connections), given back when dropped.
pub struct Held<C: Deref<Target = AtomicU32>>(C);

impl<C: Deref<Target = AtomicU32>> Held<C> {
    /// Takes one unit of `count`, unless `cap` units (0: no cap) are taken.
    pub fn take(count: C, cap: u32) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        let held = Held(count);
        (cap == 0 || before < cap).then_some(held)
    }
}

impl<C: Deref<Target = AtomicU32>> Drop for Held<C> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream's counters and gauges, read by the metrics endpoint.
#[derive(Default)]
pub struct UpstreamStats {
    /// Connections open now, all workers together (shared with each
    /// connection's task, which ends after the upstream may be gone).
    pub connections: Arc<AtomicU32>,
    /// Requests in flight now, counted only under a `max_requests` cap
    /// (see [`super::Upstream::requests_in_flight`] for the figure).
    pub requests: AtomicU32,
    /// Requests waiting for a connection now.
    pub pending: AtomicU32,
    /// Retries in flight now.
    pub retries_active: AtomicU32,
    /// Connections opened.
    pub connections_opened: AtomicU64,
    /// Requests sent over a pooled connection.
    pub connections_reused: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
    /// Retries refused by the retry budget.
    pub retries_over_budget: AtomicU64,
    /// Endpoints ejected by outlier detection.
    pub ejections: AtomicU64,
    /// Active health verdicts that changed (either way).
    pub health_transitions: AtomicU64,
    /// Requests refused by a circuit breaker, by cap.
    pub rejected: [AtomicU64; 4],
    /// Time until the upstream's response head.
    pub request_duration: Histogram,
    /// Time to connect.
    pub connect_duration: Histogram,
}

/// A circuit-breaker cap, as named in problem bodies and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `circuit_breaker.max_connections`.
    Connections = 0,
    /// `circuit_breaker.max_pending`.
    Pending = 1,
    /// `circuit_breaker.max_requests`.
    Requests = 2,
    /// `circuit_breaker.max_retries`.
    Retries = 3,
}

impl Cap {
    /// Every cap, in index order.
    pub const ALL: [Cap; 4] = [Cap::Connections, Cap::Pending, Cap::Requests, Cap::Retries];

    /// The config key of the cap.
    pub fn key(self) -> &'static str {
        match self {
            Cap::Connections => "max_connections",
            Cap::Pending => "max_pending",
            Cap::Requests => "max_requests",
            Cap::Retries => "max_retries",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_grows_and_is_capped() {
        let s = EndpointState::default();
        assert!(s.is_available());
        assert!(s.eject(Duration::from_millis(50), Duration::from_millis(120)));
        assert!(!s.is_available());
        assert!(!s.eject(Duration::from_millis(50), Duration::from_millis(120)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.is_available());
        // Ejected again soon after coming back: twice as long.
        assert!(s.eject(Duration::from_millis(50), Duration::from_millis(120)));
        assert_eq!(s.ejection_count(), 2);
        let until = s.ejected_until().unwrap_or(0);
        let left = until.saturating_sub(now_ms());
        assert!((60..=100).contains(&left), "{left}");
        std::thread::sleep(Duration::from_millis(110));
        assert!(s.eject(Duration::from_millis(50), Duration::from_millis(120)));
        let left = s.ejected_until().unwrap_or(0).saturating_sub(now_ms());
        assert!(left <= 120, "capped at max: {left}");
    }

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays() {
        let s = EndpointState::default();
        assert_eq!(s.ewma_micros(now_ms()), EWMA_DEFAULT_MICROS);
        s.observe_latency(Duration::from_millis(1));
        let a = s.ewma_micros(now_ms());
        assert!((900.0..=1000.0).contains(&a), "{a}");
        s.observe_latency(Duration::from_millis(50));
        assert!(s.ewma_micros(now_ms()) > 40_000.0);
        s.begin();
        s.begin();
        assert!(s.cost(now_ms()) > 3.0 * 40_000.0);
    }

    #[test]
    fn warmth_ramps() {
        let s = EndpointState::default();
        assert_eq!(s.warmth(Duration::from_secs(10), now_ms()), 1.0);
        s.set_healthy(false);
        s.set_healthy(true);
        let w = s.warmth(Duration::from_secs(10), now_ms());
        assert!(w < 0.1, "{w}");
        let later = s.warmth(Duration::from_secs(10), now_ms() + 5_000);
        assert!((0.45..=0.55).contains(&later), "{later}");
    }
}
