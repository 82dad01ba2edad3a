//! Rate and concurrency limits, against the real binary with two workers
//! (so two worker runtimes share the counts) in front of real upstreams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::{Gateway, Reply, send, upstream};

/// Routes and limits in front of `up`, two workers, clients simulated
/// through X-Forwarded-For from a trusted 127.0.0.1.
fn config(up: SocketAddr, body: &str) -> String {
    format!(
        r#"
workers: 2
access_log: {{ enabled: false }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
forwarding: {{ trusted_proxies: [127.0.0.1/32] }}
upstreams:
  up: {{ endpoints: ["{up}"] }}
{body}
"#
    )
}

/// GET `path` with `headers`.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(addr, req.body(Full::new(Bytes::new())).unwrap()).await
}

/// GET `path` as client `ip`.
async fn get_as(addr: SocketAddr, path: &str, ip: &str) -> Reply {
    get(addr, path, &[("x-forwarded-for", ip)]).await
}

/// The statuses of `n` GETs of `path` as client `ip`, one after the other.
async fn statuses(addr: SocketAddr, path: &str, ip: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get_as(addr, path, ip).await.status.as_u16());
    }
    out
}

/// The `r` parameter of the `RateLimit` member named `name`.
fn remaining(reply: &Reply, name: &str) -> u64 {
    let field = reply.header("ratelimit").expect("RateLimit header");
    let member = field
        .split(", ")
        .find(|m| m.starts_with(&format!("\"{name}\";")))
        .unwrap_or_else(|| panic!("no member {name} in {field}"));
    param(member, "r").unwrap()
}

/// The integer parameter `p` of a Structured Field list member.
fn param(member: &str, p: &str) -> Option<u64> {
    member
        .split(';')
        .find_map(|kv| kv.strip_prefix(&format!("{p}=")))
        .map(|v| v.parse().unwrap())
}

/// Waits until a config reload beyond the `before`th has been logged.
fn wait_reload(gw: &Gateway, before: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.count_log("config reloaded") <= before {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_counts_under_concurrent_load() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
routes:
  - name: api
    match: { prefix: / }
    upstream: up
    rate_limit: [{ rate: 50/h }]
"#,
    ));
    let addr = gw.addr("main");
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { get_as(addr, "/", "10.1.1.1").await.status }))
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (50, 150));
    assert_eq!(up.count(), 50, "refused requests never reach the upstream");
}

#[tokio::test]
async fn the_tighter_limit_decides_and_a_refusal_costs_the_others_nothing() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
routes:
  - name: api
    match: { prefix: / }
    upstream: up
    rate_limit:
      - { key: ip, rate: 4/h }
      - { key: "header:x-user", rate: 2/h }
"#,
    ));
    let addr = gw.addr("main");
    let user = |u: &'static str| [("x-forwarded-for", "10.2.2.2"), ("x-user", u)];
    let r = get(addr, "/", &user("u1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r, "api-1"), 3);
    assert_eq!(remaining(&r, "api-2"), 1);
    assert_eq!(get(addr, "/", &user("u1")).await.status, 200);
    // The per-user limit refuses; the per-IP one, taken first, is given back.
    for _ in 0..5 {
        assert_eq!(get(addr, "/", &user("u1")).await.status, 429);
    }
    let r = get(addr, "/", &user("u2")).await;
    assert_eq!(r.status, 200, "the refusals did not count against the IP");
    assert_eq!(remaining(&r, "api-1"), 1);
    assert_eq!(get(addr, "/", &user("u2")).await.status, 200);
    // Now the per-IP limit is the tighter one.
    let r = get(addr, "/", &user("u3")).await;
    assert_eq!(r.status, 429);
    let field = r.header("ratelimit").unwrap();
    assert!(field.starts_with("\"api-1\";r=0;"), "{field}");
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn a_named_limit_is_shared_by_routes_an_inline_one_is_not() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
rate_limits:
  shared: { rate: 3/h }
routes:
  - { name: a, match: { prefix: /a }, upstream: up, rate_limit: [shared] }
  - { name: b, match: { prefix: /b }, upstream: up, rate_limit: [shared] }
  - { name: c, match: { prefix: /c }, upstream: up, rate_limit: [{ rate: 3/h }] }
  - { name: d, match: { prefix: /d }, upstream: up, rate_limit: [{ rate: 3/h }] }
"#,
    ));
    let addr = gw.addr("main");
    let ip = "10.3.3.3";
    assert_eq!(statuses(addr, "/a", ip, 2).await, [200, 200]);
    assert_eq!(statuses(addr, "/b", ip, 2).await, [200, 429]);
    assert_eq!(statuses(addr, "/a", ip, 1).await, [429]);
    assert_eq!(statuses(addr, "/c", ip, 4).await, [200, 200, 200, 429]);
    assert_eq!(statuses(addr, "/d", ip, 4).await, [200, 200, 200, 429]);
    let r = get_as(addr, "/d", ip).await;
    assert_eq!(r.header("ratelimit-policy"), Some("\"d-1\";q=3;w=3600"));
}

#[tokio::test]
async fn keys_by_ip_by_header_and_combined() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
routes:
  - { name: ip, match: { prefix: /ip }, upstream: up, rate_limit: [{ key: ip, rate: 2/h }] }
  - name: hdr
    match: { prefix: /hdr }
    upstream: up
    rate_limit: [{ key: "header:x-tenant", rate: 2/h }]
  - name: both
    match: { prefix: /both }
    upstream: up
    rate_limit: [{ key: [ip, "header:x-tenant"], rate: 1/h }]
"#,
    ));
    let addr = gw.addr("main");
    assert_eq!(statuses(addr, "/ip", "10.0.0.1", 3).await, [200, 200, 429]);
    assert_eq!(statuses(addr, "/ip", "10.0.0.2", 1).await, [200]);

    let tenant = |t: &'static str, ip: &'static str| [("x-tenant", t), ("x-forwarded-for", ip)];
    for (t, ip) in [("a", "10.0.0.1"), ("a", "10.0.0.2")] {
        assert_eq!(get(addr, "/hdr", &tenant(t, ip)).await.status, 200);
    }
    assert_eq!(
        get(addr, "/hdr", &tenant("a", "10.0.0.3")).await.status,
        429,
        "by tenant, whatever the IP"
    );
    assert_eq!(
        get(addr, "/hdr", &tenant("b", "10.0.0.1")).await.status,
        200
    );
    // Without the header: one shared key.
    assert_eq!(statuses(addr, "/hdr", "10.0.0.4", 2).await, [200, 200]);
    assert_eq!(statuses(addr, "/hdr", "10.0.0.5", 1).await, [429]);

    let both = |t, ip| async move { get(addr, "/both", &tenant(t, ip)).await.status.as_u16() };
    assert_eq!(both("a", "10.0.0.1").await, 200);
    assert_eq!(both("a", "10.0.0.1").await, 429);
    assert_eq!(both("b", "10.0.0.1").await, 200);
    assert_eq!(both("a", "10.0.0.2").await, 200);
}

#[tokio::test]
async fn answers_carry_rate_limit_headers_and_429_is_a_problem() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
rate_limits:
  per-minute: { rate: 3/m }
  legacy: { rate: 3/m, headers: legacy }
  quiet: { rate: 1/m, headers: none }
routes:
  - { name: ietf, match: { prefix: /ietf }, upstream: up, rate_limit: [per-minute] }
  - { name: old, match: { prefix: /old }, upstream: up, rate_limit: [legacy] }
  - { name: quiet, match: { prefix: /quiet }, upstream: up, rate_limit: [quiet] }
  - name: short
    match: { prefix: /short }
    respond: { status: 204 }
    rate_limit: [{ rate: 100/m, headers: both }]
"#,
    ));
    let addr = gw.addr("main");
    let ip = "10.4.4.4";
    let mut last_t = 0;
    for expect in [2, 1, 0] {
        let r = get_as(addr, "/ietf", ip).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per-minute\";q=3;w=60")
        );
        let field = r.header("ratelimit").unwrap();
        assert!(field.starts_with("\"per-minute\";"), "{field}");
        assert_eq!(param(field, "r"), Some(expect), "{field}");
        let t = param(field, "t").unwrap();
        assert!(
            t > last_t && t <= 60,
            "t grows as the limit empties: {field}"
        );
        last_t = t;
        assert!(r.header("x-ratelimit-limit").is_none());
    }
    let r = get_as(addr, "/ietf", ip).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let body = r.json();
    assert_eq!(body["status"], 429);
    assert_eq!(body["type"], "urn:portico:problem:rate-limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "one request per 20 s: {retry}");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-minute\";q=3;w=60")
    );
    let field = r.header("ratelimit").unwrap();
    assert_eq!(param(field, "r"), Some(0));
    assert_eq!(
        param(field, "t"),
        Some(retry),
        "the window ends when Retry-After does"
    );
    assert_eq!(up.count(), 3);

    for expect in ["2", "1", "0"] {
        let r = get_as(addr, "/old", ip).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(expect));
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset));
        assert!(r.header("ratelimit").is_none() && r.header("ratelimit-policy").is_none());
    }

    let r = get_as(addr, "/quiet", ip).await;
    assert_eq!(r.status, 200);
    assert!(r.header("ratelimit").is_none() && r.header("x-ratelimit-remaining").is_none());
    let r = get_as(addr, "/quiet", ip).await;
    assert_eq!(r.status, 429);
    assert!(
        r.header("retry-after").is_some(),
        "429 always says when to retry"
    );
    assert!(r.header("ratelimit").is_none());

    // Direct answers carry them too, both sets.
    let r = get_as(addr, "/short", ip).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("ratelimit"), Some("\"short-1\";r=99;t=1"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
}

#[tokio::test]
async fn a_concurrency_limit_counts_requests_in_flight() {
    let hold = Arc::new(AtomicBool::new(true));
    let release = Arc::new(tokio::sync::Notify::new());
    let up = {
        let (hold, release) = (hold.clone(), release.clone());
        upstream::start_async(move |_| {
            let (hold, release) = (hold.clone(), release.clone());
            async move {
                let wait = release.notified();
                if hold.load(Ordering::SeqCst) {
                    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
                }
                Response::new(Full::new(Bytes::from("done")))
            }
        })
        .await
    };
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
routes:
  - name: slow
    match: { prefix: / }
    upstream: up
    rate_limit: [{ key: ip, concurrency: 2 }]
"#,
    ));
    let addr = gw.addr("main");
    let ip = "10.5.5.5";
    let first: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get_as(addr, "/", ip).await }))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() < 2 {
        assert!(Instant::now() < deadline, "the upstream never got both");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = get_as(addr, "/", ip).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"slow-1\";q=2;qu=\"concurrent-requests\"")
    );
    assert_eq!(r.header("ratelimit"), Some("\"slow-1\";r=0"));
    assert_eq!(up.count(), 2);
    // Another client has slots of its own.
    let other = tokio::spawn(async move { get_as(addr, "/", "10.5.5.6").await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() < 3 {
        assert!(Instant::now() < deadline, "the other client was refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    hold.store(false, Ordering::SeqCst);
    release.notify_waiters();
    let mut seen_r = Vec::new();
    for t in first {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        seen_r.push(remaining(&r, "slow-1"));
    }
    seen_r.sort_unstable();
    assert_eq!(seen_r, [0, 1], "free slots after each of the two");
    assert_eq!(other.await.unwrap().status, 200);
    // Slots come back when the answers are done (the gateway may finish a
    // moment after the client has read them).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get_as(addr, "/", ip).await;
        if r.status == 200 {
            assert_eq!(r.header("ratelimit"), Some("\"slow-1\";r=1"));
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counts_survive_a_reload_unless_the_limit_changes() {
    let up = upstream::named("up").await;
    let base = |limit: &str, extra: &str| {
        config(
            up.addr,
            &format!(
                r#"
rate_limits:
  shared: {{ rate: {limit} }}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: up, rate_limit: [shared, {{ rate: {limit}, key: "header:x-k" }}] }}
{extra}
"#
            ),
        )
    };
    let mut gw = Gateway::start(&base("2/h", ""));
    let addr = gw.addr("main");
    let ip = "10.6.6.6";
    assert_eq!(statuses(addr, "/api", ip, 3).await, [200, 200, 429]);

    // An unrelated change: both limits keep their counts.
    let before = gw.count_log("config reloaded");
    gw.replace_config(&base(
        "2/h",
        "  - { name: other, match: { prefix: /other }, respond: { status: 204 } }",
    ));
    gw.signal("HUP");
    wait_reload(&gw, before);
    assert_eq!(
        get_as(addr, "/other", ip).await.status,
        204,
        "the new config is live"
    );
    assert_eq!(statuses(addr, "/api", ip, 1).await, [429]);
    // The inline limit (by header, absent: one key) kept its count too.
    let r = get_as(addr, "/api", "10.6.6.7").await;
    assert_eq!(r.status, 429);
    assert!(r.header("ratelimit").unwrap().starts_with("\"api-2\";r=0"));

    // A changed limit starts fresh. The file watcher and SIGHUP each reload
    // the first change, so a log line may belong to either change: the
    // route the second change removes tells when it is live.
    gw.replace_config(&base("3/h", ""));
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_as(addr, "/other", ip).await.status != 404 {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses(addr, "/api", ip, 4).await, [200, 200, 200, 429]);
}

#[tokio::test]
async fn decisions_are_counted_in_metrics() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
rate_limits:
  counted: { rate: 2/h }
routes:
  - { name: api, match: { prefix: / }, upstream: up, rate_limit: [counted] }
"#,
    ));
    let addr = gw.addr("main");
    assert_eq!(
        statuses(addr, "/", "10.7.7.7", 5).await,
        [200, 200, 429, 429, 429]
    );
    let admin = gw.addr("admin");
    let text = support::get_path(admin, "/metrics").await.text();
    let value = |result: &str| {
        let series =
            format!("portico_rate_limit_decisions_total{{limit=\"counted\",result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in:\n{text}"))
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(value("allowed"), 2.0);
    assert_eq!(value("limited"), 3.0);
    assert_eq!(value("store_error"), 0.0);
}

#[tokio::test]
async fn keys_by_consumer() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
consumers:
  - { name: alice, api_keys: ["key-alice-0123456789"] }
  - { name: bob, api_keys: ["key-bob-0123456789"] }
auth_providers:
  keys: { api_key: {} }
routes:
  - name: api
    match: { prefix: / }
    upstream: up
    auth: { providers: [keys], anonymous: true }
    rate_limit: [{ key: consumer, rate: 2/h }]
"#,
    ));
    let addr = gw.addr("main");
    let as_key =
        |key: &'static str, ip: &'static str| [("x-api-key", key), ("x-forwarded-for", ip)];
    // Alice is one key whatever her address.
    let alice = "key-alice-0123456789";
    assert_eq!(get(addr, "/", &as_key(alice, "10.8.0.1")).await.status, 200);
    assert_eq!(get(addr, "/", &as_key(alice, "10.8.0.2")).await.status, 200);
    assert_eq!(get(addr, "/", &as_key(alice, "10.8.0.3")).await.status, 429);
    let bob = "key-bob-0123456789";
    assert_eq!(get(addr, "/", &as_key(bob, "10.8.0.1")).await.status, 200);
    // Anonymous callers are keyed by IP.
    assert_eq!(statuses(addr, "/", "10.8.0.1", 3).await, [200, 200, 429]);
    assert_eq!(statuses(addr, "/", "10.8.0.9", 1).await, [200]);
}

/// Limits run after authentication, so refused credentials are not
/// counted; a `before_auth` limit counts every attempt (key guessing).
#[tokio::test]
async fn before_auth_limits_count_refused_credentials() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        r#"
consumers:
  - { name: alice, api_keys: ["key-alice-0123456789"] }
auth_providers:
  keys: { api_key: {} }
routes:
  - name: guarded
    match: { prefix: /guarded }
    upstream: up
    auth: { providers: [keys] }
    rate_limit: [{ key: ip, rate: 3/h, before_auth: true }]
  - name: plain
    match: { prefix: /plain }
    upstream: up
    auth: { providers: [keys] }
    rate_limit: [{ key: ip, rate: 3/h }]
"#,
    ));
    let addr = gw.addr("main");
    let guess = |path: &'static str, ip: &'static str| async move {
        let mut out = Vec::new();
        for i in 0..5 {
            let key = format!("wrong-key-{i}");
            let headers = [("x-api-key", key.as_str()), ("x-forwarded-for", ip)];
            out.push(get(addr, path, &headers).await.status);
        }
        out
    };
    assert_eq!(
        guess("/guarded", "10.9.0.1").await,
        [401, 401, 401, 429, 429]
    );
    // The attempts used the address's count, whoever holds a good key there.
    let alice = [
        ("x-api-key", "key-alice-0123456789"),
        ("x-forwarded-for", "10.9.0.1"),
    ];
    assert_eq!(get(addr, "/guarded", &alice).await.status, 429);
    // After authentication, refused attempts cost nothing.
    assert_eq!(guess("/plain", "10.9.0.2").await, [401; 5]);
    let alice = [
        ("x-api-key", "key-alice-0123456789"),
        ("x-forwarded-for", "10.9.0.2"),
    ];
    assert_eq!(get(addr, "/plain", &alice).await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_failing_store_fails_open_or_closed_as_configured() {
    let up = upstream::named("up").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut gw = Gateway::start(&config(
        up.addr,
        &format!(
            r#"
redis: {{ urls: ["redis://{closed}"], timeout: 100ms }}
rate_limits:
  open: {{ rate: 1/h, store: redis }}
  closed: {{ rate: 1/h, store: redis, on_store_error: closed }}
routes:
  - {{ name: open, match: {{ prefix: /open }}, upstream: up, rate_limit: [open, {{ rate: 2/h }}] }}
  - {{ name: closed, match: {{ prefix: /closed }}, upstream: up, rate_limit: [closed] }}
"#
        ),
    ));
    let addr = gw.addr("main");
    // Open: the Redis limit decides nothing; the local one still counts.
    let r = get_as(addr, "/open", "10.9.9.9").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit"), Some("\"open-2\";r=1;t=1800"));
    assert_eq!(statuses(addr, "/open", "10.9.9.9", 2).await, [200, 429]);

    let r = get_as(addr, "/closed", "10.9.9.9").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json()["type"],
        "urn:portico:problem:rate-limiter-unavailable"
    );
    assert_eq!(up.count(), 2);

    let text = support::get_path(gw.addr("admin"), "/metrics").await.text();
    let has = |series: &str| text.lines().any(|l| l == series);
    assert!(
        // Not 3: the local limit refused the third before Redis was asked.
        has(r#"portico_rate_limit_decisions_total{limit="open",result="store_error"} 2"#),
        "{text}"
    );
    assert!(has(
        r#"portico_rate_limit_decisions_total{limit="open",result="allowed"} 0"#
    ));
    assert!(has(
        r#"portico_rate_limit_decisions_total{limit="closed",result="store_error"} 1"#
    ));
    assert!(gw.wait_for_log("rate limit store failed", Duration::from_secs(5)));
}
