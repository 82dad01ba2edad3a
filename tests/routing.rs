//! Routing end to end: hosts, paths, methods, headers, query, priorities,
//! rewrites, redirects, direct responses, listener binding and `portico check`.
//!
//! Most routes answer directly with their own name as the body, so the body
//! says which route won. Routes are declared least specific first, so that a
//! win never comes from declaration order unless a test says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::raw;
use support::{Gateway, Reply, get, send, upstream};

fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// The name of the route that answers, or `404`.
async fn winner(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> String {
    let r = send(addr, request(method, host, path, headers)).await;
    match r.status.as_u16() {
        200 => r.text(),
        404 => "404".into(),
        other => panic!("{method} {host}{path}: status {other}: {}", r.text()),
    }
}

/// One route answering its name: `- name: NAME` + `match: {MATCH}`.
fn route(name: &str, matcher: &str) -> String {
    format!("  - name: {name}\n    match: {{ {matcher} }}\n    respond: {{ body: {name} }}\n")
}

fn with_priority(priority: i32, route: String) -> String {
    format!("{route}    priority: {priority}\n")
}

fn start(routes: &[String]) -> (Gateway, SocketAddr) {
    let mut gw = Gateway::start(&format!(
        "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nroutes:\n{}",
        routes.concat()
    ));
    let addr = gw.addr("main");
    (gw, addr)
}

#[tokio::test]
async fn host_exact_then_wildcard_then_none() {
    let (_gw, addr) = start(&[
        route("host-none", "prefix: /h"),
        route("host-wild", "host: \"*.example.com\", prefix: /h"),
        route("host-deep", "host: \"*.api.example.com\", prefix: /h"),
        route("host-exact", "host: api.example.com, prefix: /h"),
    ]);
    let cases = [
        ("api.example.com", "host-exact"),
        ("API.Example.COM:8080", "host-exact"),
        ("www.example.com", "host-wild"),
        ("a.b.example.com", "host-wild"),
        ("v1.api.example.com", "host-deep"),
        ("example.com", "host-none"),
        ("example.org", "host-none"),
        ("notexample.com", "host-none"),
    ];
    for (host, want) in cases {
        assert_eq!(
            winner(addr, "GET", host, "/h/x", &[]).await,
            want,
            "host {host}"
        );
    }
}

#[tokio::test]
async fn exact_path_then_template_then_prefix_then_regex() {
    let (_gw, addr) = start(&[
        route("p-regex", "regex: \"^/p/[0-9]+/[a-z]+$\""),
        route("p-prefix", "prefix: /p"),
        route("p-catch", "path: \"/p/files/{*rest}\""),
        route("p-template", "path: \"/p/{id}/x\""),
        route("p-exact", "path: /p/7/x"),
        route("r-regex", "regex: \"^/r/[0-9]+$\""),
    ]);
    let cases = [
        ("/p/7/x", "p-exact"),
        ("/p/8/x", "p-template"),
        // Both templates match; more literal characters win.
        ("/p/files/x", "p-catch"),
        ("/p/files/a/b", "p-catch"),
        // Template and regex do not match; prefix beats regex.
        ("/p/8/y", "p-prefix"),
        ("/p", "p-prefix"),
        ("/p/", "p-prefix"),
        // Prefixes end on segment boundaries.
        ("/px", "404"),
        ("/r/12", "r-regex"),
        // The regex must match the whole path.
        ("/r/12/x", "404"),
        ("/r/ab", "404"),
    ];
    for (path, want) in cases {
        assert_eq!(
            winner(addr, "GET", "h.test", path, &[]).await,
            want,
            "path {path}"
        );
    }
}

#[tokio::test]
async fn regex_beats_a_route_without_path_condition_even_with_fewer_conditions() {
    let (_gw, addr) = start(&[
        route("no-path", "methods: [GET]"),
        route("by-regex", "regex: \"^/n/[0-9]+$\""),
    ]);
    assert_eq!(winner(addr, "GET", "h.test", "/n/5", &[]).await, "by-regex");
    assert_eq!(
        winner(addr, "GET", "h.test", "/other", &[]).await,
        "no-path"
    );
    assert_eq!(
        winner(addr, "POST", "h.test", "/n/5", &[]).await,
        "by-regex"
    );
    assert_eq!(winner(addr, "POST", "h.test", "/other", &[]).await, "404");
}

#[tokio::test]
async fn methods() {
    let (_gw, addr) = start(&[
        route("m-any", "path: /m"),
        route("m-read", "path: /m, methods: [GET, HEAD]"),
        route("m-post", "path: /m, methods: [POST]"),
        route("m-only-delete", "path: /d, methods: [DELETE]"),
    ]);
    assert_eq!(winner(addr, "GET", "h.test", "/m", &[]).await, "m-read");
    assert_eq!(winner(addr, "POST", "h.test", "/m", &[]).await, "m-post");
    assert_eq!(winner(addr, "PUT", "h.test", "/m", &[]).await, "m-any");
    assert_eq!(
        winner(addr, "DELETE", "h.test", "/d", &[]).await,
        "m-only-delete"
    );
    assert_eq!(winner(addr, "GET", "h.test", "/d", &[]).await, "404");
    let head = send(addr, request("HEAD", "h.test", "/m", &[])).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn header_conditions() {
    let (_gw, addr) = start(&[
        route("h-none", "path: /hd"),
        route("h-present", "path: /hd, headers: [{ name: x-flag }]"),
        route(
            "h-exact",
            "path: /hd, headers: [{ name: x-env, value: prod }]",
        ),
        route(
            "h-regex",
            "path: /hd, headers: [{ name: x-ver, regex: \"v[0-9]+\" }]",
        ),
        route(
            "h-two",
            "path: /hd, headers: [{ name: x-flag }, { name: x-env, value: prod }]",
        ),
    ]);
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "h-none"),
        (&[("x-flag", "")], "h-present"),
        (&[("X-Flag", "anything")], "h-present"),
        (&[("x-env", "prod")], "h-exact"),
        // Values compare case-sensitively.
        (&[("x-env", "Prod")], "h-none"),
        (&[("x-ver", "v12")], "h-regex"),
        // The regex must match the whole value.
        (&[("x-ver", "v12-beta")], "h-none"),
        // More conditions first.
        (&[("x-flag", "1"), ("x-env", "prod")], "h-two"),
        // Equal condition counts: declaration order (h-present before h-regex).
        (&[("x-flag", "1"), ("x-ver", "v1")], "h-present"),
    ];
    for (headers, want) in cases {
        assert_eq!(
            winner(addr, "GET", "h.test", "/hd", headers).await,
            *want,
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn query_conditions() {
    let (_gw, addr) = start(&[
        route("q-none", "path: /q"),
        route("q-present", "path: /q, query: [{ name: debug }]"),
        route(
            "q-exact",
            "path: /q, query: [{ name: lang, value: \"en us\" }]",
        ),
        route(
            "q-regex",
            "path: /q, query: [{ name: page, regex: \"[0-9]+\" }]",
        ),
    ]);
    let cases = [
        ("/q", "q-none"),
        ("/q?debug", "q-present"),
        ("/q?x=1&debug=0", "q-present"),
        ("/q?lang=en+us", "q-exact"),
        ("/q?lang=en%20us", "q-exact"),
        ("/q?lang=en", "q-none"),
        ("/q?page=12", "q-regex"),
        ("/q?page=12x", "q-none"),
        ("/q?Debug", "q-none"),
    ];
    for (path, want) in cases {
        assert_eq!(
            winner(addr, "GET", "h.test", path, &[]).await,
            want,
            "{path}"
        );
    }
}

#[tokio::test]
async fn explicit_priority_overrides_specificity() {
    let (_gw, addr) = start(&[
        route("pr-exact", "path: /pr/exact"),
        with_priority(10, route("pr-wide", "prefix: /pr")),
        with_priority(-1, route("np-demoted", "host: n.test, path: /np/x")),
        route("np-plain", "prefix: /np"),
    ]);
    assert_eq!(
        winner(addr, "GET", "h.test", "/pr/exact", &[]).await,
        "pr-wide"
    );
    assert_eq!(
        winner(addr, "GET", "h.test", "/pr/other", &[]).await,
        "pr-wide"
    );
    // A negative priority ranks below routes that give none, exact host and path notwithstanding.
    assert_eq!(
        winner(addr, "GET", "n.test", "/np/x", &[]).await,
        "np-plain"
    );
}

#[tokio::test]
async fn no_match_is_404_problem_json_with_request_id() {
    let (_gw, addr) = start(&[route("only", "path: /only")]);
    let r = send(addr, get("h.test", "/missing")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let id = r.header("x-request-id").expect("x-request-id").to_string();
    assert_eq!(id.len(), 32);
    let p = r.json();
    assert_eq!(p["type"], "urn:portico:problem:no-route");
    assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
    assert_eq!(p["status"], 404);
    assert_eq!(p["request_id"], id.as_str());
}

#[tokio::test]
async fn rewrites_reach_the_upstream() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: strip
    match: {{ prefix: /api }}
    rewrite: {{ strip_prefix: /api }}
    upstream: app
  - name: template
    match: {{ path: "/u/{{id}}/posts/{{*rest}}" }}
    rewrite: {{ path: "/users/{{id}}/p/{{rest}}" }}
    upstream: app
  - name: host
    match: {{ prefix: /h }}
    rewrite: {{ host: backend.internal }}
    upstream: app
"#,
        up.addr
    ));
    let addr = gw.addr("main");
    for (path, want) in [
        ("/api/users?x=1", "/users?x=1"),
        ("/api", "/"),
        ("/u/42/posts/a/b?q=z", "/users/42/p/a/b?q=z"),
        ("/h/keep", "/h/keep"),
    ] {
        let r = send(addr, get("shop.example", path)).await;
        assert_eq!(r.status, 200, "{path}");
        let seen = up.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.uri.to_string(), want, "{path}");
        let host = last.headers["host"].to_str().unwrap();
        if path.starts_with("/h/") {
            assert_eq!(host, "backend.internal");
            assert_eq!(last.headers["x-forwarded-host"], "shop.example");
        } else {
            assert_eq!(host, "shop.example");
        }
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn redirects_render_their_location() {
    let mut gw = Gateway::start(
        r#"
listeners: [{ name: main, address: "127.0.0.1:0" }]
routes:
  - name: moved
    match: { path: "/old/{id}" }
    redirect: { location: "https://{host}/new/{id}{query}", status: 308 }
  - name: whole
    match: { prefix: /legacy }
    redirect: { location: "/modern{path}" }
"#,
    );
    let addr = gw.addr("main");
    let r = send(addr, get("shop.example:8080", "/old/5?a=1&b=2")).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example:8080/new/5?a=1&b=2")
    );
    let r = send(addr, get("shop.example", "/old/6")).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://shop.example/new/6"));
    let r = send(addr, get("shop.example", "/legacy/a/b?x=1")).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/modern/legacy/a/b"));
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn direct_response_and_head_without_body() {
    let mut gw = Gateway::start(
        r#"
listeners: [{ name: main, address: "127.0.0.1:0" }]
routes:
  - name: teapot
    match: { path: /tea }
    respond:
      status: 418
      headers: { content-type: text/plain, x-custom: brewed }
      body: "short and stout"
"#,
    );
    let addr = gw.addr("main");
    let r = send(addr, get("h.test", "/tea")).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-custom"), Some("brewed"));
    assert_eq!(r.text(), "short and stout");

    // HEAD over raw TCP: nothing may follow the head, not even on a closing connection.
    let mut s = raw::connect(addr).await;
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"HEAD /tea HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (bytes, eof) = raw::read_to_end(&mut s, raw::RAW_TIMEOUT).await;
    assert!(eof, "connection not closed");
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 418 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-custom: brewed"),
        "{text}"
    );
    let head_end = raw::find(&bytes, b"\r\n\r\n").expect("complete head") + 4;
    assert_eq!(&bytes[head_end..], b"", "HEAD answer has a body: {text}");
}

#[tokio::test]
async fn routes_bound_to_a_listener_stay_there() {
    let mut gw = Gateway::start(
        r#"
listeners:
  - { name: a, address: "127.0.0.1:0" }
  - { name: b, address: "127.0.0.1:0" }
routes:
  - name: only-a
    listeners: [a]
    match: { path: /x }
    respond: { body: only-a }
  - name: everywhere
    match: { path: /y }
    respond: { body: everywhere }
"#,
    );
    let (a, b) = (gw.addr("a"), gw.addr("b"));
    assert_ne!(a, b);
    assert_eq!(winner(a, "GET", "h.test", "/x", &[]).await, "only-a");
    let r: Reply = send(b, get("h.test", "/x")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "urn:portico:problem:no-route");
    assert_eq!(winner(a, "GET", "h.test", "/y", &[]).await, "everywhere");
    assert_eq!(winner(b, "GET", "h.test", "/y", &[]).await, "everywhere");
}

// ---------------------------------------------------------------------------
// portico check

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    path: String,
}

fn check(yaml: &str) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        path: path.display().to_string(),
    }
}

/// Line 1 is `listeners:`.
const HEAD: &str = "\
listeners:
  - name: main
    address: 127.0.0.1:8080
upstreams:
  api:
    endpoints: [127.0.0.1:9000]
routes:
";

#[test]
fn check_rejects_two_routes_with_the_same_matcher() {
    let c = check(&format!(
        "{HEAD}  - name: first
    match: {{ path: /same, methods: [GET] }}
    upstream: api
  - name: second
    match: {{ methods: [GET], path: /same }}
    upstream: api
"
    ));
    assert_eq!(c.code, Some(1), "{}", c.stderr);
    // The second route starts on line 11, its `name` key at column 5.
    let want = format!("{}:11:5: ", c.path);
    assert!(c.stderr.contains(&want), "want {want:?} in:\n{}", c.stderr);
    assert!(c.stderr.contains("same matcher"), "{}", c.stderr);
    assert!(!c.stdout.contains(": ok"), "{}", c.stdout);
}

#[test]
fn check_rejects_an_unknown_key() {
    let c = check(&format!(
        "{HEAD}  - name: r
    match: {{ path: /x }}
    upstreams: api
"
    ));
    assert_eq!(c.code, Some(1), "{}", c.stderr);
    let want = format!("{}:10:5: ", c.path);
    assert!(c.stderr.contains(&want), "want {want:?} in:\n{}", c.stderr);
    assert!(c.stderr.contains("upstreams"), "{}", c.stderr);
}

#[test]
fn check_rejects_a_route_naming_a_missing_upstream() {
    let c = check(&format!(
        "{HEAD}  - name: r
    match: {{ path: /x }}
    upstream: nowhere
"
    ));
    assert_eq!(c.code, Some(1), "{}", c.stderr);
    let want = format!("{}:10:15: ", c.path);
    assert!(c.stderr.contains(&want), "want {want:?} in:\n{}", c.stderr);
    assert!(c.stderr.contains("`nowhere`"), "{}", c.stderr);
}

#[test]
fn check_accepts_a_good_config_and_prints_a_summary() {
    let c = check(&format!(
        "{HEAD}  - name: api-route
    match: {{ prefix: /api }}
    upstream: api
  - name: hello
    match: {{ path: /hello }}
    respond: {{ status: 200, body: hi }}
  - name: old
    match: {{ path: /old }}
    redirect: {{ location: /new, status: 301 }}
"
    ));
    assert_eq!(c.code, Some(0), "stderr:\n{}", c.stderr);
    assert!(
        c.stdout.contains(&format!("{}: ok", c.path)),
        "{}",
        c.stdout
    );
    for line in [
        "  main on 127.0.0.1:8080",
        "  api: 127.0.0.1:9000",
        "  api-route: proxy to api",
        "  hello: respond 200",
        "  old: redirect 301 to /new",
    ] {
        assert!(
            c.stdout.contains(line),
            "missing {line:?} in:\n{}",
            c.stdout
        );
    }
}

#[test]
fn check_rejects_an_unknown_redirect_placeholder() {
    let c = check(&format!(
        "{HEAD}  - name: old-user
    match: {{ path: \"/users/{{id}}\" }}
    redirect: {{ location: \"/members/{{user}}{{query}}\" }}
"
    ));
    assert_eq!(c.code, Some(1), "{}", c.stderr);
    let want = format!("{}:8:5: route `old-user`: ", c.path);
    assert!(c.stderr.contains(&want), "want {want:?} in:\n{}", c.stderr);
    assert!(c.stderr.contains("`{user}`"), "{}", c.stderr);
    assert!(!c.stdout.contains(": ok"), "{}", c.stdout);
}

#[test]
fn check_rejects_a_route_param_hidden_by_a_redirect_built_in() {
    let c = check(&format!(
        "{HEAD}  - name: by-host
    match: {{ path: \"/to/{{host}}\" }}
    redirect: {{ location: \"https://{{host}}/\" }}
"
    ));
    assert_eq!(c.code, Some(1), "{}", c.stderr);
    let want = format!("{}:8:5: route `by-host`: ", c.path);
    assert!(c.stderr.contains(&want), "want {want:?} in:\n{}", c.stderr);
    assert!(
        c.stderr.contains("parameter `{host}` is hidden"),
        "{}",
        c.stderr
    );
}

#[test]
fn check_names_the_first_route_of_a_duplicate_and_folds_regex_errors() {
    let c = check(&format!(
        "{HEAD}  - name: first
    match: {{ path: /same }}
    upstream: api
  - name: second
    match: {{ path: /same }}
    upstream: api
  - name: broken
    match: {{ regex: \"/a(b\" }}
    upstream: api
"
    ));
    assert_eq!(c.code, Some(1), "{}", c.stderr);
    assert!(
        c.stderr.contains(&format!(
            "{}:11:5: route `second` has the same matcher as route `first`;",
            c.path
        )),
        "{}",
        c.stderr
    );
    assert!(
        c.stderr.contains(&format!(
            "{}:14:5: route `broken`: match.regex: invalid regex `/a(b`: unclosed group (at character 3)",
            c.path
        )),
        "{}",
        c.stderr
    );
    // One line per error, each with its place.
    for line in c.stderr.lines() {
        assert!(
            line.starts_with(&c.path),
            "stray line {line:?} in:\n{}",
            c.stderr
        );
    }
}

#[tokio::test]
async fn case_insensitive_regexes_in_path_and_headers() {
    let (_gw, addr) = start(&[
        route("ci-path", "regex: \"(?i)/docs/[a-z]+\""),
        route(
            "ci-header",
            "path: /env, headers: [{ name: x-env, regex: \"(?i)prod\" }]",
        ),
    ]);
    for path in ["/docs/intro", "/DOCS/Intro", "/Docs/INTRO"] {
        assert_eq!(
            winner(addr, "GET", "h.test", path, &[]).await,
            "ci-path",
            "{path}"
        );
    }
    assert_eq!(winner(addr, "GET", "h.test", "/docs/1", &[]).await, "404");
    for value in ["prod", "PROD", "pRoD"] {
        assert_eq!(
            winner(addr, "GET", "h.test", "/env", &[("x-env", value)]).await,
            "ci-header",
            "{value}"
        );
    }
    assert_eq!(
        winner(addr, "GET", "h.test", "/env", &[("x-env", "production")]).await,
        "404"
    );
}
