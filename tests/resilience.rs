//! Resilience through the gateway: retries (`retry:` on a route), the retry
//! budget, outlier ejection, circuit breaking, peak-EWMA balancing, slow start,
//! panic mode, and active health checks covering an endpoint killed under
//! load. Every assertion counts what real upstreams received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::raw::{self, Action};
use support::upstream::{self, Seen, Upstream};
use support::{Gateway, Reply, get, get_path, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

/// Bound on any wait that could hang.
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers

/// A port on 127.0.0.1 with nothing listening.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A response of `status` whose body and `x-upstream` header are `name`.
fn reply(status: u16, name: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(name.to_owned())))
        .unwrap()
}

/// An upstream answering every request with `status` and its name.
async fn answering(name: &'static str, status: u16) -> Upstream {
    upstream::start(move |_| reply(status, name)).await
}

/// A gateway config with listener `main`, upstream `u` (`upstream` is a YAML
/// flow map) and `routes` (YAML list items), after a direct `/ok` route.
/// `top` goes first (e.g. `workers: 1`).
fn config(top: &str, upstream: &str, routes: &str) -> String {
    format!(
        r#"{top}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  u: {upstream}
routes:
  - {{ name: ok, match: {{ path: /ok }}, respond: {{ body: still-here }} }}
{routes}
"#
    )
}

/// A route item proxying `prefix` to `u` with `extra` keys (e.g. `, retry: {...}`).
fn route(name: &str, prefix: &str, extra: &str) -> String {
    format!("  - {{ name: {name}, match: {{ prefix: {prefix} }}, upstream: u{extra} }}\n")
}

/// Starts a gateway and returns it with the `main` listener's address.
fn gateway(yaml: &str) -> (Gateway, SocketAddr) {
    let mut gw = Gateway::start(yaml);
    let addr = gw.addr("main");
    (gw, addr)
}

/// A request with `method`, `path` and `body`, Host `localhost`.
fn request(method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(body))
        .unwrap()
}

/// A body of `len` bytes that differs per `seed` and per position.
fn body(seed: usize, len: usize) -> Bytes {
    (0..len)
        .map(|i| b'a' + ((i * 7 + seed * 13) % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The bodies `up` received for exactly `path`.
fn bodies(up: &Upstream, path: &str) -> Vec<Bytes> {
    up.seen()
        .into_iter()
        .filter(|s| s.uri.path() == path)
        .map(|s| s.body)
        .collect()
}

/// The 503 of an upstream, passed on as is (not a gateway problem).
fn assert_upstream_503(r: &Reply, names: &[&str], what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    let name = r.header("x-upstream").unwrap_or_else(|| {
        panic!(
            "{what}: not the upstream's answer: {:?} {}",
            r.headers,
            r.text()
        )
    });
    assert!(names.contains(&name), "{what}: from {name}");
    assert_eq!(r.text(), name, "{what}");
}

/// A gateway problem answer of `status` and problem `slug`.
fn assert_problem(r: &Reply, status: u16, slug: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{what}: {}",
        r.text()
    );
    assert_eq!(
        r.json()["type"],
        format!("urn:portico:problem:{slug}"),
        "{what}"
    );
}

/// A circuit-breaker rejection: 503 problem+json whose `detail` names `cap`
/// (and no other cap, and not the upstream's address).
fn assert_cap_rejection(r: &Reply, cap: &str, hidden: SocketAddr) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.text()
    );
    let p = r.json();
    assert_eq!(p["status"], 503, "{}", r.text());
    assert!(
        p["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:portico:problem:")),
        "{}",
        r.text()
    );
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(cap),
        "detail does not name {cap}: {}",
        r.text()
    );
    for other in [
        "max_connections",
        "max_pending",
        "max_requests",
        "max_retries",
    ] {
        if other != cap {
            assert!(!detail.contains(other), "detail names {other}: {detail}");
        }
    }
    let text = r.text();
    assert!(
        !text.contains(&hidden.to_string()),
        "leaks the address: {text}"
    );
}

/// One keep-alive HTTP/1.1 connection to the gateway, re-opened when it fails.
struct Conn {
    addr: SocketAddr,
    tx: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, tx: None }
    }

    /// GET `path`: status and body, or what went wrong (5 s bound).
    async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let addr = self.addr;
        let slot = &mut self.tx;
        let result = timeout(Duration::from_secs(5), async {
            if let Some(tx) = slot.as_mut()
                && tx.ready().await.is_err()
            {
                *slot = None;
            }
            if slot.is_none() {
                let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                *slot = Some(tx);
            }
            let tx = slot.as_mut().unwrap();
            let resp = tx
                .send_request(get("localhost", path))
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        if result.is_err() {
            self.tx = None;
        }
        result
    }

    /// GET `path`, which must answer 200; returns the body.
    async fn ok(&mut self, path: &str) -> String {
        match self.get(path).await {
            Ok((200, body)) => body,
            other => panic!("GET {path}: {other:?}"),
        }
    }
}

/// GETs `path` until `up` has received `n` requests in all (at most `max`
/// requests); returns the replies.
async fn until_count(
    addr: SocketAddr,
    up: &Upstream,
    n: usize,
    path: &str,
    max: usize,
) -> Vec<Reply> {
    let mut replies = Vec::new();
    while up.count() < n {
        assert!(
            replies.len() < max,
            "{max} requests and the upstream has {} of {n}",
            up.count()
        );
        replies.push(get_path(addr, path).await);
    }
    replies
}

// ---------------------------------------------------------------------------
// Retries

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_failure_is_retried_on_the_live_endpoint() {
    let dead = closed_port().await;
    let live = upstream::named("live").await;
    let dead2 = closed_port().await;
    let (gw, addr) = gateway(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  u: {{ endpoints: ["{dead}", "{}"] }}
  dead: {{ endpoints: ["{dead}", "{dead2}"] }}
routes:
  - {{ name: u, match: {{ prefix: /u }}, upstream: u, retry: {{ attempts: 2 }} }}
  - {{ name: dead, match: {{ prefix: /dead }}, upstream: dead, retry: {{ attempts: 2 }} }}
"#,
        live.addr
    ));
    // Round robin sends every other first attempt to the closed port: without
    // retries about half of these would be 502.
    for i in 0..20 {
        let r = get_path(addr, &format!("/u/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}\n{}", r.text(), gw.stderr());
        assert_eq!(r.text(), "live");
    }
    assert_eq!(live.count(), 20);
    // Every attempt fails: the client gets the gateway's 502 of the last one.
    let r = get_path(addr, "/dead/x").await;
    assert_problem(&r, 502, "upstream-connect-failed", "all endpoints dead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_on_503_goes_to_the_other_endpoint() {
    let a = answering("a", 503).await;
    let b = answering("b", 200).await;
    // Random balancing: a retry that could land on the endpoint that just
    // failed would do so half the time, and the client would get a's 503.
    let (gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ balance: random, endpoints: ["{}", "{}"] }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ", retry: { attempts: 2 }"),
    ));
    for i in 0..20 {
        let path = format!("/u/{i}");
        let r = get_path(addr, &path).await;
        assert_eq!(r.status, 200, "{path}: {}\n{}", r.text(), gw.stderr());
        assert_eq!(r.text(), "b");
        assert_eq!(b.count_path(&path), 1, "{path}");
        assert!(a.count_path(&path) <= 1, "{path}");
    }
    // P(a never drawn first in 20) = 2^-20.
    assert!(a.count() >= 1, "the failing endpoint was never tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listed_statuses_and_the_on_list_select_what_is_retried() {
    // a answers 500 on paths containing "500", else 503; b answers 200.
    let a = upstream::start(|s: &Seen| {
        if s.uri.path().contains("500") {
            reply(500, "a")
        } else {
            reply(503, "a")
        }
    })
    .await;
    let b = answering("b", 200).await;
    let routes = [
        route("listed", "/listed", ", retry: { statuses: [500] }"),
        route("default", "/default", ", retry: {}"),
        route("connect", "/connect", ", retry: { on: [connect_failure] }"),
    ]
    .concat();
    let (_gw, addr) = gateway(&config(
        "workers: 1",
        &format!(r#"{{ endpoints: ["{}", "{}"] }}"#, a.addr, b.addr),
        &routes,
    ));
    // (path prefix, retried?, status a answers)
    for (prefix, retried, status) in [
        ("/listed/500", true, 500),
        ("/default/500", false, 500),
        ("/default/503", true, 503),
        ("/connect/503", false, 503),
    ] {
        for i in 0..6 {
            let path = format!("{prefix}/{i}");
            let r = get_path(addr, &path).await;
            let at_a = a.count_path(&path);
            assert!(at_a <= 1, "{path}");
            if at_a == 0 || retried {
                assert_eq!((r.status.as_u16(), r.text()), (200, "b".into()), "{path}");
                assert_eq!(b.count_path(&path), 1, "{path}");
            } else {
                assert_eq!(
                    (r.status.as_u16(), r.text()),
                    (status, "a".into()),
                    "{path}"
                );
                assert_eq!(b.count_path(&path), 0, "{path} was retried");
            }
        }
        // Round robin over two endpoints: a gets at least one of any two
        // consecutive first attempts.
        assert!(a.count_prefix(prefix) >= 1, "{prefix}: a never tried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_idempotent_methods_are_retried_by_default() {
    let a = answering("a", 503).await;
    let b = answering("b", 200).await;
    let (_gw, addr) = gateway(&config(
        "workers: 1",
        &format!(r#"{{ endpoints: ["{}", "{}"] }}"#, a.addr, b.addr),
        &route("u", "/u", ", retry: { attempts: 2 }"),
    ));
    for method in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::POST,
        Method::PATCH,
    ] {
        let idempotent = !matches!(method, Method::POST | Method::PATCH);
        for i in 0..6 {
            let path = format!("/u/{method}/{i}");
            let sent = body(i, 100);
            let payload = if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
                Bytes::new()
            } else {
                sent.clone()
            };
            let r = send(addr, request(method.clone(), &path, payload.clone())).await;
            let at_a = a.count_path(&path);
            assert!(at_a <= 1, "{path}");
            if at_a == 0 || idempotent {
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                assert_eq!(bodies(&b, &path), vec![payload.clone()], "{path}");
            } else {
                // Not retried: a's 503 as is, b never saw it.
                assert_upstream_503(&r, &["a"], &path);
                assert_eq!(b.count_path(&path), 0, "{method} {path} was retried");
            }
        }
        assert!(
            a.count_prefix(&format!("/u/{method}/")) >= 1,
            "{method}: a never tried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_idempotent_retries_replay_the_identical_body() {
    let a = answering("a", 503).await;
    let b = answering("b", 200).await;
    let (_gw, addr) = gateway(&config(
        "workers: 1",
        &format!(r#"{{ endpoints: ["{}", "{}"] }}"#, a.addr, b.addr),
        &route("u", "/u", ", retry: { attempts: 2, non_idempotent: true }"),
    ));
    for i in 0..10 {
        let path = format!("/u/post/{i}");
        let sent = body(i, 3000);
        let r = send(addr, request(Method::POST, &path, sent.clone())).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), "b");
        assert_eq!(bodies(&b, &path), vec![sent.clone()], "{path}");
        let at_a = bodies(&a, &path);
        assert!(at_a.len() <= 1, "{path}");
        assert!(
            at_a.iter().all(|x| *x == sent),
            "{path}: a got another body"
        );
    }
    assert!(a.count() >= 1, "a never tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_beyond_the_replay_buffer_is_not_retried() {
    let a = answering("a", 503).await;
    let b = answering("b", 200).await;
    let (_gw, addr) = gateway(&config(
        "workers: 1",
        &format!(r#"{{ endpoints: ["{}", "{}"] }}"#, a.addr, b.addr),
        &route(
            "u",
            "/u",
            ", retry: { attempts: 2, non_idempotent: true, replay_buffer: 1KiB }",
        ),
    ));
    // 4 KiB: more than the replay buffer, and the upstream reads all of it
    // before it answers, so it has been sent: exactly one attempt.
    for i in 0..6 {
        let path = format!("/u/large/{i}");
        let sent = body(i, 4096);
        let r = send(addr, request(Method::POST, &path, sent.clone())).await;
        let at_a = bodies(&a, &path);
        assert!(at_a.iter().all(|x| *x == sent), "{path}");
        if at_a.is_empty() {
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(bodies(&b, &path), vec![sent.clone()], "{path}");
        } else {
            assert_eq!(at_a.len(), 1, "{path}");
            assert_upstream_503(&r, &["a"], &path);
            assert_eq!(
                b.count_path(&path),
                0,
                "{path}: retried beyond the replay buffer"
            );
        }
    }
    assert!(a.count_prefix("/u/large/") >= 1, "a never tried");
    // 512 bytes fit: retried with the identical bytes.
    for i in 0..6 {
        let path = format!("/u/small/{i}");
        let sent = body(i, 512);
        let r = send(addr, request(Method::POST, &path, sent.clone())).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(bodies(&b, &path), vec![sent.clone()], "{path}");
        assert!(bodies(&a, &path).iter().all(|x| *x == sent), "{path}");
    }
    assert!(a.count_prefix("/u/small/") >= 1, "a never tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_try_timeout_moves_on_to_a_fast_endpoint() {
    let slow = upstream::start_async(|_| async {
        sleep(Duration::from_secs(3)).await;
        reply(200, "slow")
    })
    .await;
    let fast = upstream::named("fast").await;
    let (gw, addr) = gateway(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  u: {{ endpoints: ["{slow}", "{fast}"], timeouts: {{ request: 10s }}, retry_budget: {{ percent: 100, min_concurrency: 8 }} }}
  slow: {{ endpoints: ["{slow}"], timeouts: {{ request: 10s }} }}
routes:
  - name: u
    match: {{ prefix: /u }}
    upstream: u
    retry: {{ attempts: 2, on: [timeout], per_try_timeout: 200ms }}
  - name: slow
    match: {{ prefix: /slow }}
    upstream: slow
    retry: {{ attempts: 2, on: [timeout], per_try_timeout: 200ms }}
"#,
        slow = slow.addr,
        fast = fast.addr
    ));
    // Eight at once: about four time out on the slow endpoint together, more
    // than the default retry budget (3 retries at once) lets through; the
    // budget is opened up so that this test is about the per-try timeout.
    let mut set = JoinSet::new();
    for i in 0..8 {
        set.spawn(async move {
            let start = Instant::now();
            let r = get_path(addr, &format!("/u/{i}")).await;
            (i, start.elapsed(), r)
        });
    }
    while let Some(done) = set.join_next().await {
        let (i, took, r) = done.unwrap();
        assert_eq!(r.status, 200, "/u/{i}: {}\n{}", r.text(), gw.stderr());
        assert_eq!(r.text(), "fast", "/u/{i}");
        // At most 200 ms on the slow endpoint, a backoff of at most
        // `max_backoff` (250 ms), then a fast answer: about 0.45 s. 1.5 s
        // leaves room for a loaded machine and is half of the 3 s the slow
        // endpoint needs (and far below the 10 s request timeout).
        assert!(took < Duration::from_millis(1500), "/u/{i} took {took:?}");
    }
    assert_eq!(fast.count(), 8);
    assert!(slow.count() >= 1, "the slow endpoint was never tried");

    // Every attempt times out: the gateway's 504, after two tries.
    let start = Instant::now();
    let r = get_path(addr, "/slow/x").await;
    assert_problem(&r, 504, "upstream-timeout", "every try timed out");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(slow.count_path("/slow/x"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_before_the_response_is_retried() {
    let a = raw::upstream(Action::Reset).await;
    let b = upstream::named("b").await;
    let (gw, addr) = gateway(&config(
        "",
        &format!(r#"{{ endpoints: ["{}", "{}"] }}"#, a.addr, b.addr),
        &route("u", "/u", ", retry: { attempts: 2 }"),
    ));
    for i in 0..10 {
        let r = get_path(addr, &format!("/u/{i}")).await;
        assert_eq!(r.status, 200, "/u/{i}: {}\n{}", r.text(), gw.stderr());
        assert_eq!(r.text(), "b");
    }
    assert_eq!(b.count(), 10);
    assert!(a.requests() >= 1, "the resetting endpoint was never tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_endpoint_is_retried_itself() {
    // Fails every other request, starting with the first.
    let n = AtomicUsize::new(0);
    let a = upstream::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            reply(503, "a")
        } else {
            reply(200, "a")
        }
    })
    .await;
    let (_gw, addr) = gateway(&config(
        "",
        &format!(r#"{{ endpoints: ["{}"] }}"#, a.addr),
        &route("u", "/u", ", retry: { attempts: 2 }"),
    ));
    // No other endpoint exists: each 503 is retried on the same one.
    for i in 0..5 {
        let path = format!("/u/{i}");
        let r = get_path(addr, &path).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "a".into()), "{path}");
        assert_eq!(a.count_path(&path), 2, "{path}");
    }
}

/// An h2c server that refuses every stream (RST_STREAM REFUSED_STREAM);
/// returns its address and the count of streams refused.
async fn refusing_h2() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            conns.spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
            while conns.try_join_next().is_some() {}
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_stream_is_retried_for_any_method() {
    let (refuser, refused) = refusing_h2().await;
    let b = upstream::named("b").await;
    let routes = [
        route("u", "/u", ", retry: { attempts: 2 }"),
        route(
            "only503",
            "/only503",
            r#", retry: { attempts: 2, on: ["503"] }"#,
        ),
    ]
    .concat();
    let (gw, addr) = gateway(&config(
        "workers: 1",
        &format!(
            r#"{{ protocol: h2c, endpoints: ["{refuser}", "{}"] }}"#,
            b.addr
        ),
        &routes,
    ));
    // REFUSED_STREAM means the upstream did not process the request: even a
    // POST is retried, by default (`refused_stream` is in the default list).
    for i in 0..6 {
        let path = format!("/u/{i}");
        let sent = body(i, 200);
        let r = send(addr, request(Method::POST, &path, sent.clone())).await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "b".into()),
            "{path}\n{}",
            gw.stderr()
        );
        assert_eq!(bodies(&b, &path), vec![sent], "{path}");
    }
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the refusing endpoint was never tried"
    );
    // Without `refused_stream` in the list: the gateway's 502.
    let mut not_retried = 0;
    for i in 0..6 {
        let path = format!("/only503/{i}");
        let before = refused.load(Ordering::SeqCst);
        let r = send(addr, request(Method::GET, &path, Bytes::new())).await;
        if refused.load(Ordering::SeqCst) > before {
            assert_problem(&r, 502, "upstream-failed", &path);
            assert_eq!(b.count_path(&path), 0, "{path}");
            not_retried += 1;
        } else {
            assert_eq!((r.status.as_u16(), r.text()), (200, "b".into()), "{path}");
        }
    }
    // Round robin over two endpoints, no retries: every other request.
    assert!(
        not_retried >= 2,
        "the refusing endpoint got {not_retried} of 6"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_retry_once_the_response_has_started() {
    // Both endpoints send a head announcing 100 bytes, 10 of them, and close.
    let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec();
    let a = raw::upstream(Action::WriteAndClose(cut.clone())).await;
    let b = raw::upstream(Action::WriteAndClose(cut)).await;
    let (_gw, addr) = gateway(&config(
        "",
        &format!(r#"{{ endpoints: ["{}", "{}"] }}"#, a.addr, b.addr),
        &route("u", "/u", ", retry: { attempts: 3 }"),
    ));
    for i in 1..=4 {
        let resp = raw::exchange(
            addr,
            format!("GET /u/{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(),
        )
        .await
        .expect("response head");
        assert_eq!(resp.status, 200);
        assert!(!resp.complete, "a complete response: {:?}", resp.text());
        assert!(resp.body.starts_with(b"0123456789"), "{:?}", resp.text());
        // Give a (wrong) retry time to show up.
        sleep(Duration::from_millis(200)).await;
        assert_eq!(a.requests() + b.requests(), i, "request {i} was retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attempts_go_to_distinct_endpoints_and_the_last_answer_is_returned() {
    // Attempts in arrival order: (endpoint, path).
    let log: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let mk = |name: &'static str| {
        let log = log.clone();
        upstream::start(move |s: &Seen| {
            log.lock().unwrap().push((name, s.uri.path().to_owned()));
            reply(503, name)
        })
    };
    let (a, b, c) = (mk("a").await, mk("b").await, mk("c").await);
    let routes = [
        route("three", "/three", ", retry: { attempts: 3 }"),
        route("default", "/default", ", retry: {}"),
    ]
    .concat();
    // Random balancing, so distinct endpoints are the retry policy's doing.
    let (_gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ balance: random, endpoints: ["{}", "{}", "{}"] }}"#,
            a.addr, b.addr, c.addr
        ),
        &routes,
    ));
    for (prefix, attempts) in [("/three", 3), ("/default", 2)] {
        for i in 0..6 {
            let path = format!("{prefix}/{i}");
            let r = get_path(addr, &path).await;
            let tried: Vec<&str> = log
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, p)| *p == path)
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(tried.len(), attempts, "{path}: {tried:?}");
            let mut distinct = tried.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), attempts, "{path}: {tried:?}");
            // The last attempt's answer, as the upstream sent it.
            assert_upstream_503(&r, &[tried[attempts - 1]], &path);
        }
    }
}

// ---------------------------------------------------------------------------
// Retry budget

/// Clients in the retry storm.
const STORM: usize = 40;

/// 40 concurrent GETs with `attempts: 5` against two endpoints that always
/// answer 503, with `upstream_extra` in the upstream (a budget, caps). The first 40 attempts are held at the upstream
/// until all 40 have arrived, then fail together; later attempts fail after
/// 100 ms. Returns the attempts the upstream received and the clients' replies.
async fn storm(upstream_extra: &str) -> (usize, Vec<Reply>) {
    let arrivals = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(watch::channel(false).0);
    let barrier_timed_out = Arc::new(AtomicBool::new(false));
    let mk = |name: &'static str| {
        let (arrivals, released, barrier_timed_out) = (
            arrivals.clone(),
            released.clone(),
            barrier_timed_out.clone(),
        );
        upstream::start_async(move |_| {
            let (arrivals, released, barrier_timed_out) = (
                arrivals.clone(),
                released.clone(),
                barrier_timed_out.clone(),
            );
            async move {
                let n = arrivals.fetch_add(1, Ordering::SeqCst) + 1;
                if n <= STORM {
                    if n == STORM {
                        released.send_replace(true);
                    }
                    let mut rx = released.subscribe();
                    if timeout(Duration::from_secs(3), rx.wait_for(|r| *r))
                        .await
                        .is_err()
                    {
                        barrier_timed_out.store(true, Ordering::SeqCst);
                    }
                } else {
                    sleep(Duration::from_millis(100)).await;
                }
                reply(503, name)
            }
        })
    };
    let (a, b) = (mk("a").await, mk("b").await);
    let (gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}", "{}"]{upstream_extra} }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ", retry: { attempts: 5 }"),
    ));
    let mut set = JoinSet::new();
    for i in 0..STORM {
        set.spawn(async move { get_path(addr, &format!("/u/{i}")).await });
    }
    let mut replies = Vec::new();
    while let Some(r) = timeout(LIMIT, set.join_next()).await.expect("storm hung") {
        replies.push(r.unwrap());
    }
    assert!(
        !barrier_timed_out.load(Ordering::SeqCst),
        "the {STORM} first attempts were never in flight together ({} arrived)\n{}",
        arrivals.load(Ordering::SeqCst),
        gw.stderr()
    );
    // No late attempt after the clients have their answers.
    sleep(Duration::from_millis(200)).await;
    assert_eq!(a.count() + b.count(), arrivals.load(Ordering::SeqCst));
    (arrivals.load(Ordering::SeqCst), replies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_budget_bounds_a_retry_storm() {
    let (attempts, replies) = storm(", retry_budget: { percent: 10, min_concurrency: 1 }").await;
    eprintln!("tight budget: {attempts} attempts");
    for r in &replies {
        assert_upstream_503(r, &["a", "b"], "storm");
    }
    // Bound: the 40 first attempts fail together while 40 requests are in
    // flight, so at most max(1, 10% of 40) = 4 retries may start (5 if the
    // share is rounded up or retries count as requests in flight). Every other
    // request ends at that refusal with its 503, and none asks again; a granted
    // retry holds its place for at least the 100 ms its attempt takes, far
    // longer than the 40 failures take to arrive. So at most 5 requests go on,
    // each with at most 4 retries: 40 + 5 * 4 = 60 attempts at most (of the
    // 200 an unbounded storm makes, see below).
    // Lower bound: min_concurrency 1 always lets one retry run, so the first
    // failure is retried: more than 40.
    assert!(
        (STORM + 1..=60).contains(&attempts),
        "{attempts} upstream attempts for {STORM} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generous_retry_budget_lets_every_retry_run() {
    let (attempts, replies) = storm(", retry_budget: { percent: 100, min_concurrency: 100 }").await;
    for r in &replies {
        assert_upstream_503(r, &["a", "b"], "storm");
    }
    // 40 requests in flight at most, so at most 40 retries: always within
    // max(100, 100% of in flight). Every request makes its 5 attempts.
    assert_eq!(attempts, STORM * 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_retries_caps_retries_in_flight() {
    let (attempts, replies) = storm(
        ", retry_budget: { percent: 100, min_concurrency: 100 }, circuit_breaker: { max_retries: 2 }",
    )
    .await;
    eprintln!("max_retries 2: {attempts} attempts");
    // A retry over the cap is not made; the client gets the last answer.
    for r in &replies {
        assert_upstream_503(r, &["a", "b"], "storm");
    }
    // As for the budget above, with 2 retries at once instead of 4: at most
    // 2 requests get past the wave, each with at most 4 retries (40 + 8),
    // and the first failure is always retried.
    assert!(
        (STORM + 1..=STORM + 8).contains(&attempts),
        "{attempts} upstream attempts for {STORM} requests"
    );
}

// ---------------------------------------------------------------------------
// Outlier detection

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consecutive_5xx_ejects_for_a_growing_time_and_the_endpoint_returns() {
    let a = answering("a", 503).await;
    let b = answering("b", 200).await;
    let (gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}", "{}"], outlier_detection: {{ consecutive_5xx: 3, base_ejection_time: 1s }} }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ""),
    ));
    // Round robin: a gets every other request (per worker) until its third 503.
    until_count(addr, &a, 3, "/u/warm", 30).await;
    let ejected = Instant::now();
    sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        let r = get_path(addr, "/u/during").await;
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "b".into()),
            "{}",
            gw.stderr()
        );
    }
    assert_eq!(a.count(), 3, "a got traffic while ejected");
    assert!(
        ejected.elapsed() < Duration::from_millis(900),
        "inconclusive: the check outlasted the 1 s ejection ({:?})",
        ejected.elapsed()
    );

    // Back after the ejection time.
    sleep(Duration::from_millis(1200).saturating_sub(ejected.elapsed())).await;
    until_count(addr, &a, 4, "/u/back", 20).await;
    // Three more 503s in a row: ejected again, now for 2 x 1 s.
    until_count(addr, &a, 6, "/u/again", 20).await;
    let again = Instant::now();
    sleep(Duration::from_millis(1300)).await;
    for _ in 0..20 {
        let r = get_path(addr, "/u/longer").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "b".into()));
    }
    assert_eq!(
        a.count(),
        6,
        "the second ejection was not longer than the first"
    );
    assert!(
        again.elapsed() < Duration::from_millis(1900),
        "inconclusive: {:?}",
        again.elapsed()
    );
}

/// An upstream answering 503 to its 2nd, 4th, ... request and 200 otherwise.
async fn every_second_fails(name: &'static str) -> Upstream {
    let n = AtomicUsize::new(0);
    upstream::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            reply(503, name)
        } else {
            reply(200, name)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_ratio_ejects_once_the_window_has_min_requests() {
    let a = every_second_fails("a").await;
    let b = answering("b", 200).await;
    let (_gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}", "{}"], outlier_detection: {{ consecutive_5xx: 0, failure_ratio: 0.3, min_requests: 10, window: 10s, base_ejection_time: 10s }} }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ""),
    ));
    // a's 10th request is its 5th failure: 5/10 = 0.5 >= 0.3 with 10 requests
    // in the window. Before that the ratio was already 0.5 but with fewer
    // than min_requests, so a must have kept its traffic until then.
    until_count(addr, &a, 10, "/u/warm", 40).await;
    sleep(Duration::from_millis(50)).await;
    for _ in 0..30 {
        let r = get_path(addr, "/u/after").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "b".into()));
    }
    assert_eq!(a.count(), 10, "a still got traffic after 5 failures in 10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_ratio_below_the_threshold_does_not_eject() {
    let a = every_second_fails("a").await;
    let b = answering("b", 200).await;
    let (_gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}", "{}"], outlier_detection: {{ consecutive_5xx: 0, failure_ratio: 0.6, min_requests: 10, window: 10s, base_ejection_time: 10s }} }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ""),
    ));
    for _ in 0..40 {
        get_path(addr, "/u/x").await;
    }
    // Round robin gives a about half of 40; a ratio of 0.5 < 0.6 never ejects.
    assert!(a.count() >= 15, "a got {} of 40", a.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consecutive_connect_failures_eject_a_dead_endpoint() {
    let dead = closed_port().await;
    let live = upstream::named("live").await;
    let (gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{dead}", "{}"], outlier_detection: {{ consecutive_5xx: 0, consecutive_connect_failures: 2, base_ejection_time: 10s }} }}"#,
            live.addr
        ),
        &route("u", "/u", ""),
    ));
    // No retries: the dead endpoint's share fails with 502 until its second
    // connect failure ejects it; after that every request reaches `live`.
    let mut failures = 0;
    for i in 0..30 {
        let r = get_path(addr, &format!("/u/{i}")).await;
        if r.status == 502 {
            failures += 1;
            assert!(i < 10, "request {i} still went to the dead endpoint");
        } else {
            assert_eq!(
                (r.status.as_u16(), r.text()),
                (200, "live".into()),
                "{}",
                gw.stderr()
            );
        }
    }
    assert_eq!(failures, 2);
    assert_eq!(live.count(), 28);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_ejection_percent_keeps_an_endpoint_in_service() {
    let a = answering("a", 503).await;
    let b = answering("b", 503).await;
    let (_gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}", "{}"], outlier_detection: {{ consecutive_5xx: 2, base_ejection_time: 10s, max_ejection_percent: 50 }} }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ""),
    ));
    for i in 0..20 {
        // Always an upstream's own 503: never "no endpoint available".
        assert_upstream_503(
            &get_path(addr, "/u/x").await,
            &["a", "b"],
            &format!("request {i}"),
        );
    }
    // The first endpoint to fail twice is ejected; the other may not be (one
    // of two is 50%), and takes every later request.
    let (ejected, kept) = if a.count() < b.count() {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!((ejected.count(), kept.count()), (2, 18));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_endpoint_may_always_be_ejected() {
    let ups = [
        answering("a", 503).await,
        answering("b", 503).await,
        answering("c", 503).await,
    ];
    let (_gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}", "{}", "{}"], outlier_detection: {{ consecutive_5xx: 2, base_ejection_time: 10s, max_ejection_percent: 10 }} }}"#,
            ups[0].addr, ups[1].addr, ups[2].addr
        ),
        &route("u", "/u", ""),
    ));
    for i in 0..30 {
        assert_upstream_503(
            &get_path(addr, "/u/x").await,
            &["a", "b", "c"],
            &format!("request {i}"),
        );
    }
    // 10% of 3 is less than one endpoint, yet one may be ejected: exactly one
    // stops at 2 requests; the other two share the rest.
    let mut counts: Vec<usize> = ups.iter().map(Upstream::count).collect();
    counts.sort_unstable();
    assert_eq!(counts[0], 2, "{counts:?}");
    assert!(counts[1] >= 10, "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn panic_mode_uses_ejected_endpoints() {
    for panic_mode in [false, true] {
        let a = answering("a", 503).await;
        let (gw, addr) = gateway(&config(
            "",
            &format!(
                r#"{{ endpoints: ["{}"], panic_mode: {panic_mode}, outlier_detection: {{ consecutive_5xx: 1, base_ejection_time: 10s, max_ejection_percent: 100 }} }}"#,
                a.addr
            ),
            &route("u", "/u", ""),
        ));
        // The first 503 ejects the only endpoint.
        assert_upstream_503(&get_path(addr, "/u/1").await, &["a"], "first");
        sleep(Duration::from_millis(50)).await;
        for i in 2..6 {
            let r = get_path(addr, &format!("/u/{i}")).await;
            if panic_mode {
                assert_upstream_503(&r, &["a"], "panic mode");
            } else {
                assert_problem(&r, 503, "no-endpoint", &gw.stderr());
            }
        }
        assert_eq!(
            a.count(),
            if panic_mode { 5 } else { 1 },
            "panic_mode: {panic_mode}"
        );
    }
}

// ---------------------------------------------------------------------------
// State across reloads

/// `u` with a (always 503) and b (200), ejecting after 2 consecutive 5xx for
/// 10 s; `upstream_extra` goes into `u`, and `/version` answers `version`.
fn reload_config(a: SocketAddr, b: SocketAddr, upstream_extra: &str, version: &str) -> String {
    config(
        "",
        &format!(
            r#"{{ endpoints: ["{a}", "{b}"], outlier_detection: {{ consecutive_5xx: 2, base_ejection_time: 10s }}{upstream_extra} }}"#
        ),
        &format!(
            "{}  - {{ name: version, match: {{ path: /version }}, respond: {{ body: {version} }} }}\n",
            route("u", "/u", "")
        ),
    )
}

/// Replaces the config, sends SIGHUP, and waits until `/version` answers `version`.
async fn reload_to(gw: &Gateway, addr: SocketAddr, yaml: &str, version: &str) {
    gw.replace_config(yaml);
    gw.signal("HUP");
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = get_path(addr, "/version").await;
        if r.status == 200 && r.text() == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reload to {version} never applied:\n{}",
            gw.stderr()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ejection_survives_a_reload_only_while_the_upstream_is_unchanged() {
    let a = answering("a", 503).await;
    let b = answering("b", 200).await;
    let (gw, addr) = gateway(&reload_config(a.addr, b.addr, "", "v1"));
    until_count(addr, &a, 2, "/u/warm", 20).await;
    sleep(Duration::from_millis(50)).await;
    for _ in 0..10 {
        assert_eq!(get_path(addr, "/u/ejected").await.text(), "b");
    }
    assert_eq!(a.count(), 2);

    // Only the routes change: the upstream and its ejection stay.
    reload_to(&gw, addr, &reload_config(a.addr, b.addr, "", "v2"), "v2").await;
    for _ in 0..20 {
        let r = get_path(addr, "/u/kept").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "b".into()));
    }
    assert_eq!(
        a.count(),
        2,
        "the ejection was lost on a reload that kept the upstream"
    );

    // The upstream's definition changes: rebuilt, nothing ejected.
    reload_to(
        &gw,
        addr,
        &reload_config(a.addr, b.addr, ", timeouts: { connect: 4s }", "v3"),
        "v3",
    )
    .await;
    until_count(addr, &a, 3, "/u/rebuilt", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_state_survives_a_reload_only_while_the_upstream_is_unchanged() {
    // d serves traffic but fails its health check, slowly: a check takes
    // 400 ms, so a health state built afresh would let traffic reach d for
    // at least 400 ms.
    let d = upstream::start_async(|s: Seen| async move {
        if s.uri.path() == "/healthz" {
            sleep(Duration::from_millis(400)).await;
            reply(503, "d")
        } else {
            reply(200, "d")
        }
    })
    .await;
    let e = upstream::named("e").await;
    let yaml = |version: &str, upstream_extra: &str| {
        config(
            "",
            &format!(
                r#"{{ endpoints: ["{}", "{}"], health_check: {{ type: http, path: /healthz, interval: 500ms, timeout: 1s, unhealthy_threshold: 1, healthy_threshold: 1 }}{upstream_extra} }}"#,
                d.addr, e.addr
            ),
            &format!(
                "{}  - {{ name: version, match: {{ path: /version }}, respond: {{ body: {version} }} }}\n",
                route("u", "/u", "")
            ),
        )
    };
    let (gw, addr) = gateway(&yaml("v1", ""));
    let mut conn = Conn::new(addr);
    // Wait (bounded) until d is marked down: 10 requests in a row avoid it.
    let deadline = Instant::now() + LIMIT;
    let mut streak = 0;
    while streak < 10 {
        assert!(
            Instant::now() < deadline,
            "d never marked down:\n{}",
            gw.stderr()
        );
        if conn.ok("/u/wait").await == "e" {
            streak += 1;
        } else {
            streak = 0;
            sleep(Duration::from_millis(20)).await;
        }
    }
    let before = d.count_prefix("/u/");

    // Only the routes change: the upstream keeps its verdicts.
    reload_to(&gw, addr, &yaml("v2", ""), "v2").await;
    let reloaded = Instant::now();
    for _ in 0..20 {
        assert_eq!(conn.ok("/u/after").await, "e");
    }
    assert!(
        reloaded.elapsed() < Duration::from_millis(350),
        "inconclusive: 20 requests took {:?}",
        reloaded.elapsed()
    );
    assert_eq!(
        d.count_prefix("/u/"),
        before,
        "d got traffic after a reload that kept the upstream"
    );

    // The upstream's definition changes: fresh state, in which endpoints
    // start healthy (as documented) until their first check, which takes
    // 400 ms for d; round robin sends it about half meanwhile.
    reload_to(&gw, addr, &yaml("v3", ", timeouts: { connect: 4s }"), "v3").await;
    let reloaded = Instant::now();
    for _ in 0..20 {
        conn.ok("/u/rebuilt").await;
    }
    assert!(
        reloaded.elapsed() < Duration::from_millis(350),
        "inconclusive: 20 requests took {:?}",
        reloaded.elapsed()
    );
    assert!(
        d.count_prefix("/u/rebuilt") >= 5,
        "d got {} of 20 right after its upstream was rebuilt",
        d.count_prefix("/u/rebuilt")
    );
}

// ---------------------------------------------------------------------------
// Circuit breaking

/// Spawns a GET of `/u/{i}` that reports how long it took.
fn spawn_get(set: &mut JoinSet<(usize, Duration, Reply)>, addr: SocketAddr, i: usize) {
    set.spawn(async move {
        let start = Instant::now();
        let r = send(addr, get("localhost", &format!("/u/{i}"))).await;
        (i, start.elapsed(), r)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_requests_rejects_at_once_while_the_upstream_is_saturated() {
    let up = raw::upstream(Action::Hold(raw::ok_response("held"))).await;
    // Two workers: the cap holds across them.
    let (gw, addr) = gateway(&config(
        "workers: 2",
        &format!(
            r#"{{ endpoints: ["{}"], circuit_breaker: {{ max_requests: 2 }} }}"#,
            up.addr
        ),
        &route("u", "/u", ""),
    ));
    let mut set = JoinSet::new();
    for i in 0..6 {
        spawn_get(&mut set, addr, i);
    }
    // Four answers come back while the upstream still holds two requests.
    for _ in 0..4 {
        let (i, took, r) = timeout(Duration::from_secs(3), set.join_next())
            .await
            .unwrap_or_else(|_| panic!("no rejection while saturated:\n{}", gw.stderr()))
            .unwrap()
            .unwrap();
        assert_cap_rejection(&r, "max_requests", up.addr);
        assert!(
            took < Duration::from_secs(1),
            "/u/{i} rejected after {took:?}"
        );
    }
    assert!(up.wait_requests(2, LIMIT).await);
    sleep(Duration::from_millis(100)).await;
    assert_eq!(up.requests(), 2);
    assert_eq!(set.len(), 2);

    up.release();
    while let Some(done) = timeout(LIMIT, set.join_next()).await.unwrap() {
        let (i, _, r) = done.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "held".into()),
            "/u/{i}"
        );
    }
    // No longer saturated: requests pass again.
    for i in 6..10 {
        assert_eq!(get_path(addr, &format!("/u/{i}")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_pending_rejects_requests_beyond_those_waiting_for_a_connection() {
    let up = raw::upstream(Action::Hold(raw::ok_response("held"))).await;
    let (gw, addr) = gateway(&config(
        "workers: 1",
        &format!(
            r#"{{ endpoints: ["{}"], pool: {{ max_connections: 1 }}, circuit_breaker: {{ max_pending: 1 }} }}"#,
            up.addr
        ),
        &route("u", "/u", ""),
    ));
    let mut set = JoinSet::new();
    spawn_get(&mut set, addr, 0);
    assert!(up.wait_requests(1, LIMIT).await, "{}", gw.stderr());
    // The second waits for the only connection.
    spawn_get(&mut set, addr, 1);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(set.len(), 2, "the pending request was answered");
    let mut rejected = JoinSet::new();
    for i in 2..5 {
        spawn_get(&mut rejected, addr, i);
    }
    for _ in 2..5 {
        let (i, took, r) = timeout(Duration::from_secs(3), rejected.join_next())
            .await
            .unwrap_or_else(|_| panic!("no rejection:\n{}", gw.stderr()))
            .unwrap()
            .unwrap();
        assert_cap_rejection(&r, "max_pending", up.addr);
        assert!(
            took < Duration::from_secs(1),
            "/u/{i} rejected after {took:?}"
        );
    }
    assert_eq!(set.len(), 2);
    assert_eq!(up.requests(), 1);

    up.release();
    while let Some(done) = timeout(LIMIT, set.join_next()).await.unwrap() {
        let (i, _, r) = done.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.text()),
            (200, "held".into()),
            "/u/{i}"
        );
    }
    assert_eq!(up.requests(), 2);
    assert_eq!(
        up.accepted(),
        1,
        "the pool cap of one connection was exceeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_rejects_a_request_that_needs_a_new_connection() {
    let up = raw::upstream(Action::Hold(raw::ok_response("held"))).await;
    let (gw, addr) = gateway(&config(
        "workers: 1",
        &format!(
            r#"{{ endpoints: ["{}"], circuit_breaker: {{ max_connections: 1 }} }}"#,
            up.addr
        ),
        &route("u", "/u", ""),
    ));
    let mut set = JoinSet::new();
    spawn_get(&mut set, addr, 0);
    assert!(up.wait_requests(1, LIMIT).await, "{}", gw.stderr());
    // The only connection is busy: another one would exceed the cap.
    let start = Instant::now();
    let r = send(addr, get("localhost", "/u/1")).await;
    assert_cap_rejection(&r, "max_connections", up.addr);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(up.accepted(), 1);
    assert_eq!(set.len(), 1);

    up.release();
    let (_, _, r) = timeout(LIMIT, set.join_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "held".into()));
    // The connection is idle again: reused, within the cap.
    sleep(Duration::from_millis(100)).await;
    let r = get_path(addr, "/u/2").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "held".into()));
    assert_eq!(up.accepted(), 1);
}

// ---------------------------------------------------------------------------
// Balancing

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peak_ewma_sends_most_traffic_to_the_fast_endpoint() {
    let slow = upstream::start_async(|_| async {
        sleep(Duration::from_millis(30)).await;
        reply(200, "slow")
    })
    .await;
    let fast = upstream::named("fast").await;
    let (_gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ balance: peak_ewma, endpoints: ["{}", "{}"] }}"#,
            slow.addr, fast.addr
        ),
        &route("u", "/u", ""),
    ));
    // One request at a time: nothing is in flight at any pick, so latency
    // alone decides. The slow endpoint's peak EWMA is 30 ms before it has
    // answered (the default) and at least ~30 ms after (decaying with a 10 s
    // time constant); the fast one's is far below after its first answer.
    // Round robin, random or least_request would send about half (30) there.
    let mut conn = Conn::new(addr);
    for _ in 0..60 {
        conn.ok("/u/seq").await;
    }
    let (s, f) = (slow.count(), fast.count());
    eprintln!("peak_ewma sequential: fast {f}, slow {s}");
    assert!(f >= 54, "sequential: fast {f}, slow {s}");

    // Four at a time, 200 in all: the fast endpoint still gets > 75%.
    let mut set = JoinSet::new();
    for _ in 0..4 {
        set.spawn(async move {
            let mut conn = Conn::new(addr);
            for _ in 0..50 {
                conn.ok("/u/conc").await;
            }
        });
    }
    while let Some(done) = timeout(LIMIT, set.join_next()).await.unwrap() {
        done.unwrap();
    }
    let (s, f) = (slow.count_prefix("/u/conc"), fast.count_prefix("/u/conc"));
    eprintln!("peak_ewma concurrent: fast {f}, slow {s}");
    assert_eq!(s + f, 200);
    assert!(f > 150, "concurrent: fast {f}, slow {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_start_ramps_a_returning_endpoint_up() {
    // a fails its first 3 requests (and is ejected for 300 ms), then serves.
    let n = AtomicUsize::new(0);
    let a = upstream::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) < 3 {
            reply(503, "a")
        } else {
            reply(200, "a")
        }
    })
    .await;
    let b = answering("b", 200).await;
    let (_gw, addr) = gateway(&config(
        "workers: 1",
        &format!(
            r#"{{ endpoints: ["{}", "{}"], slow_start: 2s, outlier_detection: {{ consecutive_5xx: 3, base_ejection_time: 300ms }} }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ""),
    ));
    until_count(addr, &a, 3, "/u/warm", 30).await;
    let ejected = Instant::now();
    // Back at +300 ms at the latest (the ejection came before the client had
    // the third 503); the ramp then takes 2 s.
    sleep(Duration::from_millis(350)).await;
    let mut conn = Conn::new(addr);
    let start = Instant::now();
    for _ in 0..40 {
        conn.ok("/u/early").await;
    }
    let took = start.elapsed();
    let early = a.count_prefix("/u/early");
    eprintln!("slow start: a got {early} of 40 in {took:?}");
    // These 40 ran 50 ms to at most 550 ms after a's return, so its warmth
    // was at most 0.55 / 2 = 0.275: round robin lands every other pick on a,
    // which keeps it with that probability, a share of at most ~14% (5.5 of
    // 40; 22% if the ramp scaled weights instead). Without slow start: 20.
    assert!(took < Duration::from_millis(500), "inconclusive: {took:?}");
    assert!(early <= 12, "a got {early} of 40 right after it returned");

    // After the ramp: an equal share again.
    sleep(Duration::from_millis(2600).saturating_sub(ejected.elapsed())).await;
    for _ in 0..40 {
        conn.ok("/u/late").await;
    }
    let late = a.count_prefix("/u/late");
    eprintln!("slow start: a got {late} of 40 after the ramp");
    assert!(late >= 14, "a got {late} of 40 after the ramp");
}

// ---------------------------------------------------------------------------
// Active health checks and retries together

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endpoint_killed_under_load_fails_no_request() {
    let handler = |name: &'static str| {
        move |s: &Seen| {
            if s.uri.path() == "/healthz" {
                reply(200, "ok")
            } else {
                reply(200, name)
            }
        }
    };
    // Eight clients keep at most eight requests in flight, so at most eight
    // retries run at once: `min_concurrency: 8` means the budget never refuses
    // one, and this test is about health checks and retries covering the gap
    // (the budget has its own tests). With the default budget (3 at once) a
    // few of the ~4 simultaneous connect failures per round would get 502.
    let a = upstream::start_killable(handler("a")).await;
    let b = upstream::start_killable(handler("b")).await;
    let (gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}", "{}"], health_check: {{ type: http, path: /healthz, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1, healthy_threshold: 1 }}, retry_budget: {{ percent: 100, min_concurrency: 8 }} }}"#,
            a.addr, b.addr
        ),
        &route("u", "/u", ", retry: { attempts: 3 }"),
    ));

    let start = Instant::now();
    let end = start + Duration::from_millis(2000);
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let total = Arc::new(AtomicUsize::new(0));
    let mut load = JoinSet::new();
    for t in 0..8 {
        let (failures, total) = (failures.clone(), total.clone());
        load.spawn(async move {
            let mut conn = Conn::new(addr);
            while Instant::now() < end {
                match conn.get(&format!("/u/{t}")).await {
                    Ok((200, body)) if body == "a" || body == "b" => {}
                    other => failures
                        .lock()
                        .unwrap()
                        .push(format!("{:?}: {other:?}", start.elapsed())),
                }
                total.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    sleep(Duration::from_millis(600)).await;
    let a_before_kill = a.count_prefix("/u/");
    a.kill();
    // The listener is gone once connecting is refused.
    let deadline = Instant::now() + LIMIT;
    while TcpStream::connect(a.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "killed endpoint still accepts");
        sleep(Duration::from_millis(5)).await;
    }
    // Settle: checks every 100 ms, one failure marks a down.
    sleep(Duration::from_millis(500)).await;
    // A tripwire on a's port: it fails health checks (so a stays down) and
    // records any request the balancer still sends there.
    let tripwire = upstream::start_async_at(a.addr, |s: Seen| async move {
        if s.uri.path() == "/healthz" {
            reply(503, "tripwire")
        } else {
            reply(200, "tripwire")
        }
    })
    .await;
    let b_at_trip = b.count_prefix("/u/");

    while let Some(done) = timeout(LIMIT, load.join_next()).await.unwrap() {
        done.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let total = total.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} failed, the first: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        gw.stderr().lines().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(total >= 200, "only {total} requests in 2 s");
    assert!(a_before_kill > 0, "a got no traffic before it was killed");
    assert_eq!(
        tripwire.count_prefix("/u/"),
        0,
        "traffic still went to the killed endpoint"
    );
    assert!(
        b.count_prefix("/u/") > b_at_trip,
        "no traffic after the kill"
    );
}

// ---------------------------------------------------------------------------
// Review fixes: each test below failed before the fix it is named after.

/// A minimal HTTP/1.1 upstream on raw TCP, for behaviour hyper's server does
/// not offer (answering before the body is read, a body sent late). Records
/// the request line of every head it reads; aborting the accept task (on
/// drop) closes every connection.
struct RawServer {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    /// Request heads read so far.
    fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Request heads read so far whose target is exactly `path`.
    fn count_path(&self, path: &str) -> usize {
        let line = format!(" {path} HTTP/1.1");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.ends_with(&line))
            .count()
    }

    /// Waits (bounded) until `n` heads were read.
    async fn wait_count(&self, n: usize) {
        let deadline = Instant::now() + LIMIT;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} requests",
                self.count()
            );
            sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a [`RawServer`] whose connections are served by `serve(stream, lines)`.
async fn raw_server<F, Fut>(serve: F) -> RawServer
where
    F: Fn(TcpStream, Arc<Mutex<Vec<String>>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let rec = lines.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            conns.spawn(serve(stream, rec.clone()));
            while conns.try_join_next().is_some() {}
        }
    });
    RawServer { addr, lines, task }
}

/// Reads a request head off `stream` (bytes past it stay in `buf`), records
/// its request line in `lines` and returns its Content-Length (0 without
/// one); `None` at EOF.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    lines: &Mutex<Vec<String>>,
) -> Option<usize> {
    let end = loop {
        if let Some(i) = raw::find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16384];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut head_lines = head.split("\r\n");
    lines
        .lock()
        .unwrap()
        .push(head_lines.next().unwrap_or_default().to_owned());
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "expected a Content-Length body: {head}"
    );
    Some(
        head_lines
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0),
    )
}

/// Reads and discards `len` body bytes (those already in `buf` first); false
/// at EOF.
async fn drain_body(stream: &mut TcpStream, buf: &mut Vec<u8>, len: usize) -> bool {
    let from_buf = len.min(buf.len());
    buf.drain(..from_buf);
    let mut left = len - from_buf;
    let mut chunk = [0u8; 65536];
    while left > 0 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                let body = n.min(left);
                left -= body;
                buf.extend_from_slice(&chunk[body..n]);
            }
        }
    }
    true
}

/// An upstream that answers `503` (body and `x-upstream`: `a`) as soon as it
/// has read a request head, before reading the body, and only then reads
/// (and drops) the body; keep-alive.
async fn fails_before_the_body() -> RawServer {
    raw_server(|mut stream, lines| async move {
        let mut buf = Vec::new();
        while let Some(len) = read_head(&mut stream, &mut buf, &lines).await {
            let answer =
                b"HTTP/1.1 503 Service Unavailable\r\nx-upstream: a\r\ncontent-length: 1\r\n\r\na";
            if stream.write_all(answer).await.is_err()
                || !drain_body(&mut stream, &mut buf, len).await
            {
                return;
            }
        }
    })
    .await
}

/// Fix: the retry takes the replayable body (which stops the failed attempt's
/// body) before the backoff, not after it. Before, A's connection kept pulling
/// the client's body during the backoff, past the replay buffer, and the retry
/// found no body to send: `500` (`request body not replayable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_outgrowing_the_replay_buffer_during_the_backoff_is_never_a_500() {
    const LEN: usize = 1 << 20;
    const FIRST: usize = 10_000;
    let a = fails_before_the_body().await;
    let b = answering("b", 200).await;
    // backoff 100ms: the pause is 50..100 ms, well after the client's 30 ms
    // pause ends and the rest of its body (far beyond 64 KiB) is on its way.
    let (gw, addr) = gateway(&config(
        "workers: 1",
        &format!(r#"{{ endpoints: ["{}", "{}"] }}"#, a.addr, b.addr),
        &route(
            "u",
            "/u",
            r#", retry: { on: ["503"], attempts: 2, non_idempotent: true, replay_buffer: 64KiB, backoff: 100ms }"#,
        ),
    ));
    let mut retried = 0;
    for i in 0..5 {
        let path = format!("/u/put/{i}");
        let sent = body(i, LEN);
        // One socket, two handles: the body is written while the answer is
        // read, as a client that streams its upload does.
        let std = raw::connect(addr).await.into_std().unwrap();
        let mut writer = TcpStream::from_std(std.try_clone().unwrap()).unwrap();
        let mut reader = TcpStream::from_std(std).unwrap();
        let upload = {
            let (path, sent) = (path.clone(), sent.clone());
            tokio::spawn(async move {
                let head = format!(
                    "PUT {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {LEN}\r\n\r\n"
                );
                timeout(LIMIT, async {
                    writer.write_all(head.as_bytes()).await?;
                    writer.write_all(&sent[..FIRST]).await?;
                    sleep(Duration::from_millis(30)).await;
                    writer.write_all(&sent[FIRST..]).await
                })
                .await
            })
        };
        let r = raw::read_response(&mut reader, false)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", gw.stderr()));
        let at_a = a.count_path(&path);
        match r.status {
            200 => {
                assert_eq!(r.text(), "b", "{path}");
                let got = bodies(&b, &path);
                assert_eq!(got.len(), 1, "{path}");
                assert!(
                    got[0] == sent,
                    "{path}: b got {} bytes, not the {LEN} sent",
                    got[0].len()
                );
                retried += at_a;
            }
            503 => {
                // A's own answer, as is: the retry was refused because the
                // body could no longer be replayed.
                assert_eq!(
                    (r.header("x-upstream"), r.text().as_str()),
                    (Some("a"), "a"),
                    "{path}: not the upstream's 503: {:?}",
                    r.headers
                );
                assert_eq!(at_a, 1, "{path}");
                assert_eq!(b.count_path(&path), 0, "{path}");
            }
            _ => panic!(
                "{path}: {} {:?} {}\n{}",
                r.status,
                r.headers,
                r.text(),
                gw.stderr()
            ),
        }
        // The whole body was taken: the writer ends (bounded).
        let _ = timeout(LIMIT, upload).await.expect("upload hangs");
    }
    // Round robin over two endpoints: A is first for at least two of five
    // (in practice for all five, the retry's pick moving the turn on to A).
    assert!(a.count() >= 2, "A tried {} times", a.count());
    // A answers at once and the client pauses 30 ms: the answer comes well
    // before the body outgrows the buffer, so the retry is made.
    assert!(retried >= 1, "no retry from A to B carried the whole body");
}

/// Fix: the next endpoint is picked before the failed answer is let go.
/// Before, the only endpoint, ejected by its own 503, left the retry nowhere
/// to go and the client got the gateway's `503 no-endpoint` instead of the
/// upstream's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_with_nowhere_to_go_returns_the_failed_answer() {
    let a = answering("a", 503).await;
    let (gw, addr) = gateway(&config(
        "",
        &format!(
            r#"{{ endpoints: ["{}"], outlier_detection: {{ consecutive_5xx: 1, base_ejection_time: 10s }} }}"#,
            a.addr
        ),
        &route("u", "/u", r#", retry: { attempts: 2, on: ["503"] }"#),
    ));
    let r = get_path(addr, "/u/first").await;
    assert_upstream_503(&r, &["a"], &format!("first request\n{}", gw.stderr()));
    assert_eq!(a.count(), 1);
    // The scenario held: the 503 ejected the lone endpoint.
    let r = get_path(addr, "/u/second").await;
    assert_problem(&r, 503, "no-endpoint", "while ejected");
    assert_eq!(a.count(), 1);
}

/// Fix: a request that times out waiting for a pool slot never reached the
/// endpoint and is not a failure of it. Before, each such timeout counted as
/// a 5xx toward `consecutive_5xx`, and a busy (healthy) endpoint was ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_slot_timeout_does_not_eject_the_endpoint() {
    // Answers every request with its head at once (so `timeouts.request`,
    // which ends at the response head, never expires for it), then holds the
    // connection for BODY_AFTER before the end of the body: the connection
    // goes back to the pool only then.
    const BODY_AFTER: Duration = Duration::from_millis(600);
    let up = raw_server(|mut stream, lines| async move {
        let mut buf = Vec::new();
        while let Some(len) = read_head(&mut stream, &mut buf, &lines).await {
            if !drain_body(&mut stream, &mut buf, len).await
                || stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndo")
                    .await
                    .is_err()
            {
                return;
            }
            sleep(BODY_AFTER).await;
            if stream.write_all(b"ne").await.is_err() {
                return;
            }
        }
    })
    .await;
    // workers: 1, since the pool (and its max_connections) is per worker.
    let (gw, addr) = gateway(&config(
        "workers: 1",
        &format!(
            r#"{{ endpoints: ["{}"], pool: {{ max_connections: 1 }}, timeouts: {{ request: 300ms }}, outlier_detection: {{ consecutive_5xx: 2, consecutive_connect_failures: 0, base_ejection_time: 30s }} }}"#,
            up.addr
        ),
        &route("u", "/u", ""),
    ));
    // Timeline, from t=0 when the first request's head reaches the endpoint:
    // - t=0: /u/holder has the only connection; its response head is sent at
    //   once, its body ends at t=600 ms.
    // - t≈2..20 ms: three requests start waiting for the slot; each waits up
    //   to `timeouts.request` and gets 504 at t≈300..330 ms, long before the
    //   connection comes back (a margin of ~270 ms). Before the fix the
    //   second of them ejected the endpoint for 30 s.
    // - t=600 ms: the holder's body ends (200) and the connection is idle.
    let holder = tokio::spawn(get_path(addr, "/u/holder"));
    up.wait_count(1).await;
    let started = Instant::now();
    let mut waiters = JoinSet::new();
    for i in 0..3 {
        waiters.spawn(async move { get_path(addr, &format!("/u/waiter/{i}")).await });
    }
    while let Some(r) = timeout(LIMIT, waiters.join_next()).await.unwrap() {
        let r = r.unwrap();
        assert_problem(
            &r,
            504,
            "upstream-timeout",
            &format!("waiting for the slot\n{}", gw.stderr()),
        );
    }
    let waited = started.elapsed();
    assert!(
        waited < BODY_AFTER - Duration::from_millis(100),
        "the waiters took {waited:?}: the slot may have come back first"
    );
    let r = timeout(LIMIT, holder).await.unwrap().unwrap();
    assert_eq!((r.status.as_u16(), r.text()), (200, "done".into()));
    assert_eq!(up.count(), 1, "a waiter reached the endpoint");
    // Not ejected: the next request reaches the endpoint.
    let r = get_path(addr, "/u/after").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (200, "done".into()),
        "{}",
        gw.stderr()
    );
    assert_eq!(up.count_path("/u/after"), 1);
}

/// The value of `portico_requests_total` for `labels` (as the text exposition
/// writes them) in a scrape of `admin`, and the sum over `route`'s series.
async fn requests_total(admin: SocketAddr, labels: &str, route: &str) -> (f64, f64) {
    let r = get_path(admin, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let series = text
        .lines()
        .filter_map(|l| l.strip_prefix("portico_requests_total{"))
        .filter_map(|l| l.rsplit_once("} "))
        .map(|(labels, v)| (labels.to_owned(), v.trim().parse::<f64>().unwrap()))
        .collect::<Vec<_>>();
    let one = series
        .iter()
        .find(|(l, _)| l == labels)
        .map_or(0.0, |(_, v)| *v);
    let of_route = format!("route=\"{route}\",");
    let all = series
        .iter()
        .filter(|(l, _)| l.starts_with(&of_route))
        .map(|(_, v)| v)
        .sum();
    (one, all)
}

/// Fix: a request's metrics entry is made when it starts and counted when
/// dropped, so a request whose client gave up before the response head is
/// counted (status 499, class `4xx`). Before, it was never counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_requests_the_client_abandoned() {
    let up = raw::upstream(Action::Stall).await;
    let (mut gw, addr) = gateway(&config(
        r#"admin: { address: "127.0.0.1:0" }"#,
        &format!(r#"{{ endpoints: ["{}"] }}"#, up.addr),
        &route("hang", "/hang", ""),
    ));
    let admin = gw.addr("admin");
    let labels = r#"route="hang",method="GET",status_class="4xx""#;
    assert_eq!(requests_total(admin, labels, "hang").await, (0.0, 0.0));
    let mut clients = JoinSet::new();
    for i in 0..2 {
        clients.spawn(async move {
            let mut s = raw::connect(addr).await;
            let req = format!("GET /hang/{i} HTTP/1.1\r\nhost: localhost\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            // The client gives up after 300 ms and closes the connection.
            let r = timeout(
                Duration::from_millis(300),
                raw::read_response(&mut s, false),
            )
            .await;
            assert!(r.is_err(), "answered: {r:?}");
        });
    }
    while let Some(done) = timeout(LIMIT, clients.join_next()).await.unwrap() {
        done.unwrap();
    }
    assert_eq!(up.requests(), 2, "both requests reached the upstream");
    // The gateway sees the close and drops the request: counted at once;
    // allow 200 ms, then poll a little longer to tell "late" from "never".
    sleep(Duration::from_millis(200)).await;
    let at_200ms = requests_total(admin, labels, "hang").await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut now = at_200ms;
    while now.0 < 2.0 && Instant::now() < deadline {
        sleep(Duration::from_millis(50)).await;
        now = requests_total(admin, labels, "hang").await;
    }
    assert_eq!(
        now,
        (2.0, 2.0),
        "portico_requests_total{{{labels}}} and the route's sum (200 ms after: {at_200ms:?})"
    );
    assert_eq!(at_200ms, (2.0, 2.0), "counted only after more than 200 ms");
}
