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
use crate::observe::AccessLog;
use crate::proxy::headers::TrustedProxies;
use crate::routing::{RouteSpec, Router, Template};
use crate::upstream::Upstream;

/// What a route does once matched.
pub enum Action {
    /// Forward to an upstream.
    Proxy(Arc<Upstream>),
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
}

/// A listener as the snapshot sees it.
pub struct Listener {
    /// Its name.
    pub name: Arc<str>,
    /// Its bind address.
    pub address: SocketAddr,
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
    /// Header carrying the request id.
    pub request_id_header: HeaderName,
    /// Keep a client's request id.
    pub trust_request_id: bool,
    /// Peers trusted to set X-Forwarded-*.
    pub trusted_proxies: TrustedProxies,
    /// Write `Forwarded` too.
    pub forwarded_header: bool,
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
    let mut errors = Vec::new();

    let mut upstreams = BTreeMap::new();
    for (name, up) in &cfg.upstreams {
        let reused = previous
            .and_then(|p| p.upstreams.get(name))
            .filter(|old| same_definition(&old.config, &up.value));
        let compiled = match reused {
            Some(old) => old.clone(),
            None => Arc::new(Upstream::new(name, &up.value, workers)),
        };
        upstreams.insert(name.clone(), compiled);
    }

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
        let captures = |p: &str| {
            listeners
                .iter()
                .find_map(|l: &Listener| l.router.param_names(index))
                .is_some_and(|mut names| names.any(|n| n == p))
        };
        match compile_route(&r.value, &upstreams, captures) {
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

    let access_log = if !cfg.access_log.enabled {
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

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Gateway {
        workers,
        listeners: listeners.into(),
        routes: routes.into(),
        upstreams,
        access_log,
        request_id_header,
        trust_request_id: cfg.request_id.trust_incoming,
        trusted_proxies,
        forwarded_header: cfg.forwarding.forwarded_header,
        config: cfg,
    })
}

/// Whether two upstream definitions are the same, ignoring where they were written.
fn same_definition<T: serde::Serialize>(a: &T, b: &T) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn compile_route(
    r: &RouteConfig,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    captures: impl Fn(&str) -> bool,
) -> Result<Route, String> {
    let name = r.name.value.as_str();
    let mut filters = Vec::new();
    if let Some(rw) = &r.rewrite {
        filters.push(Filter::Rewrite(
            crate::filters::rewrite::Rewrite::compile(rw, captures)
                .map_err(|e| format!("route `{name}`: {e}"))?,
        ));
    }
    filters::order(&mut filters);

    let action = match (&r.upstream, &r.redirect, &r.respond) {
        (Some(u), None, None) => {
            Action::Proxy(upstreams.get(&u.value).cloned().ok_or_else(|| {
                format!(
                    "route `{name}` names upstream `{}`, which is not defined",
                    u.value
                )
            })?)
        }
        (None, Some(rd), None) => Action::Redirect {
            location: Template::parse(&rd.location)
                .map_err(|e| format!("route `{name}`: redirect location: {e}"))?,
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
    })
}
