//! Shared limits in Redis (stub being built): the connection to a single
//! node or a Redis Cluster, and the limiter that decides with one atomic
//! script per request (`exact`) or locally with asynchronous reconciliation
//! (`reconcile`).

use std::sync::Arc;

use super::gcra::{Decision, Gcra};
use crate::config::{RateLimitConfig, RedisConfig};

/// Why a Redis decision could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// The connection to the Redis store of one `redis` config.
pub struct RedisStore {}

impl RedisStore {
    /// Checks the config; connects later (a store that is down must not stop the gateway).
    pub fn new(_cfg: &RedisConfig) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self {}))
    }
}

/// One `store: redis` limit.
pub struct RedisLimiter {}

impl RedisLimiter {
    /// A limiter whose keys are named after `id` (stable across reloads).
    pub fn new(_id: &str, _cfg: &RateLimitConfig, _gcra: Gcra, _store: Arc<RedisStore>) -> Self {
        Self {}
    }

    /// Decides a request of `cost` for `key`.
    pub async fn decide(&self, _key: &str, _cost: u64) -> Result<Decision, StoreError> {
        Err(StoreError("not built yet".into()))
    }
}

/// Background work of the Redis limits: connecting, reconnecting, reconcile syncs.
pub async fn supervise(_snapshot: impl Fn() -> Arc<crate::gateway::Gateway> + Send + 'static) {}
