//! Semantic checks on a parsed [`Config`], each error at the offending item.
//!
//! Settings that carry no source location (`workers`, `access_log`, `request_id`,
//! `limits`, and an empty `listeners`) are reported at `0:0`, with the setting's
//! path in the message. Router-level checks (regexes, duplicate matchers, path
//! templates) are done when the router is built, not here.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderName, HeaderValue};
use serde_saphyr::Spanned;

use super::load::ConfigError;
use super::schema::{
    BalanceConfig, Config, EndpointConfig, HashKey, HostHeader, LimitStore, RateLimitConfig,
    RateLimitRef, RetryConfig, RouteConfig, UpstreamConfig,
};

/// Most worker runtimes accepted.
const MAX_WORKERS: usize = 1024;
/// Endpoint weight range.
const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=1000;
/// Most access log lines buffered: every slot is allocated up front.
const MAX_LOG_BUFFER: usize = 1_000_000;
/// Most connections per endpoint in a pool (tokio's semaphore panics far
/// above this, at `usize::MAX >> 3` permits).
const MAX_POOL_CONNECTIONS: usize = 1_000_000;
/// Status codes a `respond` route may answer with: final ones only (hyper
/// refuses to send a 1xx as the answer and drops the connection).
const RESPOND_STATUSES: std::ops::RangeInclusive<u16> = 200..=599;
/// Response headers a `respond` route may not set: the gateway frames the
/// body and manages the connection itself.
const FRAMING_HEADERS: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Most attempts a retry policy may make.
const MAX_ATTEMPTS: u32 = 10;
/// Largest replay buffer: each retried request may hold this much.
const MAX_REPLAY_BUFFER: u64 = 16 * 1024 * 1024;

/// What is wrong with a route's `retry` block.
fn retry_problems(retry: &RetryConfig, proxies: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if !proxies {
        problems.push("`retry` is only allowed with `upstream`".to_owned());
    }
    if !(1..=MAX_ATTEMPTS).contains(&retry.attempts) {
        problems.push(format!(
            "`retry.attempts` must be between 1 and {MAX_ATTEMPTS} (the first attempt included), got {}",
            retry.attempts
        ));
    }
    if let Some(s) = retry.statuses.iter().find(|s| !(100..=599).contains(*s)) {
        problems.push(format!("`retry.statuses`: {s} is not a status code"));
    }
    if retry.max_backoff.0 < retry.backoff.0 {
        problems.push("`retry.max_backoff` must be at least `retry.backoff`".to_owned());
    }
    if retry.replay_buffer.0 > MAX_REPLAY_BUFFER {
        problems.push(format!(
            "`retry.replay_buffer` must be at most 16MiB, got {} bytes",
            retry.replay_buffer.0
        ));
    }
    problems
}

/// Collects all semantic errors in `cfg`, sorted by position.
pub fn validate(cfg: &Config, file: &str) -> Vec<ConfigError> {
    let mut v = Validator {
        file,
        errors: Vec::new(),
    };
    v.globals(cfg);
    v.listeners(cfg);
    v.listener_tls(cfg);
    v.admin(cfg);
    for (name, up) in &cfg.upstreams {
        v.upstream(name, up);
    }
    v.routes(cfg);
    v.api_references(cfg);
    for message in tracing_problems(&cfg.tracing) {
        v.nowhere(message);
    }
    for message in hidden_header_problems(&cfg.hide_response_headers) {
        v.nowhere(message);
    }
    let mut errors = v.errors;
    errors.sort_by_key(|e| (e.line, e.column));
    errors
}

/// Error sink for one file.
struct Validator<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    /// An error at a spanned item.
    fn at<T>(&mut self, item: &Spanned<T>, message: String) {
        self.errors
            .push(ConfigError::at(self.file, &item.referenced, message));
    }

    /// An error with no position.
    fn nowhere(&mut self, message: String) {
        self.errors.push(ConfigError::new(self.file, 0, 0, message));
    }

    fn globals(&mut self, cfg: &Config) {
        if let Some(w) = cfg.workers
            && !(1..=MAX_WORKERS).contains(&w)
        {
            self.nowhere(format!(
                "`workers` must be between 1 and {MAX_WORKERS}, got {w}"
            ));
        }
        if cfg.access_log.buffer == 0 {
            self.nowhere("`access_log.buffer` must be greater than 0".into());
        } else if cfg.access_log.buffer > MAX_LOG_BUFFER {
            self.nowhere(format!(
                "`access_log.buffer` must be at most {MAX_LOG_BUFFER} lines, got {}",
                cfg.access_log.buffer
            ));
        }
        if cfg.access_log.target.trim().is_empty() {
            self.nowhere(
                "`access_log.target` must be `stdout`, `stderr` or a file path, not empty".into(),
            );
        }
        match HeaderName::from_bytes(cfg.request_id.header.as_bytes()) {
            Err(e) => self.nowhere(format!(
                "`request_id.header` `{}` is not a valid header name: {e}",
                cfg.request_id.header
            )),
            // The id is written beside the fields forwarding sets and the
            // framing: a name of theirs would send two of a kind upstream.
            Ok(name)
                if FRAMING_HEADERS.contains(&name.as_str())
                    || crate::proxy::headers::set_by_forwarding(&name) =>
            {
                self.nowhere(format!(
                    "`request_id.header` `{}` is a field the gateway sets or removes itself; \
                     choose another name",
                    cfg.request_id.header
                ));
            }
            Ok(_) => {}
        }
        for proxy in &cfg.forwarding.trusted_proxies {
            let s = proxy.value.trim();
            if s.parse::<ipnet::IpNet>().is_err() && s.parse::<IpAddr>().is_err() {
                self.at(
                    proxy,
                    format!(
                        "trusted proxy `{}` is neither a CIDR (`10.0.0.0/8`) nor an IP address",
                        proxy.value
                    ),
                );
            }
        }
        let limits = &cfg.limits;
        if limits.max_uri_length.0 == 0 {
            self.nowhere("`limits.max_uri_length` must be greater than 0".into());
        }
        if limits.max_header_bytes.0 == 0 {
            self.nowhere("`limits.max_header_bytes` must be greater than 0".into());
        }
        if limits.max_headers == 0 {
            self.nowhere("`limits.max_headers` must be greater than 0".into());
        }
        if limits.send_timeout.0.is_zero() {
            self.nowhere("`limits.send_timeout` must be greater than 0".into());
        }
        if limits.header_read_timeout.0.is_zero() {
            self.nowhere("`limits.header_read_timeout` must be greater than 0".into());
        }
        if limits.max_concurrent_streams == 0 {
            // Zero would leave HTTP/2 clients no stream at all.
            self.nowhere("`limits.max_concurrent_streams` must be greater than 0".into());
        }
    }

    fn listeners(&mut self, cfg: &Config) {
        if cfg.listeners.is_empty() {
            self.nowhere("no listeners: define at least one under `listeners`".into());
        }
        let mut names: HashMap<&str, u64> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, &str> = HashMap::new();
        for l in &cfg.listeners {
            let name = l.name.value.as_str();
            if name.is_empty() {
                self.at(&l.name, "listener name must not be empty".into());
            } else if let Some(line) = names.get(name) {
                self.at(
                    &l.name,
                    format!("duplicate listener name `{name}` (first defined on line {line})"),
                );
            } else {
                names.insert(name, l.name.referenced.line());
            }
            match l.address.value.parse::<SocketAddr>() {
                Err(_) => self.at(
                    &l.address,
                    format!(
                        "listener `{name}`: address `{}` must be `ip:port` \
                         (e.g. `0.0.0.0:8080` or `[::]:8080`)",
                        l.address.value
                    ),
                ),
                // Port 0 asks the OS for a free port: two such listeners never clash.
                Ok(addr) if addr.port() == 0 => {}
                Ok(addr) => {
                    if let Some(other) = addrs.get(&addr) {
                        self.at(
                            &l.address,
                            format!(
                                "listener `{name}`: address `{addr}` is already used by \
                                 listener `{other}`"
                            ),
                        );
                    } else {
                        addrs.insert(addr, name);
                    }
                }
            }
        }
    }

    /// `tls` and `redirect_https` of each listener. Certificate, key and CA
    /// files are loaded (and their errors reported) when the config compiles.
    fn listener_tls(&mut self, cfg: &Config) {
        for l in &cfg.listeners {
            let name = l.name.value.as_str();
            if let Some(tls) = &l.tls {
                for problem in acme_problems(&tls.value) {
                    self.at(tls, format!("listener `{name}`: {problem}"));
                }
                if tls.value.certificates.is_empty() && tls.value.acme.is_none() {
                    self.at(
                        tls,
                        format!(
                            "listener `{name}`: `tls.certificates` is empty: give at least one \
                             `cert` and `key`"
                        ),
                    );
                }
                if l.redirect_https.is_some() {
                    self.at(
                        tls,
                        format!(
                            "listener `{name}`: `redirect_https` is for plain listeners; \
                             remove it or `tls`"
                        ),
                    );
                }
            }
            if let Some(r) = &l.redirect_https
                && !matches!(r.status, 301 | 302 | 307 | 308)
            {
                self.at(
                    &l.name,
                    format!(
                        "listener `{name}`: `redirect_https.status` must be 301, 302, 307 or \
                         308, got {}",
                        r.status
                    ),
                );
            }
        }
    }

    fn admin(&mut self, cfg: &Config) {
        let Some(admin) = &cfg.admin else {
            return;
        };
        let super::schema::AdminConfig { address, token } = &admin.value;
        if token
            .as_deref()
            .is_some_and(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            self.at(
                admin,
                "`admin.token` must be visible ASCII without spaces, and not empty \
                 (it is sent as `Authorization: Bearer <token>`)"
                    .into(),
            );
        }
        let Ok(addr) = address.parse::<SocketAddr>() else {
            self.at(
                admin,
                format!("`admin.address` `{address}` must be `ip:port` (e.g. `127.0.0.1:9901`)"),
            );
            return;
        };
        // Port 0 asks the OS for a free port: it never clashes.
        if addr.port() == 0 {
            return;
        }
        let clash = cfg.listeners.iter().find(|l| {
            l.address
                .value
                .parse()
                .is_ok_and(|a| crate::server::listener::overlaps(a, addr))
        });
        if let Some(l) = clash {
            self.at(
                admin,
                format!(
                    "`admin.address` `{addr}` is also the address of listener `{}`",
                    l.name.value
                ),
            );
        }
    }

    fn upstream(&mut self, name: &str, up: &Spanned<UpstreamConfig>) {
        let u = &up.value;
        if u.endpoints.is_empty() {
            self.at(
                up,
                format!("upstream `{name}` has no endpoints: give at least one `host:port`"),
            );
        }
        for ep in &u.endpoints {
            let addr = ep.value.address();
            if let Err(why) = check_host_port(addr) {
                self.at(
                    ep,
                    format!("upstream `{name}`: endpoint `{addr}` is not `host:port`: {why}"),
                );
            }
            if let EndpointConfig::Weighted(w) = &ep.value
                && !WEIGHTS.contains(&w.weight)
            {
                self.at(
                    ep,
                    format!(
                        "upstream `{name}`: endpoint `{addr}` has weight {}; it must be \
                         between {} and {}",
                        w.weight,
                        WEIGHTS.start(),
                        WEIGHTS.end()
                    ),
                );
            }
        }
        if u.timeouts.connect.0.is_zero() {
            self.at(
                up,
                format!("upstream `{name}`: `timeouts.connect` must be greater than 0"),
            );
        }
        if u.timeouts.request.0.is_zero() {
            self.at(
                up,
                format!("upstream `{name}`: `timeouts.request` must be greater than 0"),
            );
        }
        if u.pool.max_connections > MAX_POOL_CONNECTIONS {
            self.at(
                up,
                format!(
                    "upstream `{name}`: `pool.max_connections` must be at most \
                     {MAX_POOL_CONNECTIONS} (0 for no cap), got {}",
                    u.pool.max_connections
                ),
            );
        }
        if let BalanceConfig::ConsistentHash(HashKey::Header(h)) = &u.balance
            && HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            self.at(
                up,
                format!("upstream `{name}`: hash header `{h}` is not a valid header name"),
            );
        }
        if let HostHeader::Fixed(h) = &u.host
            && HeaderValue::from_str(h).is_err()
        {
            self.at(
                up,
                format!("upstream `{name}`: host `{h}` is not a valid header value"),
            );
        }
        self.health_check(name, up);
        self.resilience(name, up);
        for p in upstream_tls_problems(&up.value) {
            self.at(up, format!("upstream `{name}`: {p}"));
        }
    }

    /// Outlier detection, retry budget and slow start.
    fn resilience(&mut self, name: &str, up: &Spanned<UpstreamConfig>) {
        let u = &up.value;
        let mut problems = Vec::new();
        if let Some(o) = &u.outlier_detection {
            if !(0.0..=1.0).contains(&o.failure_ratio) {
                problems.push(format!(
                    "`outlier_detection.failure_ratio` must be between 0.0 and 1.0, got {}",
                    o.failure_ratio
                ));
            }
            if o.failure_ratio > 0.0 && o.window.0.is_zero() {
                problems.push("`outlier_detection.window` must be greater than 0".to_owned());
            }
            if o.base_ejection_time.0.is_zero() {
                problems.push(
                    "`outlier_detection.base_ejection_time` must be greater than 0".to_owned(),
                );
            }
            if o.max_ejection_time.0 < o.base_ejection_time.0 {
                problems.push(
                    "`outlier_detection.max_ejection_time` must be at least `base_ejection_time`"
                        .to_owned(),
                );
            }
            if o.max_ejection_percent > 100 {
                problems.push(format!(
                    "`outlier_detection.max_ejection_percent` must be at most 100, got {}",
                    o.max_ejection_percent
                ));
            }
            if o.consecutive_5xx == 0
                && o.consecutive_connect_failures == 0
                && o.failure_ratio == 0.0
            {
                problems.push(
                    "`outlier_detection` has every trigger off: set `consecutive_5xx`, \
                     `consecutive_connect_failures` or `failure_ratio`"
                        .to_owned(),
                );
            }
        }
        let budget = &u.retry_budget;
        if !(0.0..=100.0).contains(&budget.percent) {
            problems.push(format!(
                "`retry_budget.percent` must be between 0 and 100, got {}",
                budget.percent
            ));
        }
        for p in problems {
            self.at(up, format!("upstream `{name}`: {p}"));
        }
    }

    fn health_check(&mut self, name: &str, up: &Spanned<UpstreamConfig>) {
        let Some(hc) = &up.value.health_check else {
            return;
        };
        let mut problems = Vec::new();
        if hc.interval.0.is_zero() {
            problems.push("`health_check.interval` must be greater than 0".to_string());
        }
        if hc.timeout.0.is_zero() {
            problems.push("`health_check.timeout` must be greater than 0".into());
        }
        if hc.healthy_threshold == 0 {
            problems.push("`health_check.healthy_threshold` must be at least 1".into());
        }
        if hc.unhealthy_threshold == 0 {
            problems.push("`health_check.unhealthy_threshold` must be at least 1".into());
        }
        if !hc.path.starts_with('/') || hc.path.parse::<http::uri::PathAndQuery>().is_err() {
            problems.push(format!(
                "`health_check.path` `{}` must be an absolute path such as `/healthz` \
                 (a query may follow)",
                hc.path
            ));
        }
        if http::Method::from_bytes(hc.method.as_bytes()).is_err() {
            problems.push(format!(
                "`health_check.method` `{}` is not a valid HTTP method",
                hc.method
            ));
        }
        if let Some(h) = &hc.host
            && h.parse::<http::uri::Authority>().is_err()
        {
            problems.push(format!(
                "`health_check.host` `{h}` is not a valid host (`name` or `name:port`)"
            ));
        }
        if hc.expected_statuses.is_empty() {
            problems.push(
                "`health_check.expected_statuses` must list at least one status or range".into(),
            );
        }
        for p in problems {
            self.at(up, format!("upstream `{name}`: {p}"));
        }
    }

    /// References between routes, providers, limits and the Redis store.
    fn api_references(&mut self, cfg: &Config) {
        let redis_needed = |l: &RateLimitConfig| {
            (l.store == LimitStore::Redis && cfg.redis.is_none())
                .then(|| "`store: redis` needs a top-level `redis` section".to_owned())
        };
        for (name, limit) in &cfg.rate_limits {
            if let Some(m) = redis_needed(&limit.value) {
                self.at(limit, format!("rate limit `{name}`: {m}"));
            }
        }
        for route in &cfg.routes {
            let r = &route.value;
            let name = r.name.value.as_str();
            if let Some(auth) = &r.auth {
                if auth.value.providers.is_empty() {
                    self.at(auth, format!("route `{name}`: `auth.providers` is empty"));
                }
                for p in &auth.value.providers {
                    if !cfg.auth_providers.contains_key(&p.value) {
                        self.at(
                            p,
                            format!(
                                "route `{name}` names auth provider `{}`, which is not defined; defined: {}",
                                p.value,
                                list(cfg.auth_providers.keys().map(String::as_str))
                            ),
                        );
                    }
                }
            }
            if let Some(authz) = &r.authorize {
                let consumers = || cfg.consumers.iter().map(|c| c.name.value.as_str());
                for c in &authz.consumers {
                    if !consumers().any(|n| n == c) {
                        self.at(
                            route,
                            format!(
                                "route `{name}`: `authorize.consumers` names `{c}`, which is not a consumer; defined: {}",
                                list(consumers())
                            ),
                        );
                    }
                }
                for g in &authz.groups {
                    if !cfg.consumers.iter().any(|c| c.groups.contains(g)) {
                        self.at(
                            route,
                            format!(
                                "route `{name}`: `authorize.groups` names `{g}`, which no consumer is in"
                            ),
                        );
                    }
                }
            }
            for item in &r.rate_limit {
                match &item.value {
                    RateLimitRef::Named(n) if !cfg.rate_limits.contains_key(n) => self.at(
                        item,
                        format!(
                            "route `{name}` names rate limit `{n}`, which is not defined; defined: {}",
                            list(cfg.rate_limits.keys().map(String::as_str))
                        ),
                    ),
                    RateLimitRef::Inline(l) => {
                        if let Some(m) = redis_needed(l) {
                            self.at(item, format!("route `{name}`: {m}"));
                        }
                    }
                    RateLimitRef::Named(_) => {}
                }
            }
        }
    }

    fn routes(&mut self, cfg: &Config) {
        let listener_names: Vec<&str> = cfg
            .listeners
            .iter()
            .map(|l| l.name.value.as_str())
            .collect();
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for route in &cfg.routes {
            let name = route.value.name.value.as_str();
            if name.is_empty() {
                self.at(&route.value.name, "route name must not be empty".into());
            } else if let Some(line) = seen.get(name) {
                self.at(
                    &route.value.name,
                    format!("duplicate route name `{name}` (first defined on line {line})"),
                );
            } else {
                seen.insert(name, route.value.name.referenced.line());
            }
            self.route(route, &listener_names, &cfg.upstreams);
        }
    }

    fn route(
        &mut self,
        route: &Spanned<RouteConfig>,
        listeners: &[&str],
        upstreams: &BTreeMap<String, Spanned<UpstreamConfig>>,
    ) {
        let r = &route.value;
        let name = r.name.value.as_str();
        for l in &r.listeners {
            if !listeners.contains(&l.value.as_str()) {
                self.at(
                    l,
                    format!(
                        "route `{name}` names listener `{}`, which is not defined; defined: {}",
                        l.value,
                        list(listeners.iter().copied())
                    ),
                );
            }
        }

        let actions = [
            r.upstream.is_some(),
            r.redirect.is_some(),
            r.respond.is_some(),
        ];
        if actions.iter().filter(|a| **a).count() != 1 {
            self.at(
                route,
                format!("route `{name}` needs exactly one of upstream, redirect, respond"),
            );
        }

        if let Some(up) = &r.upstream
            && !upstreams.contains_key(&up.value)
        {
            self.at(
                up,
                format!(
                    "route `{name}` names upstream `{}`, which is not defined; defined: {}",
                    up.value,
                    list(upstreams.keys().map(String::as_str))
                ),
            );
        }

        if let Some(redirect) = &r.redirect
            && !matches!(redirect.status, 301 | 302 | 303 | 307 | 308)
        {
            self.at(
                route,
                format!(
                    "route `{name}`: redirect status {} must be 301, 302, 303, 307 or 308",
                    redirect.status
                ),
            );
        }

        if let Some(respond) = &r.respond {
            if !RESPOND_STATUSES.contains(&respond.status) {
                self.at(
                    route,
                    format!(
                        "route `{name}`: respond status {} must be between {} and {}",
                        respond.status,
                        RESPOND_STATUSES.start(),
                        RESPOND_STATUSES.end()
                    ),
                );
            }
            for (k, val) in &respond.headers {
                match HeaderName::from_bytes(k.as_bytes()) {
                    Err(_) => self.at(
                        route,
                        format!("route `{name}`: respond header name `{k}` is not valid"),
                    ),
                    Ok(h) if FRAMING_HEADERS.contains(&h.as_str()) => self.at(
                        route,
                        format!(
                            "route `{name}`: respond header `{k}` may not be set: the gateway \
                             frames the response and manages the connection itself"
                        ),
                    ),
                    Ok(_) => {}
                }
                if HeaderValue::from_str(val).is_err() {
                    self.at(
                        route,
                        format!(
                            "route `{name}`: respond header `{k}` has an invalid value `{}`",
                            val.escape_debug()
                        ),
                    );
                }
            }
        }

        if let Some(retry) = &r.retry {
            for p in retry_problems(retry, r.upstream.is_some()) {
                self.at(route, format!("route `{name}`: {p}"));
            }
        }

        if let Some(rw) = &r.rewrite {
            if r.upstream.is_none() {
                self.at(
                    route,
                    format!("route `{name}`: `rewrite` is only allowed with `upstream`"),
                );
            }
            if rw.strip_prefix.is_some() && rw.path.is_some() {
                self.at(
                    route,
                    format!(
                        "route `{name}`: `rewrite.strip_prefix` and `rewrite.path` cannot both be set"
                    ),
                );
            }
            if let Some(h) = &rw.host
                && HeaderValue::from_str(h).is_err()
            {
                self.at(
                    route,
                    format!(
                        "route `{name}`: `rewrite.host` `{}` is not a valid header value",
                        h.escape_debug()
                    ),
                );
            }
        }
    }
}

/// What is wrong with `hide_response_headers`: names that are not valid
/// header names, and the framing fields, whose removal would change how the
/// response is delimited rather than hide anything.
fn hidden_header_problems(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter_map(|n| match http::HeaderName::from_bytes(n.as_bytes()) {
            Err(_) => Some(format!(
                "`hide_response_headers`: `{}` is not a valid header name",
                n.escape_debug()
            )),
            Ok(h) if h == http::header::CONTENT_LENGTH || h == http::header::TRANSFER_ENCODING => {
                Some(format!(
                    "`hide_response_headers`: `{n}` frames the response and cannot be hidden"
                ))
            }
            Ok(_) => None,
        })
        .collect()
}

/// What is wrong with `tls.acme`: without the `acme` feature, its presence.
fn acme_problems(tls: &super::schema::ListenerTls) -> Vec<String> {
    let Some(acme) = &tls.acme else {
        return Vec::new();
    };
    #[cfg(not(feature = "acme"))]
    {
        let _ = acme;
        vec![crate::tls::ACME_NEEDS_FEATURE.to_owned()]
    }
    #[cfg(feature = "acme")]
    crate::acme::config_problems(acme)
}

/// What is wrong with `tracing`: the sample ratio, and span export, which
/// needs the `otel` feature.
fn tracing_problems(t: &super::schema::TracingConfig) -> Vec<String> {
    /// Most spans buffered.
    const MAX_SPAN_BUFFER: usize = 1_000_000;
    let mut problems = Vec::new();
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        problems.push(format!(
            "`tracing.sample_ratio` must be between 0 and 1, got {}",
            t.sample_ratio
        ));
    }
    let Some(otlp) = &t.otlp else {
        return problems;
    };
    #[cfg(not(feature = "otel"))]
    problems.push(crate::observe::OTLP_NEEDS_FEATURE.to_owned());
    #[cfg(feature = "otel")]
    if let Err(e) = crate::observe::otlp::Endpoint::parse(&otlp.endpoint) {
        problems.push(format!("`tracing.otlp.endpoint`: {e}"));
    }
    if otlp.service_name.trim().is_empty() {
        problems.push("`tracing.otlp.service_name` must not be empty".into());
    }
    if !(1..=MAX_SPAN_BUFFER).contains(&otlp.buffer) {
        problems.push(format!(
            "`tracing.otlp.buffer` must be between 1 and {MAX_SPAN_BUFFER} spans, got {}",
            otlp.buffer
        ));
    }
    if otlp.flush_interval.0.is_zero() {
        problems.push("`tracing.otlp.flush_interval` must be greater than 0".into());
    }
    problems
}

/// `a, b, c` (sorted, deduplicated), or `(none)`.
/// `protocol` against `tls`, and the `tls` keys that can be checked without
/// reading files (the files are read when the config is compiled).
fn upstream_tls_problems(u: &UpstreamConfig) -> Vec<String> {
    use super::schema::UpstreamProtocol;
    let mut problems = Vec::new();
    match (u.protocol, &u.tls) {
        (UpstreamProtocol::H2, None) => problems.push(
            "`protocol: h2` is HTTP/2 over TLS and needs `tls` (use `h2c` for cleartext HTTP/2)"
                .to_owned(),
        ),
        (UpstreamProtocol::H2c, Some(_)) => problems.push(
            "`protocol: h2c` is cleartext HTTP/2 and cannot be used with `tls` \
             (use `h2` for HTTP/2 over TLS)"
                .to_owned(),
        ),
        _ => {}
    }
    let Some(tls) = &u.tls else {
        return problems;
    };
    if let Some(n) = &tls.server_name
        && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
    {
        problems.push(format!(
            "`tls.server_name` `{n}` is not a DNS name or an IP address"
        ));
    }
    if tls.insecure_skip_verify && tls.ca.is_some() {
        problems.push(
            "`tls.insecure_skip_verify` turns certificate verification off, so `tls.ca` \
             would be ignored: remove one of them"
                .to_owned(),
        );
    }
    let mut files = Vec::new();
    files.extend(tls.ca.as_deref().map(|f| ("tls.ca", f)));
    if let Some(cc) = &tls.client_cert {
        files.push(("tls.client_cert.cert", cc.cert.as_str()));
        files.push(("tls.client_cert.key", cc.key.as_str()));
    }
    for (key, f) in files {
        if f.trim().is_empty() {
            problems.push(format!("`{key}` must be a file path, not empty"));
        }
    }
    problems
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// Checks `host:port`: host a DNS name, an IPv4 address or a bracketed IPv6 address;
/// port 1..=65535. Returns why not.
fn check_host_port(s: &str) -> Result<(), String> {
    if s.contains("://") {
        return Err("give no scheme, only `host:port`".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing `]` after the IPv6 address".to_owned())?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "missing `:port` after `]`".to_owned())?;
        (None, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| "missing `:port`".to_owned())?;
        if host.contains(':') {
            return Err("write an IPv6 address in brackets, as `[::1]:80`".into());
        }
        (Some(host), port)
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("port `{port}` must be a number from 1 to 65535")),
    }
    if let Some(host) = host {
        check_host(host)?;
    }
    Ok(())
}

/// A DNS name or an IPv4 address.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return host
            .parse::<Ipv4Addr>()
            .map(drop)
            .map_err(|_| format!("`{host}` is not an IPv4 address"));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!("`{host}` is not a valid host name"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::load::load_str_with;

    /// A valid base config; line numbers below refer to it.
    const BASE: &str = "\
listeners:
  - name: main
    address: 127.0.0.1:8080
upstreams:
  api:
    endpoints: [10.0.0.1:80]
routes:
  - name: r
    upstream: api
";

    fn errors(text: &str) -> Vec<ConfigError> {
        match load_str_with(text, "t.yaml", |_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    }

    #[test]
    fn acme_needs_its_feature_and_valid_domains() {
        let text = "\
listeners:
  - name: main
    address: 127.0.0.1:8443
    tls:
      acme: { directory: \"https://ca.test/dir\", domains: [DOMAIN], storage: acme }
upstreams:
  api:
    endpoints: [10.0.0.1:80]
routes:
  - name: r
    upstream: api
";
        let good = errors(&text.replace("DOMAIN", "a.test"));
        let bad = errors(&text.replace("DOMAIN", "\"*.a.test\""));
        #[cfg(not(feature = "acme"))]
        {
            assert_eq!(good.len(), 1, "{good:#?}");
            assert!(good[0].to_string().contains("--features acme"), "{good:#?}");
            assert_eq!(bad.len(), 1, "{bad:#?}");
        }
        #[cfg(feature = "acme")]
        {
            assert!(good.is_empty(), "{good:#?}");
            assert_eq!(bad.len(), 1, "{bad:#?}");
            assert!(bad[0].to_string().contains("wildcards"), "{bad:#?}");
        }
    }

    /// Asserts exactly one error, on `line`, whose message contains `needle`.
    fn one(text: &str, line: u64, needle: &str) -> ConfigError {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        let e = errs.into_iter().next().unwrap();
        assert_eq!(e.line, line, "{e}");
        assert!(e.message.contains(needle), "{e}");
        e
    }

    #[test]
    fn base_is_valid() {
        assert!(errors(BASE).is_empty(), "{:?}", errors(BASE));
    }

    #[test]
    fn hidden_response_headers_must_be_names() {
        let ok = format!("{BASE}hide_response_headers: [server, x-backend-id]\n");
        assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
        one(
            &format!("{BASE}hide_response_headers: [\"bad name\"]\n"),
            0,
            "not a valid header name",
        );
        one(
            &format!("{BASE}hide_response_headers: [Content-Length]\n"),
            0,
            "frames the response",
        );
    }

    #[test]
    fn no_listeners() {
        one("routes: []\n", 0, "no listeners");
        one("listeners: []\n", 0, "no listeners");
    }

    #[test]
    fn duplicate_listener_names_and_addresses() {
        let text = BASE.replace(
            "upstreams:",
            "  - name: main\n    address: 127.0.0.1:8081\n  - name: other\n    address: 127.0.0.1:8080\nupstreams:",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!(errs[0].line, 4);
        assert!(errs[0].message.contains("duplicate listener name `main`"));
        assert!(errs[0].message.contains("line 2"));
        assert_eq!(errs[1].line, 7);
        assert!(
            errs[1].message.contains("already used by listener `main`"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn listener_address_must_be_socket_addr() {
        let e = one(
            &BASE.replace("127.0.0.1:8080", "localhost:8080"),
            3,
            "must be `ip:port`",
        );
        assert_eq!(e.column, 14);
        one(&BASE.replace("127.0.0.1:8080", "127.0.0.1"), 3, "`ip:port`");
        assert!(errors(&BASE.replace("127.0.0.1:8080", "\"[::1]:0\"")).is_empty());
    }

    #[test]
    fn admin_address_and_token() {
        let with = |admin: &str| format!("{BASE}admin: {admin}\n");
        assert!(errors(&with("{}")).is_empty());
        assert!(errors(&with("{ address: \"127.0.0.1:0\", token: abc.DEF-1 }")).is_empty());
        let e = one(
            &with("{ address: localhost:9901 }"),
            10,
            "must be `ip:port`",
        );
        assert_eq!(e.column, 8);
        one(
            &with("{ address: \"0.0.0.0:8080\" }"),
            10,
            "also the address of listener `main`",
        );
        one(&with("{ token: \"\" }"), 10, "`admin.token` must be");
        one(&with("{ token: \"a b\" }"), 10, "`admin.token` must be");
    }

    #[test]
    fn upstream_needs_endpoints() {
        one(&BASE.replace("[10.0.0.1:80]", "[]"), 6, "has no endpoints");
    }

    #[test]
    fn endpoint_addresses() {
        let ok = [
            "api.internal:80",
            "10.0.0.1:65535",
            "\"[::1]:80\"",
            "a_b.c-d.:8080",
        ];
        for a in ok {
            let text = BASE.replace("[10.0.0.1:80]", &format!("[{a}]"));
            assert!(errors(&text).is_empty(), "{a}: {:?}", errors(&text));
        }
        let bad = [
            ("10.0.0.1", "missing `:port`"),
            ("10.0.0.1:0", "port `0`"),
            ("10.0.0.1:70000", "port `70000`"),
            ("host:http", "port `http`"),
            ("10.0.0.256:80", "not an IPv4"),
            ("-bad.host:80", "not a valid host name"),
            ("\"::1:80\"", "in brackets"),
            ("\"[::1]\"", "missing `:port`"),
            ("\"[zz]:80\"", "not an IPv6"),
            ("\"http://a:80\"", "no scheme"),
            ("\":80\"", "host is empty"),
        ];
        for (a, needle) in bad {
            let text = BASE.replace("[10.0.0.1:80]", &format!("\n      - x\n      - {a}"));
            let text = text.replace("- x\n", "- ok:1\n");
            one(&text, 8, needle);
        }
    }

    #[test]
    fn endpoint_weight() {
        let text = BASE.replace(
            "[10.0.0.1:80]",
            "\n      - { address: a:1, weight: 0 }\n      - { address: b:1, weight: 1000 }\n      - { address: c:1, weight: 1001 }",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!(errs[0].line, 7);
        assert!(errs[0].message.contains("weight 0"));
        assert_eq!(errs[1].line, 9);
        assert!(errs[1].message.contains("weight 1001"));
    }

    #[test]
    fn upstream_timeouts_and_pool() {
        let text = BASE.replace(
            "[10.0.0.1:80]",
            "[10.0.0.1:80]\n    timeouts: { connect: 0s, request: 0ms }\n    pool: { max_idle: 0 }",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs.iter().all(|e| e.line == 6), "{errs:#?}");
        assert!(errs[0].message.contains("timeouts.connect"));
        assert!(errs[1].message.contains("timeouts.request"));
    }

    #[test]
    fn pool_max_connections_is_capped() {
        let pool = |n: &str| {
            BASE.replace(
                "[10.0.0.1:80]",
                &format!("[10.0.0.1:80]\n    pool: {{ max_connections: {n} }}"),
            )
        };
        let e = one(
            &pool("1000001"),
            6,
            "upstream `api`: `pool.max_connections` must be at most 1000000 (0 for no cap), \
             got 1000001",
        );
        assert_eq!(e.column, 5);
        // Far beyond what tokio's semaphore takes: an error, not a panic later.
        one(&pool(&usize::MAX.to_string()), 6, "`pool.max_connections`");
        for ok in ["0", "1", "1000000"] {
            assert!(
                errors(&pool(ok)).is_empty(),
                "{ok}: {:?}",
                errors(&pool(ok))
            );
        }
    }

    #[test]
    fn upstream_hash_header_and_fixed_host() {
        let text = BASE.replace(
            "[10.0.0.1:80]",
            "[10.0.0.1:80]\n    balance: { consistent_hash: { header: \"bad header\" } }\n    host: { fixed: \"a\\nb\" }",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].message.contains("hash header"));
        assert!(errs[1].message.contains("not a valid header value"));
    }

    #[test]
    fn health_check_settings() {
        let hc = |settings: &str| {
            BASE.replace(
                "[10.0.0.1:80]",
                &format!("[10.0.0.1:80]\n    health_check: {{ {settings} }}"),
            )
        };
        let text = hc(
            "interval: 0s, timeout: 0ms, healthy_threshold: 0, unhealthy_threshold: 0, \
                       path: healthz, method: \"GE T\", host: \"a b\", expected_statuses: []",
        );
        let errs = errors(&text);
        let expected = [
            "`health_check.interval` must be greater than 0",
            "`health_check.timeout` must be greater than 0",
            "`health_check.healthy_threshold` must be at least 1",
            "`health_check.unhealthy_threshold` must be at least 1",
            "`health_check.path` `healthz` must be an absolute path",
            "`health_check.method` `GE T` is not a valid HTTP method",
            "`health_check.host` `a b` is not a valid host",
            "`health_check.expected_statuses` must list at least one",
        ];
        assert_eq!(errs.len(), expected.len(), "{errs:#?}");
        for (e, want) in errs.iter().zip(expected) {
            assert_eq!((e.line, e.column), (6, 5), "{e}");
            assert!(e.message.starts_with("upstream `api`: "), "{e}");
            assert!(e.message.contains(want), "{e} lacks {want}");
        }
        for ok in [
            "type: tcp",
            "type: grpc, grpc_service: pkg.Svc",
            "path: \"/healthz?full=1\", method: HEAD, host: \"api.internal:8080\", \
             expected_statuses: [200-299, 418]",
        ] {
            assert!(errors(&hc(ok)).is_empty(), "{ok}: {:?}", errors(&hc(ok)));
        }
    }

    #[test]
    fn duplicate_route_names() {
        let text = format!("{BASE}  - name: r\n    upstream: api\n");
        let e = one(&text, 10, "duplicate route name `r`");
        assert_eq!(e.column, 11);
    }

    #[test]
    fn route_listeners_must_exist() {
        let text = BASE.replace(
            "    upstream: api",
            "    listeners: [main, nope]\n    upstream: api",
        );
        one(
            &text,
            9,
            "route `r` names listener `nope`, which is not defined; defined: main",
        );
    }

    #[test]
    fn route_needs_exactly_one_action() {
        let none = BASE.replace("    upstream: api\n", "    match: { path: /x }\n");
        one(
            &none,
            8,
            "route `r` needs exactly one of upstream, redirect, respond",
        );
        let two = BASE.replace("    upstream: api", "    upstream: api\n    respond: {}");
        one(&two, 8, "needs exactly one of");
    }

    #[test]
    fn route_upstream_must_exist() {
        let text = BASE.replace("    upstream: api", "    upstream: apj");
        let e = one(&text, 9, "");
        assert_eq!(
            e.message,
            "route `r` names upstream `apj`, which is not defined; defined: api"
        );
        assert_eq!(e.column, 15);
    }

    #[test]
    fn redirect_status() {
        let text = BASE.replace(
            "    upstream: api",
            "    redirect: { location: /y, status: 300 }",
        );
        one(&text, 8, "redirect status 300");
        let text = BASE.replace(
            "    upstream: api",
            "    redirect: { location: /y, status: 308 }",
        );
        assert!(errors(&text).is_empty());
    }

    #[test]
    fn respond_status_and_headers() {
        let text = BASE.replace("    upstream: api", "    respond: { status: 600 }");
        one(&text, 8, "respond status 600");
        let text = BASE.replace("    upstream: api", "    respond: { status: 99 }");
        one(&text, 8, "respond status 99");
        // 1xx is not a final answer.
        for status in [100, 101, 103, 199] {
            let text = BASE.replace(
                "    upstream: api",
                &format!("    respond: {{ status: {status} }}"),
            );
            let e = one(
                &text,
                8,
                &format!("respond status {status} must be between 200 and 599"),
            );
            assert_eq!(e.column, 5, "{e}");
        }
        for status in [200, 204, 599] {
            let text = BASE.replace(
                "    upstream: api",
                &format!("    respond: {{ status: {status} }}"),
            );
            assert!(errors(&text).is_empty(), "{status}: {:?}", errors(&text));
        }
        let text = BASE.replace(
            "    upstream: api",
            "    respond: { headers: { \"bad name\": x, ok: \"a\\u0001b\" } }",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].message.contains("header name `bad name`"));
        assert!(errs[1].message.contains("header `ok` has an invalid value"));
        assert!(errs.iter().all(|e| e.line == 8));
    }

    #[test]
    fn respond_headers_must_not_frame_the_response() {
        for name in [
            "content-length",
            "Content-Length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "upgrade",
            "TE",
            "trailer",
            "proxy-connection",
        ] {
            let text = BASE.replace(
                "    upstream: api",
                &format!("    respond: {{ headers: {{ {name}: \"1\" }} }}"),
            );
            let e = one(
                &text,
                8,
                &format!("route `r`: respond header `{name}` may not be set"),
            );
            assert_eq!(e.column, 5, "{e}");
        }
        let text = BASE.replace(
            "    upstream: api",
            "    respond: { headers: { content-type: text/plain, x-length: \"1\", trailers: x } }",
        );
        assert!(errors(&text).is_empty(), "{:?}", errors(&text));
        // Every offending header is named.
        let text = BASE.replace(
            "    upstream: api",
            "    respond: { headers: { content-length: \"3\", connection: close } }",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].message.contains("`connection`"), "{}", errs[0]);
        assert!(errs[1].message.contains("`content-length`"), "{}", errs[1]);
    }

    #[test]
    fn rewrite_rules() {
        let text = BASE.replace(
            "    upstream: api",
            "    respond: {}\n    rewrite: { host: x }",
        );
        one(&text, 8, "only allowed with `upstream`");
        let text = BASE.replace(
            "    upstream: api",
            "    upstream: api\n    rewrite: { strip_prefix: /a, path: /b }",
        );
        one(&text, 8, "cannot both be set");
        let text = BASE.replace(
            "    upstream: api",
            "    upstream: api\n    rewrite: { host: \"a\\nb\" }",
        );
        one(&text, 8, "`rewrite.host`");
    }

    #[test]
    fn trusted_proxies() {
        let text = format!(
            "forwarding:\n  trusted_proxies:\n    - 10.0.0.0/8\n    - \"::1\"\n    - 10.0.0.0/33\n    - proxy.local\n{BASE}"
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!((errs[0].line, errs[0].column), (5, 7));
        assert!(errs[0].message.contains("`10.0.0.0/33`"));
        assert_eq!(errs[1].line, 6);
    }

    #[test]
    fn global_settings() {
        let text = format!(
            "workers: 0\naccess_log: {{ buffer: 0 }}\nrequest_id: {{ header: \"x id\" }}\nlimits: {{ max_uri_length: 0, max_header_bytes: 0, max_headers: 0, header_read_timeout: 0s, max_concurrent_streams: 0 }}\n{BASE}"
        );
        let errs = errors(&text);
        let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 8, "{msgs:#?}");
        for needle in [
            "`workers`",
            "`access_log.buffer`",
            "`request_id.header`",
            "`limits.max_uri_length`",
            "`limits.max_header_bytes`",
            "`limits.max_headers`",
            "`limits.header_read_timeout`",
            "`limits.max_concurrent_streams`",
        ] {
            assert!(
                msgs.iter().any(|m| m.contains(needle)),
                "{needle}: {msgs:#?}"
            );
        }
        let e = one(
            &format!("access_log: {{ buffer: 1000001 }}\n{BASE}"),
            0,
            "`access_log.buffer` must be at most 1000000 lines, got 1000001",
        );
        assert_eq!(e.to_string(), format!("t.yaml:0:0: {}", e.message));
        let text = format!("access_log: {{ buffer: {} }}\n{BASE}", usize::MAX);
        one(&text, 0, "`access_log.buffer` must be at most");
        let text = format!("access_log: {{ buffer: 1000000 }}\n{BASE}");
        assert!(errors(&text).is_empty(), "{:?}", errors(&text));
        for taken in ["Host", "content-length", "X-Forwarded-For", "traceparent"] {
            one(
                &format!("request_id: {{ header: {taken} }}\n{BASE}"),
                0,
                "is a field the gateway sets or removes itself",
            );
        }
        let text = format!("request_id: {{ header: x-correlation-id }}\n{BASE}");
        assert!(errors(&text).is_empty(), "{:?}", errors(&text));
        let text = format!("workers: 1025\n{BASE}");
        one(&text, 0, "between 1 and 1024, got 1025");
        let text = format!("workers: 1024\n{BASE}");
        assert!(errors(&text).is_empty());
    }

    #[test]
    fn api_references_must_exist() {
        let text = r#"listeners: [{ name: a, address: "127.0.0.1:1" }]
consumers: [{ name: app, groups: [apps] }]
auth_providers: { keys: { api_key: {} } }
rate_limits: { shared: { rate: 1/s, store: redis } }
routes:
  - name: r
    auth: { providers: [keys, nope] }
    authorize: { consumers: [app, ghost], groups: [apps, staff] }
    rate_limit: [shared, missing, { rate: 2/s, store: redis }]
    respond: { status: 204 }
"#;
        let e: Vec<String> = errors(text).iter().map(ToString::to_string).collect();
        let has = |needle: &str| e.iter().any(|m| m.contains(needle));
        assert!(
            has("t.yaml:4:24: rate limit `shared`: `store: redis` needs a top-level `redis`"),
            "{e:?}"
        );
        assert!(
            has("t.yaml:7:31: route `r` names auth provider `nope`"),
            "{e:?}"
        );
        assert!(has("`authorize.consumers` names `ghost`"), "{e:?}");
        assert!(
            has("`authorize.groups` names `staff`, which no consumer is in"),
            "{e:?}"
        );
        assert!(has("route `r` names rate limit `missing`"), "{e:?}");
        assert_eq!(
            e.iter()
                .filter(|m| m.contains("needs a top-level `redis`"))
                .count(),
            2,
            "{e:?}"
        );
        assert_eq!(e.len(), 6, "{e:?}");
    }

    #[test]
    fn all_errors_are_collected_in_order() {
        let text = "\
listeners:
  - name: a
    address: nope
routes:
  - name: r1
    upstream: missing
  - name: r2
";
        let errs = errors(text);
        let lines: Vec<u64> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 6, 7], "{errs:#?}");
        assert!(errs[1].message.ends_with("defined: (none)"));
    }
}
