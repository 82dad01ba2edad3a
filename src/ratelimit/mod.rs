//! Rate and concurrency limits: GCRA arithmetic ([`gcra`], pure), the local
//! store shared by the workers ([`local`]), concurrency slots
//! ([`concurrency`]), the Redis store ([`redis`]) and the route filter.
//!
//! Limits are compiled once per snapshot into a [`LimitState`]; a limit whose
//! definition is unchanged keeps its counts across a reload.

pub mod concurrency;
pub mod gcra;
pub mod headers;
pub mod key;
pub mod local;
pub mod redis;

pub use concurrency::Held;

use serde_saphyr::Spanned;

use crate::config::{Config, ConfigError, RateLimitRef};
use crate::error::ProxyError;
use crate::observe::metrics::Metrics;
use crate::pipeline::RequestCtx;

/// The limits of one snapshot, and the Redis store.
#[derive(Default)]
pub struct LimitState {}

impl LimitState {
    /// Compiles `rate_limits` and `redis`; limits (and the Redis connection)
    /// whose definition is unchanged since `previous` keep their state.
    pub fn compile(
        _cfg: &Config,
        _file: &str,
        _previous: Option<&LimitState>,
        _metrics: &Metrics,
    ) -> Result<Self, Vec<ConfigError>> {
        Ok(Self::default())
    }
}

/// A route's limits.
pub struct RateLimitFilter {}

impl RateLimitFilter {
    /// Compiles a route's `rate_limit` list.
    pub fn compile(
        _route: &str,
        _refs: &[Spanned<RateLimitRef>],
        _state: &LimitState,
    ) -> Result<Self, String> {
        Err("rate_limit: not built yet".into())
    }

    /// Counts the request against every limit: 429 (or 503 when a store
    /// fails closed) when one refuses; adds the rate-limit headers to the answer.
    pub async fn apply<B>(
        &self,
        _req: &http::Request<B>,
        _ctx: &mut RequestCtx,
    ) -> Result<(), ProxyError> {
        Ok(())
    }
}

/// Background work of the limits (Redis connection, reconcile syncs, idle
/// key eviction), on the control runtime, for the life of the process.
pub async fn supervise(_snapshot: impl Fn() -> std::sync::Arc<crate::gateway::Gateway> + Send + 'static) {}
