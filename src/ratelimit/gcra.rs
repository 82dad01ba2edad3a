//! GCRA (the generic cell rate algorithm), pure arithmetic: the same formula
//! runs here for local limits and in the Redis script for shared ones.
//!
//! A key's whole state is one number, its theoretical arrival time (TAT).
//! A TAT at or before `now` means the key is idle and full, the same as no
//! state at all, which is what lets idle keys be evicted without loss.

use std::time::Duration;

use crate::config::units::Rate;

/// A limit's parameters: one request costs `emission` of time, and up to
/// `burst` requests may be taken at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds per request at the steady rate (`period / count`).
    pub emission: u64,
    /// Requests allowed at once.
    pub burst: u64,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request may pass.
    pub allowed: bool,
    /// Requests that could pass right after this one.
    pub remaining: u64,
    /// Time until the key is full again (nothing counted against it).
    pub reset: Duration,
    /// When refused: time until one request would pass.
    pub retry_after: Duration,
}

impl Gcra {
    /// The parameters of `rate` with `burst` (at least 1).
    pub fn new(rate: Rate, burst: u64) -> Self {
        let period = u64::try_from(rate.period.as_nanos()).unwrap_or(u64::MAX);
        Self {
            emission: (period / rate.count.max(1)).max(1),
            burst: burst.max(1),
        }
    }

    /// Decides a request of `cost` at `now` (nanoseconds on any clock the
    /// caller keeps monotonic) for a key whose stored TAT is `tat` (`None`:
    /// no state). Returns the TAT to store (unchanged when refused) and the
    /// decision.
    pub fn decide(&self, tat: Option<u64>, now: u64, cost: u64) -> (u64, Decision) {
        // Signed and wide: `allow_at` is before the clock's zero when the
        // burst is longer than the time the clock has run.
        let (now_i, emission) = (i128::from(now), i128::from(self.emission));
        let tat = i128::from(tat.map_or(now, |t| t.max(now)));
        let new_tat = tat + emission * i128::from(cost);
        let allow_at = new_tat - emission * i128::from(self.burst);
        let nanos = |d: i128| Duration::from_nanos(u64::try_from(d).unwrap_or(u64::MAX));
        if allow_at > now_i {
            let decision = Decision {
                allowed: false,
                remaining: 0,
                reset: nanos(tat - now_i),
                retry_after: nanos(allow_at - now_i),
            };
            return (u64::try_from(tat).unwrap_or(u64::MAX), decision);
        }
        let decision = Decision {
            allowed: true,
            remaining: u64::try_from((now_i - allow_at) / emission).unwrap_or(u64::MAX),
            reset: nanos(new_tat - now_i),
            retry_after: Duration::ZERO,
        };
        (u64::try_from(new_tat).unwrap_or(u64::MAX), decision)
    }

    /// Gives back `cost` taken from a key whose TAT is now `tat` (a later
    /// limit of the same request refused it).
    pub fn refund(&self, tat: u64, cost: u64) -> u64 {
        tat.saturating_sub(self.emission.saturating_mul(cost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_full_burst_passes_at_once_then_one_per_emission() {
        let g = gcra(10, 1, 3);
        let now = 1_000_000_000;
        let mut tat = None;
        for expect_remaining in [2, 1, 0] {
            let (t, d) = g.decide(tat, now, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, expect_remaining);
            tat = Some(t);
        }
        let (t, d) = g.decide(tat, now, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(100));
        assert_eq!(t, tat.unwrap_or_default(), "a refusal leaves the state");
        // One emission later exactly one more passes.
        let (t, d) = g.decide(Some(t), now + 100_000_000, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!g.decide(Some(t), now + 100_000_000, 1).1.allowed);
    }

    #[test]
    fn an_idle_key_is_the_same_as_no_state() {
        let g = gcra(100, 60, 100);
        let (tat, _) = g.decide(None, 5, 1);
        let later = tat + 1;
        assert_eq!(g.decide(Some(tat), later, 1), g.decide(None, later, 1));
    }

    #[test]
    fn refund_gives_back_the_cost() {
        let g = gcra(1, 1, 1);
        let (tat, d) = g.decide(None, 0, 1);
        assert!(d.allowed);
        assert!(!g.decide(Some(tat), 0, 1).1.allowed);
        assert!(g.decide(Some(g.refund(tat, 1)), 0, 1).1.allowed);
    }

    #[test]
    fn reset_counts_until_the_key_is_full() {
        let g = gcra(10, 10, 10);
        let (tat, d) = g.decide(None, 0, 1);
        assert_eq!(d.reset, Duration::from_secs(1));
        let (_, d) = g.decide(Some(tat), 0, 1);
        assert_eq!(d.reset, Duration::from_secs(2));
        assert_eq!(d.remaining, 8);
    }
}
