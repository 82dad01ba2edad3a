//! Upstreams: endpoints, their resolved addresses, the balancer, and one
//! connection pool per worker and endpoint.

pub mod balance;
pub mod h1;
pub mod health;
pub mod outlier;
pub mod pool;
pub mod state;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;

use crate::config::{HashKey, UpstreamConfig};
use balance::Balancer;
use pool::EndpointPool;
use state::{EndpointState, UpstreamStats};
use tls::TlsClient;

/// Slow start: an endpoint that became available `warmth` of the way through
/// its ramp takes that share of the picks that land on it.
fn admits_while_warming(state: &EndpointState, slow_start: std::time::Duration) -> bool {
    let warmth = state.warmth(slow_start, state::now_ms());
    warmth >= 1.0 || fastrand::f64() < warmth
}

/// One configured endpoint.
pub struct Endpoint {
    /// The configured `host:port`.
    pub address: Box<str>,
    /// The configured address as a Host header value.
    pub host_header: HeaderValue,
    /// Whether `address` names a host to resolve (rather than an IP).
    pub is_dns: bool,
    /// Current addresses; re-resolved periodically for DNS names.
    pub addrs: ArcSwap<Vec<SocketAddr>>,
}

impl Endpoint {
    fn new(address: &str) -> Self {
        let is_dns = address.parse::<SocketAddr>().is_err();
        let addrs = address
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
            .unwrap_or_else(|e| {
                tracing::warn!(endpoint = address, error = %e, "cannot resolve endpoint; it stays unavailable until it resolves");
                Vec::new()
            });
        Self {
            address: address.into(),
            host_header: HeaderValue::from_str(address)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            is_dns,
            addrs: ArcSwap::from_pointee(addrs),
        }
    }

    /// Resolves a DNS name again; keeps the old addresses when resolution fails.
    pub async fn refresh(&self) {
        if !self.is_dns {
            return;
        }
        match tokio::net::lookup_host(&*self.address).await {
            Ok(addrs) => {
                let mut new: Vec<SocketAddr> = addrs.collect();
                new.sort();
                if !new.is_empty() && **self.addrs.load() != new {
                    tracing::info!(endpoint = %self.address, addrs = ?new, "endpoint addresses changed");
                    self.addrs.store(Arc::new(new));
                }
            }
            Err(e) => {
                tracing::warn!(endpoint = %self.address, error = %e, "re-resolving endpoint failed; keeping its addresses")
            }
        }
    }
}

/// A compiled upstream. Kept across reloads while its definition is unchanged,
/// so pools and balancer state survive.
pub struct Upstream {
    /// Its name.
    pub name: Arc<str>,
    /// The definition it was built from.
    pub config: UpstreamConfig,
    /// Its endpoints.
    pub endpoints: Box<[Endpoint]>,
    /// Health, ejection, load and latency per endpoint (index as `endpoints`).
    pub states: Box<[EndpointState]>,
    /// Counters and gauges for metrics and circuit breaking.
    pub stats: UpstreamStats,
    /// The `host: { fixed }` value, as a header value.
    pub fixed_host: Option<HeaderValue>,
    balancer: Balancer,
    /// TLS to the endpoints (`tls`). Swappable so that a reload that keeps the
    /// upstream still picks up renewed certificate files for new connections.
    tls: ArcSwapOption<TlsClient>,
    /// `pools[worker][endpoint]`.
    pools: Box<[Box<[EndpointPool]>]>,
}

impl Upstream {
    /// Builds an upstream for `workers` workers. Resolves DNS names (blocking:
    /// call off the request path).
    pub fn new(name: &str, config: &UpstreamConfig, workers: usize) -> Self {
        let endpoints: Box<[Endpoint]> = config
            .endpoints
            .iter()
            .map(|e| Endpoint::new(e.value.address()))
            .collect();
        let ids: Vec<&str> = endpoints.iter().map(|e| &*e.address).collect();
        let weights: Vec<u32> = config.endpoints.iter().map(|e| e.value.weight()).collect();
        let workers = workers.max(1);
        Self {
            name: name.into(),
            config: config.clone(),
            states: endpoints.iter().map(|_| EndpointState::default()).collect(),
            stats: UpstreamStats::default(),
            fixed_host: match &config.host {
                crate::config::HostHeader::Fixed(v) => HeaderValue::from_str(v).ok(),
                _ => None,
            },
            balancer: Balancer::new(&config.balance, &ids, &weights, workers),
            tls: ArcSwapOption::empty(),
            pools: (0..workers)
                .map(|_| {
                    endpoints
                        .iter()
                        .map(|_| EndpointPool::new(&config.pool))
                        .collect()
                })
                .collect(),
            endpoints,
        }
    }

    /// The compiled TLS client side, when the upstream has `tls`.
    pub fn tls(&self) -> Option<Arc<TlsClient>> {
        self.tls.load_full()
    }

    /// Sets the compiled TLS client side (at compile time, and again at each
    /// reload that keeps the upstream); open connections keep theirs.
    pub fn set_tls(&self, tls: Option<TlsClient>) {
        self.tls.store(tls.map(Arc::new));
    }

    /// The hash key source, for consistent hashing.
    pub fn hash_key(&self) -> Option<&HashKey> {
        match &self.config.balance {
            crate::config::BalanceConfig::ConsistentHash(k) => Some(k),
            _ => None,
        }
    }

    /// Picks an endpoint for a request on `worker`: one that is healthy, not
    /// ejected and not among `tried` (the endpoints earlier attempts of this
    /// request went to).
    ///
    /// Falls back, in order, to any available endpoint not tried, to an
    /// available one already tried, and in panic mode to any endpoint at all;
    /// `None` means 503.
    pub fn pick(&self, worker: usize, key: Option<&[u8]>, tried: &[usize]) -> Option<usize> {
        let worker = worker % self.pools.len();
        let states = &self.states;
        let slow_start = self.config.slow_start.0;
        let usable = |i: usize| {
            !tried.contains(&i)
                && states[i].is_available()
                && (slow_start.is_zero() || admits_while_warming(&states[i], slow_start))
        };
        if let Some(i) = self.balancer.pick(worker, key, states, usable) {
            return Some(i);
        }
        let n = states.len();
        let start = fastrand::usize(..n.max(1));
        let available = |fresh: bool| {
            (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| states[i].is_available() && (!fresh || !tried.contains(&i)))
        };
        available(true).or_else(|| available(false)).or_else(|| {
            self.config
                .panic_mode
                .then(|| self.balancer.pick(worker, key, states, |_| true))
                .flatten()
        })
    }

    /// The pool of one endpoint on one worker.
    pub fn pool(&self, worker: usize, endpoint: usize) -> &EndpointPool {
        &self.pools[worker % self.pools.len()][endpoint]
    }

    /// Closes idle connections past their idle timeout on `worker`.
    pub fn sweep(&self, worker: usize) {
        if let Some(pools) = self.pools.get(worker) {
            for p in pools.iter() {
                p.sweep(self.config.pool.idle_timeout.0);
            }
        }
    }

    /// Idle pooled connections, all workers and endpoints together. Takes each
    /// pool's lock in turn, like the idle sweep: for metrics scrapes only.
    pub fn idle_connections(&self) -> usize {
        self.pools
            .iter()
            .flatten()
            .map(EndpointPool::idle_len)
            .sum()
    }

    /// Re-resolves DNS endpoints.
    pub async fn refresh_dns(&self) {
        for e in self.endpoints.iter() {
            e.refresh().await;
        }
    }

    /// Requests in flight to the upstream now, retries included.
    pub fn requests_in_flight(&self) -> u32 {
        self.states.iter().map(EndpointState::inflight).sum()
    }

    pub(crate) fn begin(&self, endpoint: usize) {
        self.states[endpoint].begin();
    }

    pub(crate) fn end(&self, endpoint: usize) {
        self.states[endpoint].end();
    }
}
