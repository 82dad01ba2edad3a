//! Compiles a [`Config`] into the immutable [`Gateway`] snapshot that every
//! request reads, carrying stateful parts (upstream pools, the access log
//! writer) over from the previous snapshot when their definition is unchanged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::config::{Config, ConfigError, ConfigErrors, RouteConfig};
use crate::filters::{self, Filter};
use crate::observe::metrics::{Metrics, RouteMetrics};
use crate::observe::{AccessLog, SpanExporter};
use crate::proxy::headers::TrustedProxies;
use crate::proxy::retry::RetryPolicy;
use crate::routing::{RouteSpec, Router, Template};
use crate::upstream::Upstream;

/// What a route does once matched.
pub enum Action {
    /// Forward to an upstream.
    Proxy {
        /// Where to.
        upstream: Arc<Upstream>,
        /// The route's retry policy.
        retry: Option<RetryPolicy>,
    },
    /// Answer with a redirect.
    Redirect {
        /// Location template.
        location: Template,
        /// 3xx status.
        status: StatusCode,
    },
    /// Answer directly.
    Respond {
        /// Status.
        status: StatusCode,
        /// Headers.
        headers: HeaderMap,
        /// Body.
        body: Bytes,
    },
}

/// A compiled route.
pub struct Route {
    /// Its name.
    pub name: Arc<str>,
    /// Its filters, in phase order.
    pub filters: Box<[Filter]>,
    /// What it does.
    pub action: Action,
    /// Its request counters and duration histogram.
    pub metrics: Arc<RouteMetrics>,
    /// Its own request body limit, over `limits.max_body_size` (0: none).
    pub max_body_size: Option<u64>,
}

/// A listener as the snapshot sees it.
pub struct Listener {
    /// Its name.
    pub name: Arc<str>,
    /// Its bind address.
    pub address: SocketAddr,
    /// TLS termination, when configured.
    pub tls: Option<Arc<crate::tls::TlsListener>>,
    /// Redirect every request to HTTPS, when configured (plain listeners).
    pub redirect_https: Option<crate::config::RedirectHttps>,
    router: Router,
}

/// The compiled config: immutable, shared by all workers, swapped whole on reload.
pub struct Gateway {
    /// The config it was compiled from.
    pub config: Config,
    /// Worker count (fixed for the life of the process).
    pub workers: usize,
    /// Listeners with their routers.
    pub listeners: Box<[Listener]>,
    /// Routes, in config order.
    pub routes: Box<[Route]>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Access log writer, when enabled.
    pub access_log: Option<AccessLog>,
    /// OTLP span exporter, when `tracing.otlp` is set.
    pub spans: Option<SpanExporter>,
    /// Header carrying the request id.
    pub request_id_header: HeaderName,
    /// Keep a client's request id.
    pub trust_request_id: bool,
    /// Peers trusted to set X-Forwarded-*.
    pub trusted_proxies: TrustedProxies,
    /// Write `Forwarded` too.
    pub forwarded_header: bool,
    /// Upstream response headers removed before the client sees them
    /// (`hide_response_headers`).
    pub hidden_response_headers: Box<[HeaderName]>,
    /// Some listener forwards verified client certificates in headers: then
    /// every request on every listener has client-sent ones removed, since
    /// routes serve all listeners unless told otherwise.
    pub client_cert_headers: bool,
    /// Consumers and authentication providers.
    pub auth: crate::auth::AuthState,
    /// Rate and concurrency limits, and the Redis store.
    pub limits: crate::ratelimit::LimitState,
    /// The metric families. One set per process: each snapshot takes it from
    /// the one it replaces, so series outlive reloads without global state
    /// (and `portico check` or a test compiles with a set of its own).
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    /// The router of a listener.
    pub fn router(&self, listener: &str) -> Option<&Router> {
        self.listeners
            .iter()
            .find(|l| &*l.name == listener)
            .map(|l| &l.router)
    }
}

/// Compiles `cfg` (already validated) into a snapshot. `previous` lends the
/// parts whose definitions did not change.
pub fn compile(
    cfg: Config,
    file: &str,
    workers: usize,
    previous: Option<&Gateway>,
) -> Result<Gateway, ConfigErrors> {
    build(cfg, file, workers, previous, AccessLogMode::Start)
}

/// Compiles `cfg` like [`compile`], for `portico check`: without side effects.
/// The access log is not opened and its writer not started (the snapshot has
/// none); a file target only needs an existing folder.
pub fn check(cfg: Config, file: &str, workers: usize) -> Result<Gateway, ConfigErrors> {
    build(cfg, file, workers, None, AccessLogMode::Verify)
}

/// What compiling does with the access log (and the span exporter).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AccessLogMode {
    /// Open the target and start the writer (or keep the previous one); the
    /// same for the span exporter.
    Start,
    /// Only check that a file target's folder exists; start no exporter.
    Verify,
}

fn build(
    cfg: Config,
    file: &str,
    workers: usize,
    previous: Option<&Gateway>,
    log_mode: AccessLogMode,
) -> Result<Gateway, ConfigErrors> {
    let mut errors = Vec::new();
    let metrics = previous.map_or_else(Arc::default, |p| p.metrics.clone());

    let mut upstreams = BTreeMap::new();
    for (name, up) in &cfg.upstreams {
        let reused = previous
            .and_then(|p| p.upstreams.get(name))
            .filter(|old| same_definition(&old.config, &up.value));
        let compiled = match reused {
            Some(old) => old.clone(),
            None => Arc::new(Upstream::new(name, &up.value, workers)),
        };
        // Compiled again even for a kept upstream: its certificate files may
        // have been renewed. A failure leaves the running snapshot as it is.
        match crate::upstream::tls::TlsClient::compile(name, &up.value, file) {
            Ok(tls) => compiled.set_tls(tls),
            Err(msg) => errors.push(ConfigError::at(file, &up.referenced, msg)),
        }
        upstreams.insert(name.clone(), compiled);
    }

    let auth = crate::auth::AuthState::compile(&cfg, file, previous.map(|p| &p.auth), &metrics)
        .unwrap_or_else(|e| {
            errors.extend(e);
            crate::auth::AuthState::default()
        });
    let limits =
        crate::ratelimit::LimitState::compile(&cfg, file, previous.map(|p| &p.limits), &metrics)
            .unwrap_or_else(|e| {
                errors.extend(e);
                crate::ratelimit::LimitState::default()
            });

    let mut listeners = Vec::with_capacity(cfg.listeners.len());
    for l in &cfg.listeners {
        let specs: Vec<RouteSpec<'_>> = cfg
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.value.listeners.is_empty()
                    || r.value.listeners.iter().any(|n| n.value == l.name.value)
            })
            .map(|(index, r)| RouteSpec {
                index,
                name: &r.value.name.value,
                matcher: &r.value.matcher,
                priority: r.value.priority,
            })
            .collect();
        let router = match Router::build(&specs) {
            Ok(r) => r,
            Err(errs) => {
                for e in errs {
                    let err = ConfigError::at(file, &cfg.routes[e.index].referenced, e.message);
                    if !errors
                        .iter()
                        .any(|x: &ConfigError| x.to_string() == err.to_string())
                    {
                        errors.push(err);
                    }
                }
                continue;
            }
        };
        match l.address.value.parse() {
            Ok(address) => listeners.push(Listener {
                name: l.name.value.as_str().into(),
                address,
                tls: compile_tls(l, file, &mut errors),
                redirect_https: l.redirect_https.clone(),
                router,
            }),
            Err(_) => errors.push(ConfigError::at(
                file,
                &l.address.referenced,
                format!("`{}` is not an ip:port address", l.address.value),
            )),
        }
    }

    let mut routes = Vec::with_capacity(cfg.routes.len());
    for (index, r) in cfg.routes.iter().enumerate() {
        // `None` when no router holds the route (its listener's router failed,
        // already reported): its templates cannot be checked against the path.
        let params: Option<Vec<&str>> = listeners
            .iter()
            .find_map(|l: &Listener| l.router.param_names(index))
            .map(Iterator::collect);
        let api = Api {
            auth: &auth,
            limits: &limits,
            metrics: &metrics,
        };
        match compile_route(&r.value, &upstreams, params.as_deref(), &api) {
            Ok(route) => routes.push(route),
            Err(msg) => errors.push(ConfigError::at(file, &r.referenced, msg)),
        }
    }

    let trusted_proxies = match TrustedProxies::parse(
        cfg.forwarding
            .trusted_proxies
            .iter()
            .map(|s| s.value.as_str()),
    ) {
        Ok(t) => t,
        Err(msg) => {
            let loc = &cfg.forwarding.trusted_proxies[0].referenced;
            errors.push(ConfigError::at(file, loc, msg));
            TrustedProxies::default()
        }
    };
    let request_id_header = HeaderName::from_bytes(cfg.request_id.header.as_bytes())
        .unwrap_or_else(|_| HeaderName::from_static("x-request-id"));
    // Names were validated; an invalid one cannot get here.
    let hidden_response_headers = cfg
        .hide_response_headers
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();

    let access_log = if !cfg.access_log.enabled {
        None
    } else if log_mode == AccessLogMode::Verify {
        if let Err(reason) = verify_access_log_target(&cfg.access_log.target) {
            errors.push(ConfigError {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message: format!(
                    "cannot open access log `{}`: {reason}",
                    cfg.access_log.target
                ),
            });
        }
        None
    } else if let Some(prev) = previous
        .filter(|p| p.config.access_log == cfg.access_log)
        .and_then(|p| p.access_log.clone())
    {
        Some(prev)
    } else {
        match AccessLog::start(&cfg.access_log) {
            Ok(log) => Some(log),
            Err(e) => {
                errors.push(ConfigError {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("cannot open access log `{}`: {e}", cfg.access_log.target),
                });
                None
            }
        }
    };

    // Like the access log: started only to run, kept while its settings stay.
    let spans = match &cfg.tracing.otlp {
        Some(otlp) if log_mode == AccessLogMode::Start => {
            let kept = previous
                .filter(|p| p.config.tracing.otlp == cfg.tracing.otlp)
                .and_then(|p| p.spans.clone());
            match kept.map_or_else(|| SpanExporter::start(otlp), Ok) {
                Ok(spans) => Some(spans),
                Err(e) => {
                    errors.push(ConfigError::new(
                        file,
                        0,
                        0,
                        format!("cannot start span export to `{}`: {e}", otlp.endpoint),
                    ));
                    None
                }
            }
        }
        _ => None,
    };

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Gateway {
        workers,
        listeners: listeners.into(),
        routes: routes.into(),
        upstreams,
        access_log,
        spans,
        request_id_header,
        trust_request_id: cfg.request_id.trust_incoming,
        trusted_proxies,
        forwarded_header: cfg.forwarding.forwarded_header,
        hidden_response_headers,
        client_cert_headers: cfg.listeners.iter().any(|l| {
            l.tls
                .as_ref()
                .and_then(|t| t.value.client_auth.as_ref())
                .is_some_and(|c| c.forward_headers)
        }),
        metrics,
        auth,
        limits,
        config: cfg,
    })
}

/// What routes' API-management filters are compiled against.
struct Api<'a> {
    auth: &'a crate::auth::AuthState,
    limits: &'a crate::ratelimit::LimitState,
    metrics: &'a Metrics,
}

/// Loads a listener's certificates (relative paths against the config
/// file's folder); a file that does not load is an error at `tls:`.
fn compile_tls(
    l: &crate::config::ListenerConfig,
    file: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<crate::tls::TlsListener>> {
    let tls = l.tls.as_ref()?;
    match crate::tls::TlsListener::build(&tls.value, &crate::tls::config_dir(file)) {
        Ok(t) => Some(Arc::new(t)),
        Err(msg) => {
            errors.push(ConfigError::at(
                file,
                &tls.referenced,
                format!("listener `{}`: {msg}", l.name.value),
            ));
            None
        }
    }
}

/// What `portico check` verifies of an access log target without opening it:
/// a file path must not be a folder, and its folder must exist.
fn verify_access_log_target(target: &str) -> Result<(), String> {
    if matches!(target, "stdout" | "stderr") {
        return Ok(());
    }
    let path = std::path::Path::new(target);
    if path.is_dir() {
        return Err("it is a folder".into());
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(format!("folder `{}` does not exist", dir.display())),
        _ => Ok(()),
    }
}

/// Whether two upstream definitions are the same, ignoring where they were written.
fn same_definition<T: serde::Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Placeholders a redirect location always has; route parameters of the same
/// name would be hidden by them.
const REDIRECT_BUILTINS: [&str; 3] = ["path", "query", "host"];

/// Checks that every placeholder of a redirect location is a built-in or a
/// parameter the route's path captures, and that no parameter is hidden by a
/// built-in.
fn check_redirect(location: &Template, params: &[&str]) -> Result<(), String> {
    if let Some(hidden) = params.iter().find(|p| REDIRECT_BUILTINS.contains(p)) {
        return Err(format!(
            "match.path parameter `{{{hidden}}}` is hidden by the redirect placeholder `{{{hidden}}}` (the request's {hidden}); rename the parameter"
        ));
    }
    let Some(unknown) = location
        .names()
        .find(|n| !REDIRECT_BUILTINS.contains(n) && !params.contains(n))
    else {
        return Ok(());
    };
    let captured = if params.is_empty() {
        "match.path captures no parameter".to_owned()
    } else {
        let names: Vec<String> = params.iter().map(|p| format!("`{{{p}}}`")).collect();
        format!("match.path captures {}", names.join(", "))
    };
    Err(format!(
        "redirect location uses `{{{unknown}}}`, which is not `{{path}}`, `{{query}}`, `{{host}}` or a parameter of the route ({captured})"
    ))
}

/// Compiles one route's filters and action. `params` are the parameters its
/// path captures, `None` when unknown (its matcher failed to compile), in which
/// case templates are not checked against them.
fn compile_route(
    r: &RouteConfig,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    params: Option<&[&str]>,
    api: &Api<'_>,
) -> Result<Route, String> {
    let name = r.name.value.as_str();
    let captures = |p: &str| params.is_none_or(|names| names.contains(&p));
    let mut filters = Vec::new();
    let in_route = |e: String| format!("route `{name}`: {e}");
    if let Some(ip) = &r.ip_rules {
        filters.push(Filter::IpRules(
            crate::auth::ip_rules::IpRules::compile(ip).map_err(in_route)?,
        ));
    }
    let mut challenges = Vec::new();
    if let Some(auth) = &r.auth {
        let f = crate::auth::AuthFilter::compile(name, &auth.value, api.auth, api.metrics)
            .map_err(in_route)?;
        challenges = f.challenges();
        filters.push(Filter::Auth(f));
    }
    if let Some(authz) = &r.authorize {
        filters.push(Filter::Authorize(
            crate::auth::authorize::Authorize::compile(authz, challenges)
                .map_err(in_route)?
                .counted(name, api.metrics),
        ));
    }
    for before_auth in [true, false] {
        let limits = crate::ratelimit::RateLimitFilter::compile(
            name,
            &r.rate_limit,
            api.limits,
            before_auth,
        )
        .map_err(in_route)?;
        filters.extend(limits.map(Filter::RateLimit));
    }
    if let Some(rw) = &r.rewrite {
        filters.push(Filter::Rewrite(
            crate::filters::rewrite::Rewrite::compile(rw, captures)
                .map_err(|e| format!("route `{name}`: {e}"))?,
        ));
    }
    filters::order(&mut filters);

    let action = match (&r.upstream, &r.redirect, &r.respond) {
        (Some(u), None, None) => Action::Proxy {
            upstream: upstreams.get(&u.value).cloned().ok_or_else(|| {
                format!(
                    "route `{name}` names upstream `{}`, which is not defined",
                    u.value
                )
            })?,
            retry: r.retry.as_ref().map(RetryPolicy::new),
        },
        (None, Some(rd), None) => Action::Redirect {
            location: Template::parse(&rd.location)
                .map_err(|e| format!("redirect location: {e}"))
                .and_then(|t| match params {
                    Some(params) => check_redirect(&t, params).map(|()| t),
                    None => Ok(t),
                })
                .map_err(|e| format!("route `{name}`: {e}"))?,
            status: StatusCode::from_u16(rd.status)
                .ok()
                .filter(StatusCode::is_redirection)
                .ok_or_else(|| {
                    format!("route `{name}`: redirect status {} is not 3xx", rd.status)
                })?,
        },
        (None, None, Some(rs)) => {
            let mut headers = HeaderMap::new();
            for (k, v) in &rs.headers {
                let k = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("route `{name}`: `{k}` is not a header name"))?;
                let v = HeaderValue::from_str(v)
                    .map_err(|_| format!("route `{name}`: header `{k}` has an invalid value"))?;
                headers.append(k, v);
            }
            Action::Respond {
                status: StatusCode::from_u16(rs.status)
                    .map_err(|_| format!("route `{name}`: {} is not a status code", rs.status))?,
                headers,
                body: Bytes::from(rs.body.clone()),
            }
        }
        _ => {
            return Err(format!(
                "route `{name}` needs exactly one of upstream, redirect, respond"
            ));
        }
    };
    Ok(Route {
        name: name.into(),
        filters: filters.into(),
        action,
        metrics: api.metrics.route(name),
        max_body_size: r.max_body_size.map(|s| s.0),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Compiles a config with one listener; the errors as text, or `None`.
    fn errors(routes: &str) -> Option<String> {
        let yaml = format!(
            "access_log: {{ enabled: false }}\nlisteners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nroutes:\n{routes}"
        );
        let cfg = crate::config::load_str(&yaml, "t.yaml").unwrap();
        check(cfg, "t.yaml", 1).err().map(|e| e.to_string())
    }

    #[test]
    fn redirect_placeholders_must_be_built_ins_or_route_params() {
        let ok = "  - name: r\n    match: { path: \"/u/{id}/{*rest}\" }\n    redirect: { location: \"https://{host}/v2/{id}/{rest}{query}?from={path}\" }\n";
        assert_eq!(errors(ok), None);

        let unknown = "  - name: r\n    match: { path: \"/u/{id}\" }\n    redirect: { location: \"/v2/{ident}\" }\n";
        let e = errors(unknown).unwrap();
        assert!(e.starts_with("t.yaml:4:5: route `r`: "), "{e}");
        assert!(e.contains("uses `{ident}`"), "{e}");
        assert!(e.contains("match.path captures `{id}`"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");

        let no_params =
            "  - name: r\n    match: { prefix: /old }\n    redirect: { location: \"/new/{id}\" }\n";
        let e = errors(no_params).unwrap();
        assert!(e.contains("uses `{id}`"), "{e}");
        assert!(e.contains("captures no parameter"), "{e}");
    }

    #[test]
    fn route_params_hidden_by_redirect_built_ins_are_errors() {
        for name in REDIRECT_BUILTINS {
            let route = format!(
                "  - name: r\n    match: {{ path: \"/a/{{{name}}}\" }}\n    redirect: {{ location: \"/b\" }}\n"
            );
            let e = errors(&route).unwrap();
            assert!(
                e.contains(&format!("parameter `{{{name}}}` is hidden")),
                "{e}"
            );
        }
        // Outside redirects, such names are fine.
        let respond =
            "  - name: r\n    match: { path: \"/a/{host}\" }\n    respond: { status: 204 }\n";
        assert_eq!(errors(respond), None);
    }

    #[test]
    fn templates_of_a_route_whose_matcher_failed_are_not_checked() {
        let routes = "  - name: bad\n    match: { regex: \"(\" }\n    respond: { status: 204 }\n  - name: r\n    match: { path: \"/u/{id}\" }\n    redirect: { location: \"/v/{id}\" }\n";
        let e = errors(routes).unwrap();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("route `bad`: match.regex"), "{e}");
    }

    #[test]
    fn check_does_not_open_the_access_log() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("access.log");
        let yaml = format!(
            "access_log: {{ target: \"{}\" }}\nlisteners: [{{ name: main, address: \"127.0.0.1:0\" }}]\n",
            target.display()
        );
        let gw = check(
            crate::config::load_str(&yaml, "t.yaml").unwrap(),
            "t.yaml",
            1,
        )
        .unwrap();
        assert!(gw.access_log.is_none());
        assert!(!target.exists());

        let missing = dir.path().join("missing").join("access.log");
        let yaml = yaml.replace(
            &target.display().to_string(),
            &missing.display().to_string(),
        );
        let e = check(
            crate::config::load_str(&yaml, "t.yaml").unwrap(),
            "t.yaml",
            1,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
