//! Route selection: which route serves a request.
//!
//! # Matching
//!
//! A route matches when every condition it gives holds:
//!
//! - `host`: one of the listed hosts. Exact hosts compare case-insensitively (a
//!   trailing `.` is ignored). `*.example.com` matches one or more labels before
//!   `example.com` (`a.example.com`, `a.b.example.com`), never the bare
//!   `example.com`. The port is not part of the host.
//! - `path`: the exact path; or, when it contains `{name}` segments and an
//!   optional final `{*rest}`, a template whose parameters are captured
//!   (`{*rest}` needs at least one character); or, when it ends in `/*`, a
//!   prefix (`/api/*` is `prefix: /api`).
//! - `prefix`: the path is the prefix or continues it with `/`: `/api` matches
//!   `/api`, `/api/` and `/api/x`, not `/apix`. Trailing `/` of the prefix are
//!   ignored, and `/` matches every path.
//! - `regex`: the regular expression matches the whole path.
//! - At most one of `path`, `prefix` and `regex` may be given. Paths are
//!   compared as received, without percent-decoding.
//! - `methods`: the method is one of the list (case-sensitive tokens).
//! - `headers`: for each entry, the header (name case-insensitive) is present;
//!   with `value`, one of its field values equals it exactly (case-sensitive);
//!   with `regex`, one of its field values matches it in full.
//! - `query`: for each entry, the parameter is present in the query string
//!   (`?debug` counts); with `value` or `regex`, one of its occurrences equals it
//!   or matches it in full. Names and values are percent-decoded (`+` is a
//!   space) before comparison; names are case-sensitive.
//!
//! # Priority
//!
//! When several routes match, the first in this order wins. The order is fixed
//! when the configuration is loaded:
//!
//! 1. **Priority**: higher `priority` first; a route without one counts as `0`
//!    (so a negative priority ranks below routes that give none).
//! 2. **Host**: a route naming the request's host exactly, then a wildcard host
//!    (a longer suffix first: `*.api.example.com` before `*.example.com`), then a
//!    route without `host`. A route listing several hosts ranks by the best
//!    entry that matches the request's host.
//! 3. **Path**: an exact `path`; then a template `path` (more literal
//!    characters first, then more segments, then one without a catch-all); then
//!    a `prefix` or `/*` path (longer prefix first); then a `regex`; then a route
//!    without a path condition (`prefix: /` and `path: /*` count as none).
//! 4. **Conditions**: more conditions first, counting a `methods` list as one
//!    and each `headers` and `query` entry as one.
//! 5. **Declaration order**: the route written first wins.
//!
//! Two routes with the same matcher (same hosts, path condition, methods,
//! headers and query entries, each taken as a set) and the same priority are
//! rejected: the later one could never be chosen. Template parameter names do
//! not count: `/u/{id}` and `/u/{name}` are the same matcher.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Method};

use super::matcher::{
    HeaderCond, HostPattern, PathMatcher, QueryCond, TemplateInfo, analyse_template,
    compile_path_regex, compile_template, one_line, parse_method, wildcard_matches,
};
use crate::config::schema::{MatchConfig, ValueMatch};

/// One route handed to [`Router::build`].
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec<'a> {
    /// Caller's identifier, returned in [`RouteMatch::index`] and [`BuildError::index`].
    pub index: usize,
    /// The route's name, used in error messages.
    pub name: &'a str,
    /// What the request must look like.
    pub matcher: &'a MatchConfig,
    /// Explicit priority; `None` counts as `0`.
    pub priority: Option<i32>,
}

/// A problem with one route's matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// [`RouteSpec::index`] of the offending route.
    pub index: usize,
    /// What is wrong, on one line, naming the route and the field
    /// (``route `api`: match.path: ...``).
    pub message: String,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {}

/// The parts of a request that routes look at.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Host, lowercased, without port.
    pub host: &'a str,
    /// Path as received (not percent-decoded).
    pub path: &'a str,
    /// Raw query string, without `?`.
    pub query: Option<&'a str>,
    /// Request method.
    pub method: &'a Method,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// The route chosen for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// [`RouteSpec::index`] of the route.
    pub index: usize,
    /// Parameters captured by a path template (raw, not percent-decoded).
    pub params: Params,
}

/// Parameters captured from the path; allocates only when there are some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    entries: Vec<(Arc<str>, String)>,
}

impl Params {
    /// The value captured under `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `(name, value)` pairs in template order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.entries.iter().map(|(n, v)| (&**n, v.as_str()))
    }

    /// Number of captured parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Compiled routes, indexed by host, in priority order.
#[derive(Debug)]
pub struct Router {
    routes: Vec<CompiledRoute>,
    /// Exact host → every route that can match it, in order.
    exact: HashMap<Box<str>, Box<[u32]>>,
    /// Wildcard suffix → every route that can match a host below it, in order.
    wildcard: HashMap<Box<str>, Box<[u32]>>,
    /// Routes without `host`, in order.
    any_host: Box<[u32]>,
}

#[derive(Debug)]
struct CompiledRoute {
    index: usize,
    priority: i32,
    hosts: Vec<HostPattern>,
    path: PathMatcher,
    path_rank: PathRank,
    methods: Vec<Method>,
    headers: Vec<HeaderCond>,
    query: Vec<QueryCond>,
}

/// Path specificity; larger is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PathRank {
    /// 4 exact, 3 template, 2 prefix, 1 regex, 0 none.
    kind: u8,
    /// Template literal bytes, or prefix length.
    literal: usize,
    /// Template segments.
    segments: usize,
    /// Template without catch-all.
    no_catch_all: bool,
}

impl PathRank {
    fn kind(kind: u8) -> PathRank {
        PathRank {
            kind,
            literal: 0,
            segments: 0,
            no_catch_all: false,
        }
    }
}

/// Full ordering key within one candidate list; larger first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    priority: i32,
    /// (2 exact | 1 wildcard | 0 none, wildcard suffix length).
    host: (u8, usize),
    path: PathRank,
    conditions: usize,
}

/// A matcher after normalisation, for duplicate detection.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MatcherKey {
    priority: i32,
    hosts: Vec<String>,
    path: PathKey,
    methods: Vec<String>,
    headers: Vec<(String, CondKey)>,
    query: Vec<(String, CondKey)>,
}

#[derive(Debug, PartialEq, Eq, Hash)]
enum PathKey {
    Any,
    Exact(String),
    Template(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum CondKey {
    Present,
    Exact(String),
    Regex(String),
}

impl CondKey {
    fn of(vm: &ValueMatch) -> CondKey {
        match (&vm.value, &vm.regex) {
            (Some(v), _) => CondKey::Exact(v.clone()),
            (None, Some(r)) => CondKey::Regex(r.clone()),
            (None, None) => CondKey::Present,
        }
    }
}

/// Which request hosts a candidate list serves.
#[derive(Clone, Copy)]
enum HostProbe<'a> {
    /// Exactly this host.
    Exact(&'a str),
    /// Hosts one or more labels below this suffix (and not configured exactly).
    Below(&'a str),
}

/// Label suffixes of `host` after each `.`, longest first (`a.b.c` → `b.c`, `c`).
fn parent_suffixes(host: &str) -> impl Iterator<Item = &str> {
    host.char_indices()
        .filter(|&(_, c)| c == '.')
        .map(move |(i, _)| &host[i + 1..])
}

impl CompiledRoute {
    /// How this route's hosts rank for `probe`; `None` if none can match.
    fn host_rank(&self, probe: HostProbe<'_>) -> Option<(u8, usize)> {
        if self.hosts.is_empty() {
            return Some((0, 0));
        }
        self.hosts
            .iter()
            .filter_map(|h| match (h, probe) {
                (HostPattern::Exact(e), HostProbe::Exact(k)) => (&**e == k).then_some((2, 0)),
                (HostPattern::Exact(_), HostProbe::Below(_)) => None,
                (HostPattern::Wildcard(s), HostProbe::Exact(k)) => {
                    wildcard_matches(s, k).then_some((1, s.len()))
                }
                (HostPattern::Wildcard(s), HostProbe::Below(k)) => {
                    (&**s == k || wildcard_matches(s, k)).then_some((1, s.len()))
                }
            })
            .max()
    }

    fn conditions(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    /// Checks every condition but the host; `Some` carries the captured parameters.
    #[inline]
    fn try_match(&self, req: &RouteRequest<'_>) -> Option<Params> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return None;
        }
        let captured = self.path.matches(req.path)?;
        if !self.headers.iter().all(|h| h.matches(req.headers)) {
            return None;
        }
        if !self.query.iter().all(|q| q.matches(req.query)) {
            return None;
        }
        if captured.is_empty() {
            return Some(Params::default());
        }
        let PathMatcher::Template { names, .. } = &self.path else {
            return Some(Params::default());
        };
        let mut entries = Vec::with_capacity(captured.len());
        for (key, value) in captured.iter() {
            if let Some(name) = names.iter().find(|n| &***n == key) {
                entries.push((Arc::clone(name), value.to_owned()));
            }
        }
        Some(Params { entries })
    }
}

/// Compiles one route, returning every problem found.
fn compile_route(spec: &RouteSpec<'_>) -> Result<(CompiledRoute, MatcherKey), Vec<String>> {
    let m = spec.matcher;
    let mut errors = Vec::new();

    let mut hosts = Vec::new();
    for raw in m.host.iter().flat_map(|h| h.as_slice()) {
        match HostPattern::parse(raw) {
            Ok(h) if !hosts.contains(&h) => hosts.push(h),
            Ok(_) => {}
            Err(e) => errors.push(format!("match.host: {e}")),
        }
    }
    if m.host.as_ref().is_some_and(|h| h.as_slice().is_empty()) {
        errors.push("match.host: the list is empty; leave `host` out to match any host".into());
    }

    let (path, path_rank, path_key) = match compile_path(m) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            (PathMatcher::Any, PathRank::kind(0), PathKey::Any)
        }
    };

    let mut methods: Vec<Method> = Vec::new();
    for raw in &m.methods {
        match parse_method(raw) {
            Ok(method) if !methods.contains(&method) => methods.push(method),
            Ok(_) => {}
            Err(e) => errors.push(format!("match.methods: {e}")),
        }
    }

    let mut headers = Vec::new();
    let mut header_keys = Vec::new();
    for vm in &m.headers {
        match HeaderCond::compile(vm) {
            Ok(h) => {
                header_keys.push((h.name().to_owned(), CondKey::of(vm)));
                headers.push(h);
            }
            Err(e) => errors.push(format!("match.headers: {e}")),
        }
    }

    let mut query = Vec::new();
    let mut query_keys = Vec::new();
    for vm in &m.query {
        match QueryCond::compile(vm) {
            Ok(q) => {
                query_keys.push((vm.name.clone(), CondKey::of(vm)));
                query.push(q);
            }
            Err(e) => errors.push(format!("match.query: {e}")),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }

    let priority = spec.priority.unwrap_or(0);
    let mut host_keys: Vec<String> = hosts.iter().map(HostPattern::canonical).collect();
    host_keys.sort();
    let mut method_keys: Vec<String> = methods.iter().map(|m| m.as_str().to_owned()).collect();
    method_keys.sort();
    header_keys.sort();
    header_keys.dedup();
    query_keys.sort();
    query_keys.dedup();
    let key = MatcherKey {
        priority,
        hosts: host_keys,
        path: path_key,
        methods: method_keys,
        headers: header_keys,
        query: query_keys,
    };
    let route = CompiledRoute {
        index: spec.index,
        priority,
        hosts,
        path,
        path_rank,
        methods,
        headers,
        query,
    };
    Ok((route, key))
}

/// Compiles the path condition (`path`, `prefix` or `regex`).
fn compile_path(m: &MatchConfig) -> Result<(PathMatcher, PathRank, PathKey), String> {
    let given: Vec<&str> = [
        ("path", m.path.is_some()),
        ("prefix", m.prefix.is_some()),
        ("regex", m.regex.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| *name)
    .collect();
    if given.len() > 1 {
        return Err(format!(
            "match: `path`, `prefix` and `regex` exclude each other, but this route sets `{}`",
            given.join("` and `")
        ));
    }
    if let Some(path) = &m.path {
        if !path.starts_with('/') {
            return Err(format!("match.path: `{path}` must start with `/`"));
        }
        if let Some(base) = path.strip_suffix("/*") {
            if base.contains(['{', '}']) {
                return Err(format!(
                    "match.path: `{path}`: a prefix (ending in `/*`) cannot contain parameters; end a template with `{{*rest}}` instead"
                ));
            }
            return Ok(prefix_matcher(base));
        }
        if path.contains(['{', '}']) {
            let info: TemplateInfo =
                analyse_template(path).map_err(|e| format!("match.path: {e}"))?;
            let matcher = compile_template(path, &info).map_err(|e| format!("match.path: {e}"))?;
            let rank = PathRank {
                kind: 3,
                literal: info.literal_bytes,
                segments: info.segments,
                no_catch_all: !info.catch_all,
            };
            return Ok((matcher, rank, PathKey::Template(info.shape)));
        }
        return Ok((
            PathMatcher::Exact(path.as_str().into()),
            PathRank::kind(4),
            PathKey::Exact(path.clone()),
        ));
    }
    if let Some(prefix) = &m.prefix {
        if !prefix.starts_with('/') {
            return Err(format!("match.prefix: `{prefix}` must start with `/`"));
        }
        if let Some(base) = prefix.strip_suffix("/*") {
            let base = if base.is_empty() { "/" } else { base };
            return Err(format!(
                "match.prefix: `{prefix}`: a prefix needs no `*`; write `{base}`"
            ));
        }
        return Ok(prefix_matcher(prefix));
    }
    if let Some(re) = &m.regex {
        let regex = compile_path_regex(re).map_err(|e| format!("match.regex: {e}"))?;
        return Ok((
            PathMatcher::Regex(regex),
            PathRank::kind(1),
            PathKey::Regex(re.clone()),
        ));
    }
    Ok((PathMatcher::Any, PathRank::kind(0), PathKey::Any))
}

fn prefix_matcher(prefix: &str) -> (PathMatcher, PathRank, PathKey) {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return (PathMatcher::Any, PathRank::kind(0), PathKey::Any);
    }
    let rank = PathRank {
        literal: prefix.len(),
        ..PathRank::kind(2)
    };
    (
        PathMatcher::Prefix(prefix.into()),
        rank,
        PathKey::Prefix(prefix.to_owned()),
    )
}

impl Router {
    /// Compiles `routes`, or returns every problem found (one route may have several).
    pub fn build(routes: &[RouteSpec<'_>]) -> Result<Router, Vec<BuildError>> {
        let mut errors = Vec::new();
        let mut compiled = Vec::with_capacity(routes.len());
        let mut seen: HashMap<MatcherKey, &str> = HashMap::new();
        if u32::try_from(routes.len()).is_err() {
            return Err(vec![BuildError {
                index: routes.last().map_or(0, |r| r.index),
                message: "too many routes".into(),
            }]);
        }
        for spec in routes {
            match compile_route(spec) {
                Ok((route, key)) => {
                    if let Some(&first) = seen.get(&key) {
                        errors.push(BuildError {
                            index: spec.index,
                            message: one_line(&format!(
                                "route `{}` has the same matcher as route `{first}`; give one a different match or a priority",
                                spec.name
                            )),
                        });
                    } else {
                        seen.insert(key, spec.name);
                    }
                    compiled.push(route);
                }
                Err(messages) => errors.extend(messages.into_iter().map(|message| BuildError {
                    index: spec.index,
                    message: one_line(&format!("route `{}`: {message}", spec.name)),
                })),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Router::index(compiled))
    }

    /// Builds the per-host candidate lists.
    fn index(routes: Vec<CompiledRoute>) -> Router {
        // Positions fit in u32: checked by `build`.
        let pos = |i: usize| i as u32;
        let mut by_exact: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut by_wildcard: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut hostless = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            if route.hosts.is_empty() {
                hostless.push(pos(i));
            }
            for host in &route.hosts {
                let (map, key) = match host {
                    HostPattern::Exact(h) => (&mut by_exact, &**h),
                    HostPattern::Wildcard(s) => (&mut by_wildcard, &**s),
                };
                let list = map.entry(key).or_default();
                if list.last() != Some(&pos(i)) {
                    list.push(pos(i));
                }
            }
        }

        let ordered = |probe: HostProbe<'_>, mut candidates: Vec<u32>| -> Box<[u32]> {
            candidates.sort_unstable();
            candidates.dedup();
            let mut ranked: Vec<(Rank, u32)> = candidates
                .into_iter()
                .filter_map(|p| {
                    let route = &routes[p as usize];
                    let host = route.host_rank(probe)?;
                    let rank = Rank {
                        priority: route.priority,
                        host,
                        path: route.path_rank,
                        conditions: route.conditions(),
                    };
                    Some((rank, p))
                })
                .collect();
            ranked.sort_by(|(ra, pa), (rb, pb)| rb.cmp(ra).then(pa.cmp(pb)));
            ranked.into_iter().map(|(_, p)| p).collect()
        };
        let wildcards_above = |host: &str, include_self: bool| -> Vec<u32> {
            let own = include_self.then_some(host);
            own.into_iter()
                .chain(parent_suffixes(host))
                .filter_map(|s| by_wildcard.get(s))
                .flatten()
                .copied()
                .collect()
        };

        let mut exact = HashMap::with_capacity(by_exact.len());
        for (host, own) in &by_exact {
            let mut candidates = own.clone();
            candidates.extend(wildcards_above(host, false));
            candidates.extend_from_slice(&hostless);
            exact.insert(
                Box::from(*host),
                ordered(HostProbe::Exact(host), candidates),
            );
        }
        let mut wildcard = HashMap::with_capacity(by_wildcard.len());
        for suffix in by_wildcard.keys() {
            let mut candidates = wildcards_above(suffix, true);
            candidates.extend_from_slice(&hostless);
            wildcard.insert(
                Box::from(*suffix),
                ordered(HostProbe::Below(suffix), candidates),
            );
        }
        let any_host = ordered(HostProbe::Below(""), hostless.clone());
        drop(by_exact);
        drop(by_wildcard);
        Router {
            routes,
            exact,
            wildcard,
            any_host,
        }
    }

    /// The best route for `req`, with its captured path parameters.
    pub fn find(&self, req: &RouteRequest<'_>) -> Option<RouteMatch> {
        let host = req.host.strip_suffix('.').unwrap_or(req.host);
        let candidates = match self.exact.get(host) {
            Some(list) => list,
            None => self.wildcard_candidates(host).unwrap_or(&self.any_host),
        };
        candidates.iter().find_map(|&p| {
            let route = &self.routes[p as usize];
            route.try_match(req).map(|params| RouteMatch {
                index: route.index,
                params,
            })
        })
    }

    /// The list for the longest configured wildcard suffix `host` lies below.
    fn wildcard_candidates(&self, host: &str) -> Option<&[u32]> {
        if self.wildcard.is_empty() {
            return None;
        }
        parent_suffixes(host).find_map(|s| self.wildcard.get(s).map(|l| &**l))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Parameter names the route with this [`RouteSpec::index`] captures from the
    /// path (empty without a template); `None` for an unknown index. Linear: for
    /// compiling rewrites, not for requests.
    pub fn param_names(&self, index: usize) -> Option<impl Iterator<Item = &str> + '_> {
        let route = self.routes.iter().find(|r| r.index == index)?;
        let names: &[Arc<str>] = match &route.path {
            PathMatcher::Template { names, .. } => names,
            _ => &[],
        };
        Some(names.iter().map(|n| &**n))
    }
}
