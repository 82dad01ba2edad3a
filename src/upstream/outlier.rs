//! Passive health checks: endpoints whose real traffic fails are ejected from
//! the balancer for a while (Envoy's outlier detection, simplified).
//!
//! Every outcome is a handful of relaxed atomic operations on the endpoint's
//! [`EndpointState`]; only an ejection, which is rare, scans the upstream.

use std::sync::atomic::Ordering;

use super::Upstream;
use super::state::{EndpointState, now_ms};
use crate::config::OutlierConfig;

/// What one attempt at an endpoint came to, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response, or the exchange failed after connecting (reset, timeout).
    Failure,
    /// The connection could not be made (refused, unreachable, timed out).
    ConnectFailure,
}

impl Upstream {
    /// Records an attempt's outcome at `endpoint`, ejecting it when its
    /// failures cross a threshold.
    pub fn record_outcome(&self, endpoint: usize, outcome: Outcome) {
        let Some(cfg) = &self.config.outlier_detection else {
            return;
        };
        let Some(state) = self.states.get(endpoint) else {
            return;
        };
        if let Some(reason) = judge(cfg, state, outcome, now_ms()) {
            self.eject(cfg, endpoint, reason);
        }
    }

    fn eject(&self, cfg: &OutlierConfig, endpoint: usize, reason: &'static str) {
        let now = now_ms();
        let ejected = self.states.iter().filter(|s| s.is_ejected(now)).count();
        let n = self.states.len();
        // At least one endpoint may always be ejected, whatever the percentage.
        let cap = (n * cfg.max_ejection_percent as usize / 100).max(1);
        if ejected >= cap {
            tracing::debug!(upstream = %self.name, endpoint = %self.endpoints[endpoint].address, reason, "not ejected: max_ejection_percent reached");
            return;
        }
        let state = &self.states[endpoint];
        if state.eject(cfg.base_ejection_time.0, cfg.max_ejection_time.0) {
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            let until = state.ejected_until().unwrap_or(now);
            tracing::warn!(
                upstream = %self.name,
                endpoint = %self.endpoints[endpoint].address,
                reason,
                ejections = state.ejection_count(),
                for_ms = until.saturating_sub(now),
                "endpoint ejected"
            );
        }
    }
}

/// Counts `outcome` into `state`; returns why the endpoint should be ejected,
/// if it should.
fn judge(
    cfg: &OutlierConfig,
    state: &EndpointState,
    outcome: Outcome,
    now: u64,
) -> Option<&'static str> {
    let failed = outcome != Outcome::Success;
    let mut reason = None;
    match outcome {
        Outcome::Success => {
            if state.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                state.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            if state.consecutive_connect.load(Ordering::Relaxed) != 0 {
                state.consecutive_connect.store(0, Ordering::Relaxed);
            }
        }
        Outcome::Failure => {
            let n = state.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
            if cfg.consecutive_5xx > 0 && n >= cfg.consecutive_5xx {
                reason = Some("consecutive 5xx");
            }
        }
        Outcome::ConnectFailure => {
            let n = state.consecutive_connect.fetch_add(1, Ordering::Relaxed) + 1;
            if cfg.consecutive_connect_failures > 0 && n >= cfg.consecutive_connect_failures {
                reason = Some("consecutive connect failures");
            }
        }
    }
    if cfg.failure_ratio > 0.0 {
        let (requests, failures) =
            count_in_window(state, failed, cfg.window.0.as_millis() as u64, now);
        if requests >= cfg.min_requests.max(1)
            && f64::from(failures) >= cfg.failure_ratio * f64::from(requests)
        {
            reason = reason.or(Some("failure ratio"));
        }
    }
    reason
}

/// Adds one request (failed or not) to the endpoint's current window, starting
/// a new window when the current one is over; returns the window's counts.
fn count_in_window(state: &EndpointState, failed: bool, window: u64, now: u64) -> (u32, u32) {
    let start = state.window_start.load(Ordering::Relaxed);
    // The first window starts with the endpoint's first counted request.
    if (start == 0 || now.saturating_sub(start) >= window)
        && state
            .window_start
            .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        state.window_counts.store(0, Ordering::Relaxed);
    }
    let add = (1u64 << 32) | u64::from(failed);
    let counts = state.window_counts.fetch_add(add, Ordering::Relaxed) + add;
    ((counts >> 32) as u32, counts as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Dur;
    use std::time::Duration;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: 3,
            consecutive_connect_failures: 2,
            failure_ratio: 0.0,
            window: Dur(Duration::from_secs(10)),
            min_requests: 4,
            base_ejection_time: Dur(Duration::from_secs(1)),
            max_ejection_time: Dur(Duration::from_secs(5)),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_reset_by_success() {
        let (c, s) = (cfg(), EndpointState::default());
        assert_eq!(judge(&c, &s, Outcome::Failure, 1), None);
        assert_eq!(judge(&c, &s, Outcome::Failure, 1), None);
        assert_eq!(judge(&c, &s, Outcome::Success, 1), None);
        assert_eq!(judge(&c, &s, Outcome::Failure, 1), None);
        assert_eq!(judge(&c, &s, Outcome::Failure, 1), None);
        assert_eq!(judge(&c, &s, Outcome::Failure, 1), Some("consecutive 5xx"));
        assert_eq!(judge(&c, &s, Outcome::ConnectFailure, 1), None);
        assert_eq!(
            judge(&c, &s, Outcome::ConnectFailure, 1),
            Some("consecutive connect failures")
        );
    }

    #[test]
    fn zero_thresholds_are_off() {
        let c = OutlierConfig {
            consecutive_5xx: 0,
            consecutive_connect_failures: 0,
            ..cfg()
        };
        let s = EndpointState::default();
        for _ in 0..100 {
            assert_eq!(judge(&c, &s, Outcome::Failure, 1), None);
            assert_eq!(judge(&c, &s, Outcome::ConnectFailure, 1), None);
        }
    }

    #[test]
    fn failure_ratio_needs_min_requests_and_resets_with_the_window() {
        let c = OutlierConfig {
            consecutive_5xx: 0,
            failure_ratio: 0.5,
            ..cfg()
        };
        let s = EndpointState::default();
        assert_eq!(judge(&c, &s, Outcome::Failure, 100), None);
        assert_eq!(judge(&c, &s, Outcome::Success, 100), None);
        assert_eq!(judge(&c, &s, Outcome::Failure, 100), None);
        // Fourth request: 2 of 4 failed.
        assert_eq!(judge(&c, &s, Outcome::Success, 100), Some("failure ratio"));
        // A new window starts from nothing.
        assert_eq!(judge(&c, &s, Outcome::Failure, 20_000), None);
        assert_eq!(count_in_window(&s, false, 10_000, 20_001), (2, 1));
    }
}
