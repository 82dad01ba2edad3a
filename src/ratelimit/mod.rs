//! Rate and concurrency limits: GCRA arithmetic ([`gcra`], pure), the local
//! store shared by the workers ([`local`]), concurrency slots
//! ([`concurrency`]), the Redis store ([`redis`]), request keys ([`key`]),
//! response headers ([`headers`]) and the route filter.
//!
//! Limits are compiled once per snapshot into a [`LimitState`]: the named
//! ones (`rate_limits`, one set of counts for every route naming them) and
//! the inline ones of each route (their own counts, scoped to the route and
//! position). A limit whose scope and definition are unchanged keeps its
//! counts across a reload; a changed one starts fresh.

pub mod concurrency;
pub mod gcra;
pub mod headers;
pub mod key;
pub mod local;
pub mod redis;

pub use concurrency::Held;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use serde_saphyr::Spanned;

use self::concurrency::{ConcurrencyLimiter, Refused};
use self::gcra::{Decision, Gcra};
use self::headers::{LimitHeaderSpec, Status};
use self::key::{KeySpec, Subject};
use self::local::LocalLimiter;
use self::redis::{RedisLimiter, RedisStore};
use crate::config::{
    Config, ConfigError, FailMode, LimitMode, LimitStore, RateLimitConfig, RateLimitRef,
    RedisConfig,
};
use crate::error::{ErrorKind, ProxyError};
use crate::observe::metrics::Metrics;
use crate::pipeline::RequestCtx;

/// How often idle keys of local limits are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most limits on one route (a request's undecided limits are a bit set).
const MAX_LIMITS_PER_ROUTE: usize = 64;
/// Least time between two logs of one limit's store errors.
const STORE_ERROR_LOG_EVERY: u64 = 5_000_000_000;

/// The limits of one snapshot, and the Redis store.
#[derive(Default)]
pub struct LimitState {
    named: BTreeMap<String, Arc<Limit>>,
    /// Inline limits by route name and position in its `rate_limit`; an
    /// error is reported by the route's filter.
    inline: HashMap<(String, usize), Result<Arc<Limit>, String>>,
    redis: Option<(RedisConfig, Arc<RedisStore>)>,
}

/// One compiled limit, shared by the routes using it and kept by reloads
/// while its definition stays.
struct Limit {
    /// Policy name and metric label: the `rate_limits` key, or
    /// `<route>-<position>` (from 1) for an inline limit.
    name: Arc<str>,
    /// The definition it was compiled from.
    config: RateLimitConfig,
    key: KeySpec,
    kind: Kind,
    headers: LimitHeaderSpec,
    allowed: Counter,
    limited: Counter,
    store_error: Counter,
    /// When a store error was last logged ([`local::now_ns`]).
    last_error_log: AtomicU64,
}

enum Kind {
    Local(LocalLimiter),
    Concurrency(Arc<ConcurrencyLimiter>),
    Redis(RedisLimiter),
}

impl LimitState {
    /// Compiles `rate_limits` and `redis`; limits (and the Redis connection)
    /// whose definition is unchanged since `previous` keep their state.
    pub fn compile(
        cfg: &Config,
        file: &str,
        previous: Option<&LimitState>,
        metrics: &Metrics,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut redis_changed = true;
        let redis = match &cfg.redis {
            None => None,
            Some(r) => match previous.and_then(|p| p.redis.as_ref()) {
                Some((old, store)) if *old == r.value => {
                    redis_changed = false;
                    Some((old.clone(), store.clone()))
                }
                _ => match RedisStore::new(&r.value, file) {
                    Ok(store) => Some((r.value.clone(), store)),
                    Err(msg) => {
                        errors.push(ConfigError::at(
                            file,
                            &r.referenced,
                            format!("redis: {msg}"),
                        ));
                        None
                    }
                },
            },
        };
        let compiler = Compiler {
            redis: redis.as_ref().map(|(_, s)| s),
            redis_changed,
            metrics,
        };

        let mut named = BTreeMap::new();
        for (name, limit) in &cfg.rate_limits {
            let kept = previous.and_then(|p| p.named.get(name));
            match compiler.limit(name, &limit.value, kept) {
                Ok(l) => {
                    named.insert(name.clone(), l);
                }
                Err(msg) => errors.push(ConfigError::at(
                    file,
                    &limit.referenced,
                    format!("rate limit `{name}`: {msg}"),
                )),
            }
        }

        let mut inline = HashMap::new();
        for route in &cfg.routes {
            let route_name = &route.value.name.value;
            for (index, item) in route.value.rate_limit.iter().enumerate() {
                let RateLimitRef::Inline(limit) = &item.value else {
                    continue;
                };
                let scope = (route_name.clone(), index);
                let name = format!("{route_name}-{}", index + 1);
                let compiled = if cfg.rate_limits.contains_key(&name) {
                    Err(format!(
                        "its inline limit at position {} is named `{name}` in headers and metrics, like the `rate_limits` entry `{name}`; rename one",
                        index + 1
                    ))
                } else {
                    let kept = previous
                        .and_then(|p| p.inline.get(&scope))
                        .and_then(|l| l.as_ref().ok());
                    compiler
                        .limit(&name, limit, kept)
                        .map_err(|e| format!("rate_limit[{index}]: {e}"))
                };
                inline.insert(scope, compiled);
            }
        }

        if errors.is_empty() {
            Ok(Self {
                named,
                inline,
                redis,
            })
        } else {
            Err(errors)
        }
    }

    /// The Redis store of this snapshot, when `redis` is configured.
    pub fn redis_store(&self) -> Option<&Arc<RedisStore>> {
        self.redis.as_ref().map(|(_, store)| store)
    }

    fn limits(&self) -> impl Iterator<Item = &Arc<Limit>> {
        self.named
            .values()
            .chain(self.inline.values().filter_map(|l| l.as_ref().ok()))
    }
}

/// What compiling one limit needs.
struct Compiler<'a> {
    redis: Option<&'a Arc<RedisStore>>,
    /// The Redis store is new in this snapshot: Redis limiters are rebuilt.
    redis_changed: bool,
    metrics: &'a Metrics,
}

impl Compiler<'_> {
    /// Compiles the limit `name`, or keeps `kept` when it has the same definition.
    fn limit(
        &self,
        name: &str,
        cfg: &RateLimitConfig,
        kept: Option<&Arc<Limit>>,
    ) -> Result<Arc<Limit>, String> {
        if let Some(kept) = kept.filter(|k| k.config == *cfg)
            && (cfg.store == LimitStore::Local || !self.redis_changed)
        {
            return Ok(kept.clone());
        }
        let key = KeySpec::parse(cfg.key.parts())?;
        if cfg.before_auth && key.needs_identity() {
            return Err(
                "`before_auth` counts requests before anyone is identified: its `key` can use `ip`, `header:` and `route`, not `consumer` or `claim:`".into(),
            );
        }
        if cfg.max_keys == 0 {
            return Err("`max_keys` must be at least 1".into());
        }
        if cfg.store == LimitStore::Local
            && (cfg.mode != LimitMode::default()
                || cfg.sync_interval != crate::config::default_sync_interval())
        {
            return Err("`mode` and `sync_interval` apply to `store: redis` only".into());
        }
        let (kind, headers) = match (cfg.rate, cfg.concurrency) {
            (Some(_), Some(_)) => {
                return Err("set either `rate` or `concurrency`, not both".into());
            }
            (None, None) => {
                return Err(
                    "needs `rate` (such as `100/m`) or `concurrency` (requests in flight)".into(),
                );
            }
            (None, Some(n)) => {
                if n == 0 {
                    return Err("`concurrency` must be at least 1".into());
                }
                if cfg.burst.is_some() {
                    return Err("`burst` applies to `rate` limits only".into());
                }
                if cfg.store == LimitStore::Redis {
                    return Err("concurrency limits are counted in this process only: `store: redis` applies to `rate` limits".into());
                }
                (
                    Kind::Concurrency(Arc::new(ConcurrencyLimiter::new(n, cfg.max_keys))),
                    LimitHeaderSpec::concurrency(name, cfg.headers, n)?,
                )
            }
            (Some(rate), None) => {
                let burst = cfg.burst.unwrap_or(rate.count);
                if burst == 0 {
                    return Err("`burst` must be at least 1".into());
                }
                let gcra = Gcra::new(rate, burst);
                let kind = match cfg.store {
                    LimitStore::Local => Kind::Local(LocalLimiter::new(gcra, cfg.max_keys)),
                    LimitStore::Redis => {
                        if cfg.mode == LimitMode::Reconcile && cfg.sync_interval.0.is_zero() {
                            return Err("`sync_interval` must be more than 0".into());
                        }
                        let store = self
                            .redis
                            .ok_or("`store: redis` needs a working top-level `redis` section")?;
                        Kind::Redis(RedisLimiter::new(
                            &redis_id(name, cfg),
                            cfg,
                            gcra,
                            store.clone(),
                        ))
                    }
                };
                (kind, LimitHeaderSpec::rate(name, cfg.headers, gcra)?)
            }
        };
        Ok(Arc::new(Limit {
            name: name.into(),
            config: cfg.clone(),
            key,
            kind,
            headers,
            allowed: self.metrics.limit(name, "allowed"),
            limited: self.metrics.limit(name, "limited"),
            store_error: self.metrics.limit(name, "store_error"),
            last_error_log: AtomicU64::new(0),
        }))
    }
}

/// The id of a Redis limit: its name and a digest of its definition, so
/// that instances with the same definition share counts and a changed
/// definition starts fresh.
fn redis_id(name: &str, cfg: &RateLimitConfig) -> String {
    let text = serde_json::to_string(cfg).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut id = String::with_capacity(name.len() + 13);
    id.push_str(name);
    id.push('@');
    for b in digest.as_ref().iter().take(6) {
        use std::fmt::Write as _;
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// A route's limits.
pub struct RateLimitFilter {
    route: Arc<str>,
    /// Local limits first (config order), then Redis ones: a refusal by a
    /// local limit never costs a Redis count, and local counts are given back.
    limits: Box<[Arc<Limit>]>,
    /// `RateLimit-Policy` of the route's limits, built once.
    policy: Option<HeaderValue>,
    /// These are the route's `before_auth` limits.
    before_auth: bool,
}

impl RateLimitFilter {
    /// Compiles the limits of a route's `rate_limit` list that count before
    /// authentication (`before_auth`), or the others; `None` when there is none.
    pub fn compile(
        route: &str,
        refs: &[Spanned<RateLimitRef>],
        state: &LimitState,
        before_auth: bool,
    ) -> Result<Option<Self>, String> {
        if refs.len() > MAX_LIMITS_PER_ROUTE {
            return Err(format!(
                "`rate_limit` lists {} limits; at most {MAX_LIMITS_PER_ROUTE} per route",
                refs.len()
            ));
        }
        let mut limits = Vec::with_capacity(refs.len());
        for (index, item) in refs.iter().enumerate() {
            let limit = match &item.value {
                RateLimitRef::Named(name) => state.named.get(name).cloned().ok_or_else(|| {
                    format!("rate limit `{name}` is not available (it is undefined or has errors)")
                })?,
                RateLimitRef::Inline(_) => state
                    .inline
                    .get(&(route.to_owned(), index))
                    .cloned()
                    .unwrap_or_else(|| {
                        Err(format!(
                            "rate_limit[{index}] is not compiled (see the errors above)"
                        ))
                    })?,
            };
            if limits.iter().any(|l: &Arc<Limit>| Arc::ptr_eq(l, &limit)) {
                return Err(format!("rate limit `{}` is listed twice", limit.name));
            }
            limits.push(limit);
        }
        limits.retain(|l| l.config.before_auth == before_auth);
        if limits.is_empty() {
            return Ok(None);
        }
        limits.sort_by_key(|l| matches!(l.kind, Kind::Redis(_)));
        let policy = headers::policy_value(limits.iter().map(|l| &l.headers));
        Ok(Some(Self {
            route: route.into(),
            limits: limits.into(),
            policy,
            before_auth,
        }))
    }

    /// The phase the limits run in: before authentication, or after authorization.
    pub fn phase(&self) -> crate::filters::Phase {
        if self.before_auth {
            crate::filters::Phase::Access
        } else {
            crate::filters::Phase::Limit
        }
    }

    /// Counts the request against every limit: 429 (or 503 when a store
    /// fails closed) when one refuses; adds the rate-limit headers to the answer.
    pub async fn apply<B>(
        &self,
        req: &http::Request<B>,
        ctx: &mut RequestCtx,
    ) -> Result<(), ProxyError> {
        let subject = Subject {
            headers: req.headers(),
            identity: ctx.identity.as_ref(),
            client_ip: ctx.client_ip,
            route: &self.route,
        };
        let mut out = headers::Headers::new(self.policy.as_ref());
        // Slots taken by this request: given back on return unless it passes.
        let mut held = Held::default();
        // Limits whose store failed open: they decided nothing.
        let mut undecided = 0u64;
        for (index, limit) in self.limits.iter().enumerate() {
            let refusal = match &limit.kind {
                Kind::Local(l) => {
                    let d = l.decide(limit.key.hash(&subject), 1);
                    self.rate_status(&mut out, limit, d)
                }
                Kind::Concurrency(c) => match c.acquire(limit.key.hash(&subject)) {
                    Ok((slot, free)) => {
                        held.push(slot);
                        let status = Status {
                            remaining: u64::from(free),
                            reset: None,
                        };
                        out.add(&limit.headers, status);
                        None
                    }
                    Err(why) => Some(self.concurrency_refusal(limit, why)),
                },
                Kind::Redis(r) => match r.decide(&limit.key.digest(&subject), 1).await {
                    Ok(d) => self.rate_status(&mut out, limit, d),
                    Err(e) => {
                        limit.store_error.inc();
                        limit.log_store_error(&e);
                        match limit.config.on_store_error {
                            FailMode::Open => {
                                undecided |= 1 << index;
                                None
                            }
                            FailMode::Closed => Some(
                                ProxyError::new(ErrorKind::LimiterUnavailable)
                                    .context(format_args!("rate limit `{}`: {e}", limit.name))
                                    .header(
                                        http::header::RETRY_AFTER,
                                        http::HeaderValue::from_static("1"),
                                    ),
                            ),
                        }
                    }
                },
            };
            if let Some(err) = refusal {
                self.refund(&self.limits[..index], &subject);
                return Err(err);
            }
        }
        for (index, limit) in self.limits.iter().enumerate() {
            if undecided & (1 << index) == 0 {
                limit.allowed.inc();
            }
        }
        ctx.held.append(held);
        if !out.is_empty() {
            out.write(ctx.response_headers.get_or_insert_with(Default::default));
        }
        Ok(())
    }

    /// Gives back what `passed` took for a request another limit refused
    /// (concurrency slots go back when the request's `Held` drops).
    fn refund(&self, passed: &[Arc<Limit>], subject: &Subject<'_>) {
        for limit in passed {
            if let Kind::Local(l) = &limit.kind {
                l.refund(limit.key.hash(subject), 1);
            }
        }
    }
}

impl RateLimitFilter {
    /// Adds a rate limit's status to `out` when it allowed the request; the
    /// 429 when it refused.
    fn rate_status(
        &self,
        out: &mut headers::Headers<'_>,
        limit: &Limit,
        d: Decision,
    ) -> Option<ProxyError> {
        if d.allowed {
            let status = Status {
                remaining: d.remaining,
                reset: Some(headers::ceil_secs(d.reset)),
            };
            out.add(&limit.headers, status);
            return None;
        }
        limit.limited.inc();
        // `t` is the wait for the next request here, not until the limit is
        // full: the draft wants Retry-After no earlier than the window's end.
        let status = Status {
            remaining: 0,
            reset: Some(headers::ceil_secs(d.retry_after).max(1)),
        };
        Some(self.refusal(limit, status, d.retry_after, "rate limit reached"))
    }

    fn concurrency_refusal(&self, limit: &Limit, why: Refused) -> ProxyError {
        limit.limited.inc();
        let status = Status {
            remaining: 0,
            reset: None,
        };
        let detail = match why {
            Refused::Full => "too many requests in flight",
            Refused::TooManyKeys => "too many clients with requests in flight",
        };
        // When a slot frees is unknown; a second is the shortest useful wait.
        self.refusal(limit, status, Duration::from_secs(1), detail)
    }

    /// The 429 of `limit`, with `Retry-After` and its rate-limit headers.
    fn refusal(
        &self,
        limit: &Limit,
        status: Status,
        retry_after: Duration,
        detail: &str,
    ) -> ProxyError {
        let mut map = http::HeaderMap::new();
        map.insert(http::header::RETRY_AFTER, headers::retry_after(retry_after));
        let mut h = headers::Headers::new(self.policy.as_ref());
        h.add(&limit.headers, status);
        h.write(&mut map);
        let secs = headers::ceil_secs(retry_after).max(1);
        ProxyError::new(ErrorKind::RateLimited)
            .detail(format_args!("{detail}; retry in {secs} s"))
            .context(format_args!("rate limit `{}`: {detail}", limit.name))
            .headers(map)
    }
}

impl Limit {
    /// Logs a store error, at most once per [`STORE_ERROR_LOG_EVERY`].
    fn log_store_error(&self, e: &redis::StoreError) {
        let now = local::now_ns().max(1);
        let last = self.last_error_log.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= STORE_ERROR_LOG_EVERY)
            && self
                .last_error_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = %self.name,
                error = %e,
                on_store_error = ?self.config.on_store_error,
                "rate limit store failed"
            );
        }
    }
}

/// Background work of the limits (Redis connection, reconcile syncs, idle
/// key eviction), on the control runtime, for the life of the process.
pub async fn supervise(
    snapshot: impl Fn() -> Arc<crate::gateway::Gateway> + Clone + Send + Sync + 'static,
) {
    let sweep = {
        let snapshot = snapshot.clone();
        async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let gw = snapshot();
                for limit in gw.limits.limits() {
                    if let Kind::Local(l) = &limit.kind {
                        l.sweep();
                    }
                }
            }
        }
    };
    tokio::join!(redis::supervise(snapshot), sweep);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEAD: &str =
        "access_log: { enabled: false }\nlisteners: [{ name: main, address: \"127.0.0.1:0\" }]\n";

    fn load(body: &str) -> Config {
        crate::config::load_str(&format!("{HEAD}{body}"), "t.yaml").unwrap()
    }

    /// The errors of compiling the whole gateway, as text.
    fn errors(body: &str) -> String {
        match crate::gateway::check(load(body), "t.yaml", 1) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    fn named(def: &str) -> String {
        errors(&format!("rate_limits:\n  x: {def}\n"))
    }

    #[test]
    fn named_limits_are_checked_with_their_location() {
        assert_eq!(named("{ rate: 10/s }"), "");
        assert_eq!(named("{ concurrency: 3, key: [ip, route] }"), "");
        let e = named("{ rate: 10/s, concurrency: 3 }");
        assert!(
            e.starts_with("t.yaml:4:6: rate limit `x`: set either"),
            "{e}"
        );
        for (def, needle) in [
            ("{ key: ip }", "needs `rate`"),
            ("{ rate: 10/s, burst: 0 }", "`burst` must be at least 1"),
            ("{ concurrency: 0 }", "`concurrency` must be at least 1"),
            ("{ concurrency: 2, burst: 3 }", "`burst` applies to `rate`"),
            (
                "{ rate: 1/s, max_keys: 0 }",
                "`max_keys` must be at least 1",
            ),
            ("{ rate: 1/s, key: user }", "unknown key part `user`"),
            (
                "{ rate: 1/s, key: [ip, \"header:a b\"] }",
                "`a b` is not a valid header name",
            ),
            ("{ rate: 1/s, key: \"claim:a..b\" }", "claim path"),
            ("{ rate: 1/s, key: [] }", "no part"),
            (
                "{ rate: 1/s, mode: reconcile }",
                "apply to `store: redis` only",
            ),
            (
                "{ rate: 1/s, sync_interval: 1s }",
                "apply to `store: redis` only",
            ),
        ] {
            let e = named(def);
            assert!(e.contains(needle), "{def}: {e}");
            assert_eq!(e.lines().count(), 1, "{def}: {e}");
        }
        let e = errors("rate_limits:\n  caf\u{e9}: { rate: 1/s }\n");
        assert!(e.contains("printable ASCII"), "{e}");
        assert_eq!(
            errors("rate_limits:\n  caf\u{e9}: { rate: 1/s, headers: none }\n"),
            ""
        );
    }

    #[test]
    fn concurrency_limits_are_local_only() {
        let e = errors(
            "redis: { urls: [\"redis://127.0.0.1:1\"] }\nrate_limits:\n  x: { concurrency: 5, store: redis }\n",
        );
        assert!(e.contains("counted in this process only"), "{e}");
    }

    #[test]
    fn inline_limits_are_reported_for_their_route() {
        let route = |limits: &str| {
            errors(&format!(
                "rate_limits:\n  shared: {{ rate: 1/s }}\nroutes:\n  - name: r\n    match: {{ prefix: / }}\n    respond: {{ status: 204 }}\n    rate_limit: {limits}\n"
            ))
        };
        assert_eq!(route("[shared, { rate: 5/m, key: [ip, route] }]"), "");
        let e = route("[shared, { rate: 5/m, burst: 0 }]");
        assert!(
            e.starts_with("t.yaml:6:5: route `r`: rate_limit[1]: `burst`"),
            "{e}"
        );
        let e = route("[shared, shared]");
        assert!(e.contains("`shared` is listed twice"), "{e}");
        let e = errors(
            "rate_limits:\n  r-1: { rate: 1/s }\nroutes:\n  - { name: r, match: { prefix: / }, respond: { status: 204 }, rate_limit: [{ rate: 1/s }] }\n",
        );
        assert!(e.contains("named `r-1`"), "{e}");
    }

    #[test]
    fn unchanged_limits_keep_their_state_across_compiles() {
        let metrics = Metrics::new();
        let body = |rate: &str, inline: &str| {
            format!(
                "rate_limits:\n  a: {{ rate: {rate} }}\n  b: {{ concurrency: 2 }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, respond: {{ status: 204 }}, rate_limit: [a, {{ rate: {inline} }}] }}\n"
            )
        };
        let compile =
            |cfg: &Config, prev| LimitState::compile(cfg, "t.yaml", prev, &metrics).unwrap();
        let one = compile(&load(&body("1/s", "5/m")), None);
        let two = compile(&load(&body("1/s", "5/m")), Some(&one));
        assert!(Arc::ptr_eq(&one.named["a"], &two.named["a"]));
        assert!(Arc::ptr_eq(&one.named["b"], &two.named["b"]));
        let inline = |s: &LimitState| s.inline[&("r".to_owned(), 1)].clone().unwrap();
        assert!(Arc::ptr_eq(&inline(&one), &inline(&two)));

        let three = compile(&load(&body("2/s", "6/m")), Some(&two));
        assert!(
            !Arc::ptr_eq(&two.named["a"], &three.named["a"]),
            "changed: fresh state"
        );
        assert!(Arc::ptr_eq(&two.named["b"], &three.named["b"]));
        assert!(!Arc::ptr_eq(&inline(&two), &inline(&three)));
    }

    #[test]
    fn the_route_policy_is_built_once_in_order_local_first() {
        let cfg = load(
            "redis: { urls: [\"redis://127.0.0.1:1\"] }\nrate_limits:\n  shared: { rate: 100/m, store: redis }\n  local: { rate: 10/s, burst: 20 }\nroutes:\n  - { name: r, match: { prefix: / }, respond: { status: 204 }, rate_limit: [shared, local, { concurrency: 4, headers: legacy }, { concurrency: 1 }] }\n",
        );
        let state = LimitState::compile(&cfg, "t.yaml", None, &Metrics::new()).unwrap();
        let f = RateLimitFilter::compile("r", &cfg.routes[0].value.rate_limit, &state, false)
            .unwrap()
            .unwrap();
        assert_eq!(
            f.policy.unwrap(),
            r#""local";q=20;w=2, "r-4";q=1;qu="concurrent-requests", "shared";q=100;w=60"#,
            "the Redis limit is decided last"
        );
        let names: Vec<&str> = f.limits.iter().map(|l| &*l.name).collect();
        assert_eq!(names, ["local", "r-3", "r-4", "shared"]);
    }

    #[test]
    fn before_auth_limits_form_their_own_filter_in_the_access_phase() {
        let cfg = load(
            "rate_limits:\n  guess: { key: ip, rate: 5/m, before_auth: true }\n  user: { key: ip, rate: 10/s }\nroutes:\n  - { name: r, match: { prefix: / }, respond: { status: 204 }, rate_limit: [user, guess] }\n",
        );
        let state = LimitState::compile(&cfg, "t.yaml", None, &Metrics::new()).unwrap();
        let refs = &cfg.routes[0].value.rate_limit;
        let early = RateLimitFilter::compile("r", refs, &state, true)
            .unwrap()
            .unwrap();
        let late = RateLimitFilter::compile("r", refs, &state, false)
            .unwrap()
            .unwrap();
        assert_eq!(early.phase(), crate::filters::Phase::Access);
        assert_eq!(late.phase(), crate::filters::Phase::Limit);
        assert_eq!(&*early.limits[0].name, "guess");
        assert_eq!(&*late.limits[0].name, "user");
        let bad =
            load("rate_limits:\n  guess: { key: [ip, consumer], rate: 5/m, before_auth: true }\n");
        let e = LimitState::compile(&bad, "t.yaml", None, &Metrics::new())
            .err()
            .unwrap();
        assert!(
            e[0].to_string().contains("not `consumer` or `claim:`"),
            "{}",
            e[0]
        );
    }
}
