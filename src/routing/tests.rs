//! Router behaviour: matchers, priority, duplicates and build errors.

#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::config::schema::MatchConfig;

/// A route under test: YAML matcher and optional priority.
struct R(&'static str, Option<i32>);

fn matcher(yaml: &str) -> MatchConfig {
    if yaml.trim().is_empty() {
        return MatchConfig::default();
    }
    serde_saphyr::from_str(yaml).unwrap()
}

/// Builds `routes`, named `r0`, `r1`, ... by position.
fn try_build(routes: &[R]) -> Result<Router, Vec<BuildError>> {
    let matchers: Vec<MatchConfig> = routes.iter().map(|r| matcher(r.0)).collect();
    let names: Vec<String> = (0..routes.len()).map(|i| format!("r{i}")).collect();
    let specs: Vec<RouteSpec<'_>> = matchers
        .iter()
        .zip(routes)
        .zip(&names)
        .enumerate()
        .map(|(index, ((m, r), name))| RouteSpec {
            index,
            name,
            matcher: m,
            priority: r.1,
        })
        .collect();
    Router::build(&specs)
}

fn build(routes: &[R]) -> Router {
    match try_build(routes) {
        Ok(r) => r,
        Err(e) => panic!("build failed: {e:?}"),
    }
}

fn build_errors(routes: &[R]) -> Vec<BuildError> {
    match try_build(routes) {
        Ok(_) => panic!("build unexpectedly succeeded"),
        Err(e) => e,
    }
}

/// A request: `"host /path?query"`, GET, no headers unless given.
struct Req {
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    method: Method,
    headers: HeaderMap,
}

fn req(target: &'static str) -> Req {
    let (host, rest) = target.split_once(' ').unwrap();
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    Req {
        host,
        path,
        query,
        method: Method::GET,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn method(mut self, m: &str) -> Req {
        self.method = Method::from_bytes(m.as_bytes()).unwrap();
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }
    fn find(&self, router: &Router) -> Option<RouteMatch> {
        router.find(&RouteRequest {
            host: self.host,
            path: self.path,
            query: self.query,
            method: &self.method,
            headers: &self.headers,
        })
    }
}

/// Index of the chosen route.
fn route(router: &Router, r: Req) -> Option<usize> {
    r.find(router).map(|m| m.index)
}

fn hit(router: &Router, target: &'static str) -> Option<usize> {
    route(router, req(target))
}

// ---- matchers -------------------------------------------------------------

#[test]
fn exact_host_is_case_insensitive_and_ignores_trailing_dot() {
    let r = build(&[R("host: API.Example.com", None)]);
    assert_eq!(hit(&r, "api.example.com /"), Some(0));
    assert_eq!(hit(&r, "api.example.com. /x"), Some(0));
    assert_eq!(hit(&r, "www.example.com /"), None);
    assert_eq!(hit(&r, "example.com /"), None);
    assert_eq!(hit(&r, " /"), None);
}

#[test]
fn host_list_matches_any_entry() {
    let r = build(&[R("host: [a.example, '*.b.example']", None)]);
    assert_eq!(hit(&r, "a.example /"), Some(0));
    assert_eq!(hit(&r, "x.b.example /"), Some(0));
    assert_eq!(hit(&r, "b.example /"), None);
    assert_eq!(hit(&r, "c.example /"), None);
}

#[test]
fn wildcard_matches_subdomains_but_not_apex() {
    let r = build(&[R("host: '*.example.com'", None)]);
    assert_eq!(hit(&r, "a.example.com /"), Some(0));
    assert_eq!(hit(&r, "a.b.example.com /"), Some(0));
    assert_eq!(hit(&r, "example.com /"), None);
    assert_eq!(hit(&r, "badexample.com /"), None);
    assert_eq!(hit(&r, "a.example.org /"), None);
}

#[test]
fn host_less_routes_match_every_host() {
    let r = build(&[R("host: a.example", None), R("prefix: /", None)]);
    assert_eq!(hit(&r, "a.example /"), Some(0));
    assert_eq!(hit(&r, "b.example /"), Some(1));
    assert_eq!(hit(&r, " /"), Some(1));
}

#[test]
fn exact_path() {
    let r = build(&[R("path: /health", None)]);
    assert_eq!(hit(&r, "h /health"), Some(0));
    assert_eq!(hit(&r, "h /health?x=1"), Some(0));
    assert_eq!(hit(&r, "h /health/"), None);
    assert_eq!(hit(&r, "h /healthz"), None);
    assert_eq!(hit(&r, "h /Health"), None);
}

#[test]
fn template_captures_params() {
    let r = build(&[R("path: /users/{id}/posts/{post}", None)]);
    let m = req("h /users/42/posts/abc").find(&r).unwrap();
    assert_eq!(m.index, 0);
    assert_eq!(m.params.get("id"), Some("42"));
    assert_eq!(m.params.get("post"), Some("abc"));
    assert_eq!(m.params.get("nope"), None);
    assert_eq!(m.params.len(), 2);
    assert_eq!(
        m.params.iter().collect::<Vec<_>>(),
        [("id", "42"), ("post", "abc")]
    );
    assert_eq!(hit(&r, "h /users/42/posts"), None);
    assert_eq!(hit(&r, "h /users/42/posts/abc/x"), None);
    assert_eq!(hit(&r, "h /users//posts/abc"), None);
}

#[test]
fn template_catch_all() {
    let r = build(&[R("path: /files/{*rest}", None)]);
    let m = req("h /files/a/b/c.txt").find(&r).unwrap();
    assert_eq!(m.params.get("rest"), Some("a/b/c.txt"));
    let m = req("h /files/x").find(&r).unwrap();
    assert_eq!(m.params.get("rest"), Some("x"));
    // A catch-all needs at least one character.
    assert_eq!(hit(&r, "h /files/"), None);
    assert_eq!(hit(&r, "h /files"), None);
}

#[test]
fn params_are_raw_and_other_matchers_capture_nothing() {
    let r = build(&[R("path: /u/{name}", None), R("prefix: /p", None)]);
    let m = req("h /u/a%20b").find(&r).unwrap();
    assert_eq!(m.params.get("name"), Some("a%20b"));
    let m = req("h /p/x").find(&r).unwrap();
    assert_eq!(m.index, 1);
    assert!(m.params.is_empty());
}

#[test]
fn path_star_is_prefix_sugar() {
    let r = build(&[R("path: /api/*", None)]);
    assert_eq!(hit(&r, "h /api"), Some(0));
    assert_eq!(hit(&r, "h /api/"), Some(0));
    assert_eq!(hit(&r, "h /api/v1/x"), Some(0));
    assert_eq!(hit(&r, "h /apix"), None);
    let r = build(&[R("path: /*", None)]);
    assert_eq!(hit(&r, "h /anything/at/all"), Some(0));
}

#[test]
fn prefix_respects_segment_boundaries() {
    let r = build(&[R("prefix: /api", None)]);
    assert_eq!(hit(&r, "h /api"), Some(0));
    assert_eq!(hit(&r, "h /api/"), Some(0));
    assert_eq!(hit(&r, "h /api/x/y"), Some(0));
    assert_eq!(hit(&r, "h /apix"), None);
    assert_eq!(hit(&r, "h /ap"), None);
    assert_eq!(hit(&r, "h /"), None);
    // A trailing slash on the prefix is ignored.
    let r = build(&[R("prefix: /api/", None)]);
    assert_eq!(hit(&r, "h /api"), Some(0));
    assert_eq!(hit(&r, "h /apix"), None);
    let r = build(&[R("prefix: /", None)]);
    assert_eq!(hit(&r, "h /"), Some(0));
    assert_eq!(hit(&r, "h /x/y"), Some(0));
}

#[test]
fn regex_must_match_whole_path() {
    let r = build(&[R(r"regex: '/v[0-9]+/items'", None)]);
    assert_eq!(hit(&r, "h /v12/items"), Some(0));
    assert_eq!(hit(&r, "h /v12/items/3"), None);
    assert_eq!(hit(&r, "h /x/v12/items"), None);
    // Alternation is anchored as a whole, not just its first branch.
    let r = build(&[R("regex: '/a|/ab'", None)]);
    assert_eq!(hit(&r, "h /ab"), Some(0));
    assert_eq!(hit(&r, "h /abc"), None);
}

#[test]
fn methods_are_case_sensitive_tokens() {
    let r = build(&[R("methods: [GET, POST, PURGE]", None)]);
    assert_eq!(route(&r, req("h /")), Some(0));
    assert_eq!(route(&r, req("h /").method("POST")), Some(0));
    assert_eq!(route(&r, req("h /").method("PURGE")), Some(0));
    assert_eq!(route(&r, req("h /").method("purge")), None);
    assert_eq!(route(&r, req("h /").method("DELETE")), None);
}

#[test]
fn header_present_exact_and_regex() {
    let r = build(&[R(
        "headers: [{name: X-Present}, {name: x-env, value: Prod}, {name: X-Ver, regex: 'v[12]'}]",
        None,
    )]);
    let ok = || {
        req("h /")
            .header("x-present", "")
            .header("x-env", "Prod")
            .header("x-ver", "v2")
    };
    assert_eq!(route(&r, ok()), Some(0));
    // Exact values are case-sensitive.
    let wrong_case = req("h /")
        .header("x-present", "1")
        .header("x-env", "prod")
        .header("x-ver", "v2");
    assert_eq!(route(&r, wrong_case), None);
    // Regexes match the whole value.
    let partial = req("h /")
        .header("x-present", "1")
        .header("x-env", "Prod")
        .header("x-ver", "v22");
    assert_eq!(route(&r, partial), None);
    let missing = req("h /").header("x-env", "Prod").header("x-ver", "v1");
    assert_eq!(route(&r, missing), None);
    // Any of several field values may match.
    let many = req("h /")
        .header("x-present", "1")
        .header("x-env", "Dev")
        .header("x-env", "Prod")
        .header("x-ver", "v1");
    assert_eq!(route(&r, many), Some(0));
}

#[test]
fn query_present_exact_and_regex_are_decoded() {
    let r = build(&[
        R("query: [{name: debug}]", None),
        R("query: [{name: q, value: 'a b/c'}]", None),
        R("query: [{name: 'user id', regex: '[0-9]+'}]", None),
    ]);
    assert_eq!(hit(&r, "h /?debug"), Some(0));
    assert_eq!(hit(&r, "h /?x=1&debug=&y"), Some(0));
    assert_eq!(hit(&r, "h /?debugx=1"), None);
    assert_eq!(hit(&r, "h /?q=a%20b%2Fc"), Some(1));
    assert_eq!(hit(&r, "h /?q=a+b/c"), Some(1));
    assert_eq!(hit(&r, "h /?q=a%20b%2fc&z"), Some(1));
    assert_eq!(hit(&r, "h /?q=a%20b"), None);
    assert_eq!(hit(&r, "h /?q=A+b/c"), None);
    // Repeated parameters: any occurrence may match.
    assert_eq!(hit(&r, "h /?q=x&q=a+b%2Fc"), Some(1));
    // Names are decoded too; regexes match the decoded value in full.
    assert_eq!(hit(&r, "h /?user%20id=%31%32"), Some(2));
    assert_eq!(hit(&r, "h /?user+id=12"), Some(2));
    assert_eq!(hit(&r, "h /?user+id=12a"), None);
    assert_eq!(hit(&r, "h /"), None);
}

#[test]
fn all_conditions_must_hold() {
    let r = build(&[R(
        "{host: a.example, prefix: /api, methods: [POST], headers: [{name: x-k}], query: [{name: v, value: '2'}]}",
        None,
    )]);
    let full = || {
        req("a.example /api/x?v=2")
            .method("POST")
            .header("x-k", "1")
    };
    assert_eq!(route(&r, full()), Some(0));
    assert_eq!(
        route(
            &r,
            req("b.example /api/x?v=2")
                .method("POST")
                .header("x-k", "1")
        ),
        None
    );
    assert_eq!(
        route(
            &r,
            req("a.example /web?v=2").method("POST").header("x-k", "1")
        ),
        None
    );
    assert_eq!(
        route(&r, req("a.example /api/x?v=2").header("x-k", "1")),
        None
    );
    assert_eq!(route(&r, req("a.example /api/x?v=2").method("POST")), None);
    assert_eq!(
        route(
            &r,
            req("a.example /api/x?v=3")
                .method("POST")
                .header("x-k", "1")
        ),
        None
    );
}

// ---- priority -------------------------------------------------------------

#[test]
fn exact_host_beats_wildcard_beats_none() {
    let r = build(&[
        R("prefix: /", None),
        R("host: '*.example.com'", None),
        R("host: api.example.com", None),
    ]);
    assert_eq!(hit(&r, "api.example.com /"), Some(2));
    assert_eq!(hit(&r, "www.example.com /"), Some(1));
    assert_eq!(hit(&r, "example.com /"), Some(0));
    assert_eq!(hit(&r, "other.org /"), Some(0));
}

#[test]
fn longer_wildcard_suffix_wins() {
    let r = build(&[
        R("host: '*.example.com'", None),
        R("host: '*.api.example.com'", None),
        R("host: eu.api.example.com", None),
    ]);
    assert_eq!(hit(&r, "x.api.example.com /"), Some(1));
    assert_eq!(hit(&r, "a.b.api.example.com /"), Some(1));
    assert_eq!(hit(&r, "api.example.com /"), Some(0));
    assert_eq!(hit(&r, "x.other.example.com /"), Some(0));
    assert_eq!(hit(&r, "eu.api.example.com /"), Some(2));
}

#[test]
fn wildcard_routes_still_apply_under_an_exact_host_when_more_specific_fails() {
    // The exact-host route only serves /admin; other paths fall through to the
    // wildcard and then the host-less route.
    let r = build(&[
        R("prefix: /", None),
        R("{host: '*.example.com', prefix: /api}", None),
        R("{host: api.example.com, path: /admin}", None),
    ]);
    assert_eq!(hit(&r, "api.example.com /admin"), Some(2));
    assert_eq!(hit(&r, "api.example.com /api/x"), Some(1));
    assert_eq!(hit(&r, "api.example.com /other"), Some(0));
}

#[test]
fn multi_host_route_ranks_by_matched_entry() {
    // Route 0 names x.example exactly and also matches it by wildcard: for
    // x.example it ranks as an exact-host route (beating route 1's extra
    // condition); for y.example it is a wildcard route like route 1.
    let r = build(&[
        R("host: ['*.other', x.example, '*.example']", None),
        R("{host: '*.example', methods: [GET]}", None),
    ]);
    assert_eq!(hit(&r, "x.example /"), Some(0));
    // Route 1 has more conditions; same host rank for y.example.
    assert_eq!(hit(&r, "y.example /"), Some(1));
}

#[test]
fn path_kind_order() {
    let r = build(&[
        R("{}", None),
        R("regex: '/items/.*'", None),
        R("prefix: /items", None),
        R("path: /items/{id}", None),
        R("path: /items/special", None),
    ]);
    assert_eq!(hit(&r, "h /items/special"), Some(4));
    assert_eq!(hit(&r, "h /items/7"), Some(3));
    assert_eq!(hit(&r, "h /items/7/x"), Some(2));
    assert_eq!(hit(&r, "h /items"), Some(2));
    assert_eq!(hit(&r, "h /other"), Some(0));
    let r = build(&[R("{}", None), R("regex: '/items/.*'", None)]);
    assert_eq!(hit(&r, "h /items/7"), Some(1));
}

#[test]
fn longer_prefix_wins() {
    let r = build(&[
        R("prefix: /api", None),
        R("prefix: /api/v2", None),
        R("prefix: /", None),
    ]);
    assert_eq!(hit(&r, "h /api/v2/x"), Some(1));
    assert_eq!(hit(&r, "h /api/v2"), Some(1));
    assert_eq!(hit(&r, "h /api/v3"), Some(0));
    assert_eq!(hit(&r, "h /web"), Some(2));
}

#[test]
fn more_literal_template_wins() {
    let r = build(&[
        R("path: /{*rest}", None),
        R("path: /users/{id}/{tab}", None),
        R("path: /users/{id}/posts", None),
        R("path: /users/{*rest}", None),
    ]);
    assert_eq!(hit(&r, "h /users/1/posts"), Some(2));
    assert_eq!(hit(&r, "h /users/1/likes"), Some(1));
    assert_eq!(hit(&r, "h /users/1"), Some(3));
    assert_eq!(hit(&r, "h /else"), Some(0));
}

#[test]
fn more_conditions_win() {
    let r = build(&[
        R("prefix: /a", None),
        R("{prefix: /a, methods: [GET]}", None),
        R(
            "{prefix: /a, methods: [GET], headers: [{name: x-beta}]}",
            None,
        ),
    ]);
    assert_eq!(route(&r, req("h /a").header("x-beta", "1")), Some(2));
    assert_eq!(route(&r, req("h /a")), Some(1));
    assert_eq!(route(&r, req("h /a").method("POST")), Some(0));
}

#[test]
fn explicit_priority_overrides_specificity() {
    let r = build(&[
        R("path: /a/b", None),
        R("prefix: /", Some(10)),
        R("{host: h, path: /a/b}", Some(-1)),
    ]);
    assert_eq!(hit(&r, "h /a/b"), Some(1));
    let r = build(&[R("path: /a/b", None), R("{host: h, path: /a/b}", Some(-1))]);
    // Negative priority ranks below routes without one, despite the exact host.
    assert_eq!(hit(&r, "h /a/b"), Some(0));
    let r = build(&[R("prefix: /a", Some(1)), R("prefix: /a", Some(2))]);
    assert_eq!(hit(&r, "h /a"), Some(1));
}

#[test]
fn declaration_order_breaks_ties() {
    let r = build(&[
        R("{prefix: /a, headers: [{name: x-one}]}", None),
        R("{prefix: /a, headers: [{name: x-two}]}", None),
    ]);
    let both = || req("h /a").header("x-one", "1").header("x-two", "1");
    assert_eq!(route(&r, both()), Some(0));
    assert_eq!(route(&r, req("h /a").header("x-two", "1")), Some(1));
    let r = build(&[
        R("{prefix: /a, headers: [{name: x-two}]}", None),
        R("{prefix: /a, headers: [{name: x-one}]}", None),
    ]);
    assert_eq!(route(&r, both()), Some(0));
}

// ---- duplicates ------------------------------------------------------------

#[test]
fn identical_matchers_are_rejected_on_the_later_route() {
    let e = build_errors(&[
        R(
            "{host: [B.example, a.example], methods: [GET, POST], prefix: /x}",
            None,
        ),
        R("path: /other", None),
        R(
            "{host: [a.example, b.example.], methods: [POST, GET, GET], prefix: /x/}",
            None,
        ),
    ]);
    assert_eq!(
        e,
        [BuildError {
            index: 2,
            message:
                "route `r2` has the same matcher as route `r0`; give one a different match or a priority"
                    .into()
        }]
    );
}

#[test]
fn duplicate_detection_normalises_sets_and_sugar() {
    let dup = |a: &'static str, b: &'static str| {
        let e = build_errors(&[R(a, None), R(b, None)]);
        assert_eq!(e.len(), 1, "{a} / {b}: {e:?}");
        assert_eq!(e[0].index, 1);
        assert!(e[0].message.contains("same matcher as route `r0`"));
    };
    dup("{}", "{}");
    dup("path: /api/*", "prefix: /api");
    dup("prefix: /", "{}");
    dup("path: /u/{id}", "path: /u/{name}");
    dup(
        "headers: [{name: X-A}, {name: x-b, value: '1'}]",
        "headers: [{name: x-b, value: '1'}, {name: x-a}]",
    );
    dup(
        "query: [{name: a}, {name: b, regex: 'x'}]",
        "query: [{name: b, regex: 'x'}, {name: a}]",
    );
    // No priority counts as priority 0.
    let e = build_errors(&[R("path: /a", None), R("path: /a", Some(0))]);
    assert_eq!(e[0].index, 1);
}

#[test]
fn similar_but_different_matchers_are_accepted() {
    let ok = |a: &'static str, pa: Option<i32>, b: &'static str, pb: Option<i32>| {
        assert!(try_build(&[R(a, pa), R(b, pb)]).is_ok(), "{a} / {b}");
    };
    ok("path: /a", None, "path: /a", Some(1));
    ok("path: /a", Some(2), "path: /a", Some(3));
    ok("path: /a", None, "prefix: /a", None);
    ok("path: /a", None, "path: /a/", None);
    ok("headers: [{name: x}]", None, "query: [{name: x}]", None);
    ok(
        "headers: [{name: x, value: A}]",
        None,
        "headers: [{name: x, value: a}]",
        None,
    );
    ok("host: a.example", None, "host: '*.a.example'", None);
    ok("methods: [GET]", None, "methods: [GET, HEAD]", None);
    ok("path: /u/{id}", None, "path: /u/{*id}", None);
}

// ---- build errors -----------------------------------------------------------

/// The one error of route `r1` built from `yaml`, without the `route `r1`: ` lead.
fn single_error(yaml: &'static str) -> String {
    let e = build_errors(&[R("path: /fine", None), R(yaml, None)]);
    assert_eq!(e.len(), 1, "{yaml}: {e:?}");
    assert_eq!(e[0].index, 1);
    assert!(!e[0].message.contains('\n'), "{:?}", e[0].message);
    match e[0].message.strip_prefix("route `r1`: ") {
        Some(m) => m.to_owned(),
        None => panic!("message does not name the route: {}", e[0].message),
    }
}

#[test]
fn exclusive_path_conditions() {
    let m = single_error("{path: /a, prefix: /b}");
    assert!(m.contains("sets `path` and `prefix`"), "{m}");
    let m = single_error("{path: /a, prefix: /b, regex: x}");
    assert!(m.contains("sets `path` and `prefix` and `regex`"), "{m}");
    let m = single_error("{prefix: /b, regex: x}");
    assert!(m.contains("`prefix` and `regex`"), "{m}");
}

#[test]
fn invalid_regexes() {
    let m = single_error("regex: '(unclosed'");
    assert!(
        m.starts_with("match.regex: invalid regex `(unclosed`"),
        "{m}"
    );
    // Unbalanced groups are caught even though the pattern gets wrapped.
    let m = single_error("regex: 'a)(b'");
    assert!(m.starts_with("match.regex: invalid regex `a)(b`"), "{m}");
    let m = single_error("headers: [{name: x, regex: '['}]");
    assert!(
        m.starts_with("match.headers: header `x`: invalid regex `[`"),
        "{m}"
    );
    let m = single_error("query: [{name: q, regex: '*'}]");
    assert!(
        m.starts_with("match.query: query parameter `q`: invalid regex"),
        "{m}"
    );
}

#[test]
fn regex_errors_are_one_line_with_the_reason_and_position() {
    let m = single_error("regex: '/a(b'");
    assert_eq!(
        m,
        "match.regex: invalid regex `/a(b`: unclosed group (at character 3)"
    );
    let m = single_error(r"headers: [{name: x, regex: 'a\qb'}]");
    assert_eq!(
        m,
        r"match.headers: header `x`: invalid regex `a\qb`: unrecognized escape sequence (at character 2)"
    );
    // Two marked spans: the reason only.
    let m = single_error("regex: '(?P<n>a)(?P<n>b)'");
    assert_eq!(
        m,
        "match.regex: invalid regex `(?P<n>a)(?P<n>b)`: duplicate capture group name"
    );
    // A pattern with a line break is shown escaped.
    let m = single_error("regex: \"/x\\n(\"");
    assert_eq!(m, r"match.regex: invalid regex `/x\n(`: unclosed group");
}

#[test]
fn messages_with_control_characters_stay_on_one_line() {
    let m = single_error("host: \"a\\nb.example\"");
    assert!(m.starts_with(r"match.host: host `a\nb.example`"), "{m}");
}

#[test]
fn case_insensitive_regexes() {
    let r = build(&[R("regex: '(?i)/docs/.*'", None)]);
    assert_eq!(hit(&r, "h /docs/a"), Some(0));
    assert_eq!(hit(&r, "h /DOCS/a"), Some(0));
    assert_eq!(hit(&r, "h /doc/a"), None);
    let r = build(&[R("headers: [{name: x-env, regex: '(?i)prod'}]", None)]);
    assert_eq!(route(&r, req("h /").header("x-env", "PROD")), Some(0));
    assert_eq!(route(&r, req("h /").header("x-env", "pRoD")), Some(0));
    assert_eq!(route(&r, req("h /").header("x-env", "prod2")), None);
    let r = build(&[R("query: [{name: q, regex: '(?i)yes'}]", None)]);
    assert_eq!(hit(&r, "h /?q=YES"), Some(0));
}

#[test]
fn invalid_templates_and_paths() {
    let m = single_error("path: /a/{id");
    assert!(m.contains("unclosed `{` at byte 3"), "{m}");
    let m = single_error("path: /a/{*rest}/b");
    assert!(m.contains("catch-all parameter must come last"), "{m}");
    let m = single_error("path: /a/{x}{y}");
    assert!(
        m.contains("only one parameter is allowed per path segment"),
        "{m}"
    );
    let m = single_error("path: /a/{id}/{id}");
    assert!(m.contains("`id` appears twice"), "{m}");
    let m = single_error("path: /a/{x y}");
    assert!(m.contains("invalid parameter name `x y`"), "{m}");
    let m = single_error("path: /a/{id}/*");
    assert!(m.contains("cannot contain parameters"), "{m}");
    let m = single_error("path: a/b");
    assert_eq!(m, "match.path: `a/b` must start with `/`");
    let m = single_error("prefix: api");
    assert_eq!(m, "match.prefix: `api` must start with `/`");
    let m = single_error("prefix: /api/*");
    assert!(m.contains("write `/api`"), "{m}");
}

#[test]
fn invalid_methods() {
    let m = single_error("methods: ['GE T']");
    assert_eq!(m, "match.methods: invalid method `GE T`: not an HTTP token");
    let m = single_error("methods: [get]");
    assert!(m.contains("case-sensitive; write `GET`"), "{m}");
}

#[test]
fn invalid_headers_and_query() {
    let m = single_error("headers: [{name: 'bad header'}]");
    assert_eq!(m, "match.headers: invalid header name `bad header`");
    let m = single_error("headers: [{name: ''}]");
    assert!(m.contains("empty name"), "{m}");
    let m = single_error("headers: [{name: x, value: a, regex: b}]");
    assert!(m.contains("give `value` or `regex`, not both"), "{m}");
    let m = single_error("query: [{name: ''}]");
    assert!(m.contains("empty name"), "{m}");
}

#[test]
fn invalid_hosts() {
    let m = single_error("host: example.com:8080");
    assert!(m.starts_with("match.host: host `example.com:8080`"), "{m}");
    assert!(m.contains("without its port"), "{m}");
    let m = single_error("host: 'a.*.example'");
    assert!(m.contains("whole first label"), "{m}");
    let m = single_error("host: []");
    assert!(m.contains("list is empty"), "{m}");
}

#[test]
fn all_errors_are_reported_with_their_route_index() {
    let e = build_errors(&[
        R("{path: /a, regex: b}", None),
        R("path: /ok", None),
        R("{methods: ['a b'], headers: [{name: 'c d'}]}", None),
    ]);
    let indexes: Vec<usize> = e.iter().map(|e| e.index).collect();
    assert_eq!(indexes, [0, 2, 2]);
    assert_eq!(e[1].to_string(), e[1].message);
}

// ---- misc -------------------------------------------------------------------

#[test]
fn empty_router_finds_nothing() {
    let r = build(&[]);
    assert!(r.is_empty());
    assert_eq!(hit(&r, "h /"), None);
}

#[test]
fn spec_index_is_reported_not_position() {
    let ms = [matcher("path: /a"), matcher("path: /b")];
    let specs = [
        RouteSpec {
            index: 7,
            name: "seven",
            matcher: &ms[0],
            priority: None,
        },
        RouteSpec {
            index: 3,
            name: "three",
            matcher: &ms[1],
            priority: None,
        },
    ];
    let r = Router::build(&specs).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(hit(&r, "h /a"), Some(7));
    assert_eq!(hit(&r, "h /b"), Some(3));
    let dup = [
        specs[0],
        RouteSpec {
            index: 9,
            name: "nine",
            ..specs[0]
        },
    ];
    let e = Router::build(&dup).unwrap_err();
    assert_eq!(e[0].index, 9);
    assert_eq!(
        e[0].message,
        "route `nine` has the same matcher as route `seven`; give one a different match or a priority"
    );
}

#[test]
fn param_names_for_rewrite_checks() {
    let r = build(&[R("path: /u/{id}/{*rest}", None), R("prefix: /p", None)]);
    assert_eq!(
        r.param_names(0).unwrap().collect::<Vec<_>>(),
        ["id", "rest"]
    );
    assert_eq!(r.param_names(1).unwrap().count(), 0);
    assert!(r.param_names(5).is_none());
}

#[test]
fn router_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
    assert_send_sync::<RouteMatch>();
}
