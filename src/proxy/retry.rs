//! Retry policy: which failed attempts are tried again, when, and within what
//! budget. The attempt loop itself is in [`super::forward`].

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::config::{RetryConfig, RetryOn};
use crate::error::{ErrorKind, ProxyError, Retry};
use crate::upstream::Upstream;
use crate::upstream::state::{Cap, Held};

/// A route's compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    on: u8,
    statuses: Box<[u16]>,
    /// Limit on one attempt, until the response head (zero: none of its own).
    pub per_try_timeout: Duration,
    backoff: Duration,
    max_backoff: Duration,
    non_idempotent: bool,
    /// Request body bytes kept for replay.
    pub replay_buffer: usize,
}

/// The bit of `on` in a policy's set of failures.
fn bit(on: RetryOn) -> u8 {
    1 << on as u8
}

impl RetryPolicy {
    /// Compiles a route's `retry` block.
    pub fn new(cfg: &RetryConfig) -> Self {
        Self {
            attempts: cfg.attempts.max(1),
            on: cfg.on.iter().fold(0, |acc, &o| acc | bit(o)),
            statuses: cfg.statuses.clone().into(),
            per_try_timeout: cfg.per_try_timeout.0,
            backoff: cfg.backoff.0,
            max_backoff: cfg.max_backoff.0,
            non_idempotent: cfg.non_idempotent,
            replay_buffer: usize::try_from(cfg.replay_buffer.0).unwrap_or(usize::MAX),
        }
    }

    /// Whether a request with this method may be retried after it may have
    /// been processed (RFC 9110 §9.2.2), not only when nothing was sent.
    pub fn may_repeat(&self, method: &Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// Whether an attempt that got an upstream response with `status` is
    /// retried (the request reached the upstream, so only for repeatable ones).
    pub fn retries_status(&self, status: StatusCode, method: &Method) -> bool {
        let named = match status.as_u16() {
            502 => self.on & bit(RetryOn::Status502) != 0,
            503 => self.on & bit(RetryOn::Status503) != 0,
            504 => self.on & bit(RetryOn::Status504) != 0,
            _ => false,
        };
        (named || self.statuses.contains(&status.as_u16())) && self.may_repeat(method)
    }

    /// Whether an attempt that failed with `e` is retried.
    pub fn retries_error(&self, e: &ProxyError, method: &Method) -> bool {
        let class = match e.kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => RetryOn::ConnectFailure,
            ErrorKind::UpstreamTimeout => RetryOn::Timeout,
            // Safe: the upstream provably did not process it (REFUSED_STREAM,
            // or a pooled connection that closed before the request went out).
            ErrorKind::UpstreamFailed if e.retry == Retry::Safe => RetryOn::RefusedStream,
            ErrorKind::UpstreamFailed => RetryOn::Reset,
            _ => return false,
        };
        self.on & bit(class) != 0
            && match e.retry {
                Retry::Safe => true,
                Retry::IfIdempotent => self.may_repeat(method),
                Retry::Never => false,
            }
    }

    /// The pause before retry number `n` (1 for the first retry): exponential,
    /// capped, with "equal jitter" (half fixed, half random) so that retries of
    /// many clients spread out without collapsing to zero.
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// RFC 9110 §9.2.2 idempotent methods.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Takes a slot for one more retry, unless the retry budget (Envoy's: retries
/// in flight at most `percent` of requests in flight, or `min_concurrency`)
/// or `circuit_breaker.max_retries` is spent. Refusals are counted.
/// The slot is held until the retry's response head (or failure).
pub fn take_slot(upstream: &Upstream) -> Option<Held<&AtomicU32>> {
    let stats = &upstream.stats;
    let budget = &upstream.config.retry_budget;
    let active = f64::from(upstream.requests_in_flight());
    let allowed = ((budget.percent / 100.0 * active) as u32).max(budget.min_concurrency);
    let cap = upstream.config.circuit_breaker.max_retries;
    let limit = if cap > 0 { allowed.min(cap) } else { allowed };
    let slot = Held::take(&stats.retries_active, limit);
    if slot.is_none() {
        // Which limit refused it: the cap when it is the lower one.
        if cap > 0 && cap <= allowed {
            stats.rejected[Cap::Retries as usize].fetch_add(1, Ordering::Relaxed);
        } else {
            stats.retries_over_budget.fetch_add(1, Ordering::Relaxed);
        }
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::{Dur, Size};

    fn policy(on: Vec<RetryOn>, statuses: Vec<u16>, non_idempotent: bool) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            attempts: 3,
            on,
            statuses,
            per_try_timeout: Dur(Duration::ZERO),
            backoff: Dur(Duration::from_millis(100)),
            max_backoff: Dur(Duration::from_millis(300)),
            non_idempotent,
            replay_buffer: Size(1024),
        })
    }

    #[test]
    fn statuses_are_retried_only_for_repeatable_methods() {
        let p = policy(vec![RetryOn::Status503], vec![429], false);
        assert!(p.retries_status(StatusCode::SERVICE_UNAVAILABLE, &Method::GET));
        assert!(p.retries_status(StatusCode::TOO_MANY_REQUESTS, &Method::PUT));
        assert!(!p.retries_status(StatusCode::BAD_GATEWAY, &Method::GET));
        assert!(!p.retries_status(StatusCode::SERVICE_UNAVAILABLE, &Method::POST));
        let p = policy(vec![RetryOn::Status503], vec![], true);
        assert!(p.retries_status(StatusCode::SERVICE_UNAVAILABLE, &Method::POST));
    }

    #[test]
    fn errors_that_sent_nothing_are_retried_for_any_method() {
        let p = policy(vec![RetryOn::ConnectFailure, RetryOn::Reset], vec![], false);
        let connect = ProxyError::new(ErrorKind::ConnectFailed);
        assert!(p.retries_error(&connect, &Method::POST));
        let reset = ProxyError::new(ErrorKind::UpstreamFailed);
        assert!(p.retries_error(&reset, &Method::GET));
        assert!(!p.retries_error(&reset, &Method::POST));
        assert!(!p.retries_error(&ProxyError::new(ErrorKind::UpstreamTimeout), &Method::GET));
        assert!(!p.retries_error(&ProxyError::new(ErrorKind::ClientFailed), &Method::GET));
        let mut refused = ProxyError::new(ErrorKind::UpstreamFailed);
        refused.retry = Retry::Safe;
        assert!(
            !p.retries_error(&refused, &Method::GET),
            "refused_stream not listed"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = policy(vec![], vec![], false);
        for _ in 0..100 {
            let first = p.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let second = p.backoff(2);
            assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
            let capped = p.backoff(40);
            assert!(capped >= Duration::from_millis(150) && capped <= Duration::from_millis(300));
        }
    }
}
