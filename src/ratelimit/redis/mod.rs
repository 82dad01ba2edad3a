//! Shared limits in Redis: the connection to a single node or a Redis
//! Cluster, and the limiter that decides with one atomic script per
//! request (`exact`) or locally with periodic reconciliation (`reconcile`).
//!
//! Connections are made by [`supervise`], on the control runtime, never at
//! startup: a gateway whose Redis is down starts and serves (the limit's
//! `on_store_error` applies) and connects when Redis comes up. Workers use
//! the multiplexed connection through cheap clones of its handle. A call
//! that finds the connection lost marks it broken and wakes `supervise`,
//! which reconnects with a bounded backoff; meanwhile calls fail at once
//! instead of each waiting out `timeout`.

mod reconcile;
mod script;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ErrorKind, FromRedisValue, RedisError,
    ServerErrorKind, TlsCertificates,
};
use tokio::sync::{Notify, watch};

use self::reconcile::Reconciler;
use self::script::Lua;
use super::gcra::{Decision, Gcra};
use crate::config::{LimitMode, RateLimitConfig, RedisConfig};

/// Why a Redis decision could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// First wait before connecting again after a failure; it doubles up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest sleep of [`supervise`] with nothing to do.
const IDLE: Duration = Duration::from_secs(1);

/// Where the store connects.
enum Target {
    Single(Box<redis::Client>),
    Cluster(Box<ClusterClient>),
}

/// A live connection; clones share it.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Self::Single(c) => cmd.query_async(c).await,
            Self::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

/// The connection to the Redis store of one `redis` config.
pub struct RedisStore {
    target: Target,
    timeout: Duration,
    connect_timeout: Duration,
    prefix: Box<str>,
    conn: ArcSwapOption<Conn>,
    /// The connection is gone (or was never made): `supervise` connects.
    broken: AtomicBool,
    /// The last call succeeded; flips are logged, once each way.
    healthy: AtomicBool,
    /// Wakes `supervise` when a call finds the connection lost.
    wake: Notify,
    /// A connection attempt has ended (the first one is waited for).
    attempted: watch::Sender<bool>,
    decide_script: Lua,
    sync_script: Lua,
    /// The `reconcile` limiters using this store, for `supervise` to sync.
    /// Dead entries are dropped whenever one is added, so the list never
    /// holds more than the limits of the live snapshots.
    reconcilers: Mutex<Vec<Weak<Inner>>>,
}

impl RedisStore {
    /// Checks the config and reads its files (`ca`, `client_cert`, relative
    /// to the folder of the config file `file`); connects later (a store
    /// that is down must not stop the gateway).
    pub fn new(cfg: &RedisConfig, file: &str) -> Result<Arc<Self>, String> {
        if cfg.urls.is_empty() {
            return Err("urls: at least one URL is needed".into());
        }
        if !cfg.cluster && cfg.urls.len() > 1 {
            return Err(format!(
                "urls: {} URLs without `cluster: true`; a single node takes one URL",
                cfg.urls.len()
            ));
        }
        let tls = cfg
            .urls
            .iter()
            .filter(|u| u.starts_with("rediss://"))
            .count();
        if tls != 0 && tls != cfg.urls.len() {
            return Err(
                "urls: mixes `redis://` and `rediss://`; the nodes all use TLS or none does".into(),
            );
        }
        if let Some(url) = cfg
            .urls
            .iter()
            .find(|u| u.split_once('#').is_some_and(|(_, f)| f == "insecure"))
        {
            return Err(format!(
                "urls: `{}` asks not to verify the server's certificate, which the gateway \
                 does not allow; give the CA that signed it in `ca`",
                redact(url)
            ));
        }
        if cfg.timeout.0.is_zero() {
            return Err("timeout: must be more than 0".into());
        }
        if cfg.key_prefix.contains(['{', '}']) {
            return Err(format!(
                "key_prefix: `{}` must not contain `{{` or `}}` (they choose the Redis \
                 Cluster slot of a key)",
                cfg.key_prefix
            ));
        }
        let certs = tls_certificates(cfg, file, tls != 0)?;
        let target = if cfg.cluster {
            let mut builder = ClusterClient::builder(cfg.urls.iter().map(String::as_str))
                .connection_timeout(connect_timeout(cfg.timeout.0));
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder.build().map_err(|e| format!("urls: {e}"))?;
            Target::Cluster(Box::new(client))
        } else {
            let url = &cfg.urls[0];
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(url.as_str(), certs),
                None => redis::Client::open(url.as_str()),
            }
            .map_err(|e| format!("urls: `{}` is not a Redis URL: {e}", redact(url)))?;
            Target::Single(Box::new(client))
        };
        Ok(Arc::new(Self {
            target,
            timeout: cfg.timeout.0,
            connect_timeout: connect_timeout(cfg.timeout.0),
            prefix: cfg.key_prefix.as_str().into(),
            conn: ArcSwapOption::empty(),
            broken: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            wake: Notify::new(),
            attempted: watch::Sender::new(false),
            decide_script: Lua::decide(),
            sync_script: Lua::sync(),
            reconcilers: Mutex::new(Vec::new()),
        }))
    }

    /// Whether calls can be made now: connected, and the last call worked.
    fn available(&self) -> bool {
        !self.broken.load(Ordering::Relaxed) && self.healthy.load(Ordering::Relaxed)
    }

    /// Runs `lua` on `key`, bounded by `timeout`; `EVAL` when Redis lost
    /// the script.
    async fn eval(&self, lua: &Lua, key: &[u8], args: &[u64]) -> Result<Vec<i64>, StoreError> {
        if self.conn.load().is_none() {
            self.first_attempt().await;
        }
        if self.broken.load(Ordering::Relaxed) {
            return Err(StoreError("redis: not connected".into()));
        }
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError("redis: not connected".into()));
        };
        let mut conn = (*conn).clone();
        let call = async {
            match conn.query(&lua.evalsha(key, args)).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    conn.query(&lua.eval(key, args)).await
                }
                other => other,
            }
        };
        let result = tokio::time::timeout(self.timeout, call).await;
        self.outcome(result)
    }

    /// Sends PING (bounded); for `supervise` to see a recovery when no
    /// request does.
    async fn ping(&self) -> Result<(), StoreError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError("redis: not connected".into()));
        };
        let mut conn = (*conn).clone();
        let result = tokio::time::timeout(self.timeout, async move {
            conn.query::<String>(&redis::cmd("PING")).await
        })
        .await;
        self.outcome(result).map(drop)
    }

    /// Records how a call went, logging a change of health once, and turns
    /// its error into a [`StoreError`].
    fn outcome<T>(
        &self,
        result: Result<Result<T, RedisError>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let error = match result {
            Ok(Ok(v)) => {
                if !self.healthy.load(Ordering::Relaxed)
                    && !self.healthy.swap(true, Ordering::Relaxed)
                {
                    tracing::info!("redis reachable again; shared limits apply");
                }
                return Ok(v);
            }
            Ok(Err(e)) => {
                if e.is_unrecoverable_error() && !self.broken.swap(true, Ordering::Relaxed) {
                    self.wake.notify_one();
                }
                StoreError(format!("redis: {e}"))
            }
            Err(_) => StoreError("redis: timed out".into()),
        };
        self.unhealthy(&error);
        Err(error)
    }

    fn unhealthy(&self, error: &StoreError) {
        if self.healthy.load(Ordering::Relaxed) && self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, "redis unreachable; limits apply their on_store_error");
        }
    }

    /// Makes a new connection (bounded by the connect timeout).
    async fn connect(&self) -> Result<(), StoreError> {
        let result = self.try_connect().await;
        self.attempted.send_replace(true);
        result
    }

    /// Waits (at most `timeout`) for the first connection attempt to end,
    /// so that a gateway just started does not apply `on_store_error` to
    /// its first requests only because the connection is being made.
    async fn first_attempt(&self) {
        if *self.attempted.borrow() {
            return;
        }
        let mut done = self.attempted.subscribe();
        let _ = tokio::time::timeout(self.timeout, done.wait_for(|d| *d)).await;
    }

    async fn try_connect(&self) -> Result<(), StoreError> {
        let connect = async {
            match &self.target {
                Target::Single(client) => {
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await
                        .map(Conn::Single)
                }
                Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            }
        };
        let conn = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let error = StoreError(format!("redis: cannot connect: {e}"));
                self.unhealthy(&error);
                return Err(error);
            }
            Err(_) => {
                let error = StoreError("redis: cannot connect: timed out".into());
                self.unhealthy(&error);
                return Err(error);
            }
        };
        self.conn.store(Some(Arc::new(conn)));
        self.broken.store(false, Ordering::Relaxed);
        // The first PING both checks the new connection and logs recovery.
        self.ping().await?;
        tracing::info!("redis connected");
        Ok(())
    }

    /// The live `reconcile` limiters.
    fn reconcilers(&self) -> Vec<Arc<Inner>> {
        let mut list = self
            .reconcilers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    fn register(&self, inner: &Arc<Inner>) {
        let mut list = self
            .reconcilers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(inner));
    }
}

/// The CA and client certificate of a TLS connection, read and checked
/// now so that a bad file is a config error rather than a connection that
/// never succeeds; `None` when neither is set (`rediss://` then verifies
/// with the system roots).
fn tls_certificates(
    cfg: &RedisConfig,
    file: &str,
    tls: bool,
) -> Result<Option<TlsCertificates>, String> {
    let (key, value) = match (&cfg.ca, &cfg.client_cert) {
        (None, None) => return Ok(None),
        (Some(ca), _) => ("ca", ca),
        (None, Some(c)) => ("client_cert", &c.cert),
    };
    if !tls {
        return Err(format!(
            "{key}: `{value}` is for TLS, but `{}` is not a `rediss://` URL",
            redact(&cfg.urls[0])
        ));
    }
    let dir = crate::tls::config_dir(file);
    // The redis crate takes the PEM bytes and parses them again, but its
    // errors name neither the key nor the file: they are checked here first.
    let root_cert = match &cfg.ca {
        None => None,
        Some(ca) => {
            let path = crate::tls::resolve_path(&dir, ca);
            let certs = crate::tls::load_certs(&path).map_err(|e| format!("ca: {e}"))?;
            let total = certs.len();
            let (_, invalid) = rustls::RootCertStore::empty().add_parsable_certificates(certs);
            if invalid != 0 {
                return Err(format!(
                    "ca: `{}`: {invalid} of its {total} certificates cannot be trust anchors",
                    path.display()
                ));
            }
            Some(read(&path, "ca")?)
        }
    };
    let client_tls = match &cfg.client_cert {
        None => None,
        Some(c) => {
            let (cert, key) = (
                crate::tls::resolve_path(&dir, &c.cert),
                crate::tls::resolve_path(&dir, &c.key),
            );
            crate::tls::load_pair(&cert, &key, &crate::tls::provider())
                .map_err(|e| format!("client_cert: {e}"))?;
            Some(ClientTlsConfig {
                client_cert: read(&cert, "client_cert")?,
                client_key: read(&key, "client_cert")?,
            })
        }
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The bytes of `path`, the file of config key `key`.
fn read(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read `{}`: {e}", path.display()))
}

/// Connecting takes a TCP (and, for a cluster, a topology) round trip or
/// more, off the request path: allow it more than one answer's `timeout`.
fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1))
}

/// `url` without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// One `store: redis` limit.
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

/// What a limiter's decisions and `supervise` share.
struct Inner {
    gcra: Gcra,
    store: Arc<RedisStore>,
    /// `{key_prefix}:{id}:{`: a request's key follows, then `}`, so the
    /// Redis Cluster hash tag is the key digest and each key lives in one
    /// slot while a limit's keys spread over the cluster.
    head: Box<str>,
    /// Failed calls to Redis, decisions and syncs.
    errors: AtomicU64,
    /// With `mode: reconcile`, the local state.
    reconcile: Option<Reconciler>,
}

impl Inner {
    /// The Redis key of `key`.
    fn redis_key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.head.len() + key.len() + 1);
        k.extend_from_slice(self.head.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k.push(b'}');
        k
    }

    /// The exact decision (one script call) and the key's TAT after it,
    /// relative to now, in nanoseconds.
    async fn exact(&self, key: &str, cost: u64) -> Result<(Decision, u64), StoreError> {
        let args = [self.gcra.emission, self.gcra.burst, cost];
        let reply = self
            .store
            .eval(&self.store.decide_script, &self.redis_key(key), &args)
            .await?;
        let &[allowed, remaining, reset, retry_after] = reply.as_slice() else {
            return Err(StoreError("redis: unexpected script reply".into()));
        };
        let nanos = |v: i64| u64::try_from(v).unwrap_or(0);
        let decision = Decision {
            allowed: allowed == 1,
            remaining: nanos(remaining),
            reset: Duration::from_nanos(nanos(reset)),
            retry_after: Duration::from_nanos(nanos(retry_after)),
        };
        Ok((decision, nanos(reset)))
    }

    /// Adds `cost` admitted locally to `key` in Redis; returns the key's
    /// TAT relative to now, in nanoseconds.
    async fn push(&self, key: &str, cost: u64) -> Result<u64, StoreError> {
        let args = [self.gcra.emission, cost];
        let reply = self
            .store
            .eval(&self.store.sync_script, &self.redis_key(key), &args)
            .await;
        match reply.as_deref() {
            Ok(&[tat]) => Ok(u64::try_from(tat).unwrap_or(0)),
            Ok(_) => Err(StoreError("redis: unexpected script reply".into())),
            Err(e) => Err(StoreError(e.0.clone())),
        }
    }
}

impl RedisLimiter {
    /// A limiter whose keys are named after `id` (stable across reloads).
    pub fn new(id: &str, cfg: &RateLimitConfig, gcra: Gcra, store: Arc<RedisStore>) -> Self {
        let reconcile = (cfg.mode == LimitMode::Reconcile).then(|| Reconciler::new(cfg));
        let inner = Arc::new(Inner {
            gcra,
            head: format!("{}:{id}:{{", store.prefix).into(),
            store,
            errors: AtomicU64::new(0),
            reconcile,
        });
        if inner.reconcile.is_some() {
            inner.store.register(&inner);
        }
        Self { inner }
    }

    /// Decides a request of `cost` for `key`.
    pub async fn decide(&self, key: &str, cost: u64) -> Result<Decision, StoreError> {
        let inner = &self.inner;
        let result = match &inner.reconcile {
            None => inner.exact(key, cost).await.map(|(d, _)| d),
            Some(r) => r.decide(inner, key, cost).await,
        };
        if result.is_err() {
            inner.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Calls to Redis that failed so far (decisions and reconcile syncs).
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }
}

/// Background work of the Redis limits: connecting, reconnecting, reconcile syncs.
pub async fn supervise(snapshot: impl Fn() -> Arc<crate::gateway::Gateway> + Send + 'static) {
    let mut upkeep: Option<Upkeep> = None;
    loop {
        let store = snapshot().limits.redis_store().cloned();
        let same = match (&store, &upkeep) {
            (Some(s), Some(u)) => Arc::ptr_eq(s, &u.store),
            (None, None) => true,
            _ => false,
        };
        if !same {
            upkeep = store.map(Upkeep::new);
        }
        match &mut upkeep {
            Some(u) => {
                let wait = u.run().await;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = u.store.wake.notified() => {}
                }
            }
            None => tokio::time::sleep(IDLE).await,
        }
    }
}

/// What `supervise` keeps for the current store.
struct Upkeep {
    store: Arc<RedisStore>,
    /// No connection attempt (or health probe) before this.
    next_try: Instant,
    backoff: Duration,
}

impl Upkeep {
    fn new(store: Arc<RedisStore>) -> Self {
        Self {
            store,
            next_try: Instant::now(),
            backoff: MIN_BACKOFF,
        }
    }

    /// Connects or probes when due, starts due syncs; returns how long
    /// until there is something to do again.
    async fn run(&mut self) -> Duration {
        let store = &self.store;
        let needs_work =
            store.broken.load(Ordering::Relaxed) || !store.healthy.load(Ordering::Relaxed);
        if needs_work && Instant::now() >= self.next_try {
            let result = if store.broken.load(Ordering::Relaxed) {
                store.connect().await
            } else {
                store.ping().await
            };
            if result.is_ok() {
                self.backoff = MIN_BACKOFF;
            } else {
                // A connection that does not answer a probe is replaced: a
                // silent network path would otherwise time out every call
                // for good.
                store.broken.store(true, Ordering::Relaxed);
                self.next_try = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
        let mut wait = if store.available() {
            IDLE
        } else {
            self.next_try.saturating_duration_since(Instant::now())
        };
        for inner in store.reconcilers() {
            if let Some(r) = &inner.reconcile {
                wait = wait.min(r.start_sync_if_due(&inner));
            }
        }
        wait.max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests;
