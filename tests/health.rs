//! Active health checks through the real binary: HTTP, TCP and gRPC checks
//! against real upstreams, what unhealthy endpoints do to balancing, panic
//! mode, and health state across reloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::upstream::{self, Upstream};
use support::{Gateway, Reply, get_path};
use tokio::net::TcpListener;
use tonic::codegen::Service as _;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Bound on every wait for a health transition (checks run every 100 ms).
const LIMIT: Duration = Duration::from_secs(10);
const HEALTHZ: &str = "/healthz";

/// An upstream whose `/healthz` answers with a status the test sets, and
/// every other path with 200 and its name.
struct Backend {
    server: Upstream,
    health: Arc<AtomicU16>,
}

impl Backend {
    async fn start(name: &'static str, health: u16) -> Backend {
        let status = Arc::new(AtomicU16::new(health));
        let current = status.clone();
        let server = upstream::start(move |seen| {
            let code = if seen.uri.path() == HEALTHZ {
                current.load(Ordering::Relaxed)
            } else {
                200
            };
            Response::builder()
                .status(code)
                .body(Full::new(Bytes::from(name)))
                .unwrap()
        })
        .await;
        Backend {
            server,
            health: status,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }

    /// Requests that were traffic, not health checks.
    fn traffic(&self) -> usize {
        self.server
            .seen()
            .iter()
            .filter(|s| s.uri.path() != HEALTHZ)
            .count()
    }

    /// Health checks received so far.
    fn checks(&self) -> usize {
        self.server.count() - self.traffic()
    }
}

/// A gateway with one upstream `api` over `endpoints`, whose definition ends
/// with `extra` (YAML flow-mapping entries), routed at every path.
fn config(endpoints: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  api: {{ endpoints: [{}], {extra} }}
routes:
  - {{ name: all, match: {{ prefix: / }}, upstream: api }}
"#,
        list.join(", ")
    )
}

/// An HTTP check of `/healthz` every 100 ms.
fn http_check(thresholds: &str) -> String {
    format!("health_check: {{ path: {HEALTHZ}, interval: 100ms, timeout: 1s, {thresholds} }}")
}

fn went_down(addr: SocketAddr) -> String {
    format!("endpoint became unhealthy upstream=api endpoint={addr}")
}

fn came_up(addr: SocketAddr) -> String {
    format!("endpoint became healthy upstream=api endpoint={addr}")
}

/// Sends `n` requests one after another; all must succeed.
async fn traffic(gw: &mut Gateway, n: usize) {
    let addr = gw.addr("main");
    for _ in 0..n {
        let r = get_path(addr, "/work").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Waits (bounded) until `cond` holds. It yields meanwhile (unlike
/// `Gateway::wait_for_log`), so the upstreams on this runtime keep answering.
async fn eventually(gw: &Gateway, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the gateway has logged `needle`.
async fn logged(gw: &Gateway, needle: &str) {
    eventually(gw, needle, || gw.stderr().contains(needle)).await;
}

#[tokio::test]
async fn http_check_takes_a_failing_endpoint_out_and_brings_it_back() {
    let a = Backend::start("a", 200).await;
    let b = Backend::start("b", 200).await;
    let mut gw = Gateway::start(&config(
        &[a.addr(), b.addr()],
        &http_check("healthy_threshold: 2, unhealthy_threshold: 3"),
    ));
    // Both start healthy and share the traffic.
    traffic(&mut gw, 20).await;
    assert!(b.traffic() > 0 && a.traffic() > 0);

    let before = b.checks();
    b.set_health(503);
    logged(&gw, &went_down(b.addr())).await;
    assert!(
        b.checks() - before >= 3,
        "unhealthy after {} failed checks, before the threshold",
        b.checks() - before
    );
    assert!(gw.stderr().contains("reason=status 503"), "{}", gw.stderr());
    let (a_before, b_before) = (a.traffic(), b.traffic());
    traffic(&mut gw, 20).await;
    assert_eq!(b.traffic(), b_before, "an unhealthy endpoint got traffic");
    assert_eq!(a.traffic(), a_before + 20);

    let before = b.checks();
    b.set_health(200);
    logged(&gw, &came_up(b.addr())).await;
    assert!(
        b.checks() - before >= 2,
        "healthy again before the threshold"
    );
    traffic(&mut gw, 20).await;
    assert!(
        b.traffic() > b_before,
        "a healthy endpoint is back in rotation"
    );
    // The healthy endpoint never flipped.
    assert_eq!(gw.count_log(&went_down(a.addr())), 0, "{}", gw.stderr());

    // What a check sends.
    let check = b
        .server
        .seen()
        .into_iter()
        .find(|s| s.uri.path() == HEALTHZ)
        .unwrap();
    assert_eq!(check.method, "GET");
    assert_eq!(check.version, http::Version::HTTP_11);
    assert_eq!(check.headers["host"], b.addr().to_string().as_str());
    assert_eq!(check.headers["user-agent"], "portico-health-check");
}

#[tokio::test]
async fn expected_statuses_and_request_settings() {
    // 204 and 418 are expected; 302 is not (though the default 200-399 takes it).
    let a = Backend::start("a", 204).await;
    let b = Backend::start("b", 418).await;
    let c = Backend::start("c", 302).await;
    let mut gw = Gateway::start(&config(
        &[a.addr(), b.addr(), c.addr()],
        &http_check(
            "unhealthy_threshold: 1, method: HEAD, host: health.internal, \
             expected_statuses: [204, 400-418]",
        ),
    ));
    logged(&gw, &went_down(c.addr())).await;
    assert!(gw.stderr().contains("reason=status 302"), "{}", gw.stderr());
    // a and b have passed several checks by now.
    eventually(&gw, "three more checks of a and b", || {
        a.checks() >= 4 && b.checks() >= 4
    })
    .await;
    for up in [&a, &b] {
        assert_eq!(gw.count_log(&went_down(up.addr())), 0, "{}", gw.stderr());
    }
    traffic(&mut gw, 20).await;
    assert_eq!(c.traffic(), 0);
    assert_eq!(a.traffic() + b.traffic(), 20);

    let check = a.server.seen().into_iter().next().unwrap();
    assert_eq!(check.method, "HEAD");
    assert_eq!(check.uri.path(), HEALTHZ);
    assert_eq!(check.headers["host"], "health.internal");
}

#[tokio::test]
async fn h2c_upstream_is_checked_over_h2c() {
    let a = Backend::start("a", 200).await;
    let b = Backend::start("b", 500).await;
    let gw = Gateway::start(&config(
        &[a.addr(), b.addr()],
        &format!("protocol: h2c, {}", http_check("unhealthy_threshold: 1")),
    ));
    logged(&gw, &went_down(b.addr())).await;
    eventually(&gw, "a check of a", || a.checks() > 0).await;
    let check = a.server.seen().into_iter().next().unwrap();
    assert_eq!(check.version, http::Version::HTTP_2);
    assert_eq!(
        check.uri.authority().map(|a| a.as_str()),
        Some(a.addr().to_string().as_str())
    );
}

#[tokio::test]
async fn tcp_check_marks_a_closed_port_down() {
    let a = Backend::start("a", 200).await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut gw = Gateway::start(&config(
        &[a.addr(), closed],
        "health_check: { type: tcp, interval: 100ms, timeout: 500ms, unhealthy_threshold: 2 }",
    ));
    logged(&gw, &went_down(closed)).await;
    traffic(&mut gw, 10).await;
    // A TCP check connects and sends nothing.
    assert_eq!(a.server.count(), 10);
    assert_eq!(gw.count_log(&went_down(a.addr())), 0, "{}", gw.stderr());
}

/// A `grpc.health.v1` server (tonic-health) on 127.0.0.1:0, speaking h2c.
async fn grpc_health_server() -> (SocketAddr, HealthReporter, tokio::task::JoinHandle<()>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let health = health.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut health = health.clone();
                    async move { health.call(req).await }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, reporter, task)
}

#[tokio::test]
async fn grpc_check_follows_the_serving_status() {
    let (addr, reporter, server) = grpc_health_server().await;
    let mut gw = Gateway::start(&config(
        &[addr],
        "protocol: h2c, health_check: { type: grpc, grpc_service: pkg.Svc, interval: 100ms, \
         timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }",
    ));
    let main = gw.addr("main");
    // The service is unknown to the server: NOT_FOUND.
    logged(&gw, &went_down(addr)).await;
    assert!(
        gw.stderr().contains("reason=grpc-status 5"),
        "{}",
        gw.stderr()
    );
    assert_eq!(get_path(main, "/").await.status, 503);

    reporter
        .set_service_status("pkg.Svc", ServingStatus::Serving)
        .await;
    logged(&gw, &came_up(addr)).await;
    // Traffic reaches it again (tonic answers an unknown method with 200 and a gRPC status).
    let r = get_path(main, "/").await;
    assert_eq!(r.status, 200, "{}", r.text());

    reporter
        .set_service_status("pkg.Svc", ServingStatus::NotServing)
        .await;
    eventually(&gw, "a second unhealthy verdict", || {
        gw.count_log(&went_down(addr)) == 2
    })
    .await;
    assert!(gw.stderr().contains("(NOT_SERVING)"), "{}", gw.stderr());
    server.abort();
}

#[tokio::test]
async fn all_unhealthy_answers_503() {
    let a = Backend::start("a", 503).await;
    let b = Backend::start("b", 503).await;
    let mut gw = Gateway::start(&config(
        &[a.addr(), b.addr()],
        &http_check("unhealthy_threshold: 1"),
    ));
    logged(&gw, &went_down(a.addr())).await;
    logged(&gw, &went_down(b.addr())).await;
    let r: Reply = get_path(gw.addr("main"), "/work").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["status"], 503);
    assert_eq!(a.traffic() + b.traffic(), 0);
}

#[tokio::test]
async fn panic_mode_uses_every_endpoint_when_all_are_unhealthy() {
    let a = Backend::start("a", 503).await;
    let b = Backend::start("b", 503).await;
    let mut gw = Gateway::start(&config(
        &[a.addr(), b.addr()],
        &format!("panic_mode: true, {}", http_check("unhealthy_threshold: 1")),
    ));
    logged(&gw, &went_down(a.addr())).await;
    logged(&gw, &went_down(b.addr())).await;
    traffic(&mut gw, 20).await;
    assert!(
        a.traffic() > 0 && b.traffic() > 0,
        "{} {}",
        a.traffic(),
        b.traffic()
    );
}

/// Reloads with `yaml` and waits until the gateway says so.
async fn reload(gw: &Gateway, yaml: &str) {
    let before = gw.count_log("config reloaded");
    gw.replace_config(yaml);
    eventually(gw, "the reload", || {
        gw.count_log("config reloaded") > before
    })
    .await;
}

#[tokio::test]
async fn health_state_survives_a_reload_that_keeps_the_upstream() {
    let a = Backend::start("a", 200).await;
    let b = Backend::start("b", 503).await;
    let upstream = http_check("healthy_threshold: 1, unhealthy_threshold: 2");
    let mut gw = Gateway::start(&config(&[a.addr(), b.addr()], &upstream));
    logged(&gw, &went_down(b.addr())).await;

    // A new route; the upstream's definition is unchanged.
    let mut yaml = config(&[a.addr(), b.addr()], &upstream);
    yaml.push_str("  - { name: extra, match: { prefix: /extra }, respond: { status: 204 } }\n");
    reload(&gw, &yaml).await;
    let b_before = b.traffic();
    traffic(&mut gw, 20).await;
    assert_eq!(
        b.traffic(),
        b_before,
        "the unhealthy endpoint got traffic after the reload"
    );
    assert_eq!(get_path(gw.addr("main"), "/extra").await.status, 204);
    // Same checkers: the verdict did not restart from healthy. New checkers
    // would start within a second (the supervisor's period) and flip it again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(gw.count_log(&went_down(b.addr())), 1, "{}", gw.stderr());
    assert_eq!(gw.count_log(&came_up(b.addr())), 0, "{}", gw.stderr());
}

#[tokio::test]
async fn a_changed_upstream_starts_with_fresh_health_state() {
    let a = Backend::start("a", 200).await;
    let b = Backend::start("b", 503).await;
    let mut gw = Gateway::start(&config(
        &[a.addr(), b.addr()],
        &http_check("unhealthy_threshold: 1"),
    ));
    logged(&gw, &went_down(b.addr())).await;

    // A changed definition: a new upstream, whose endpoints start healthy and
    // take 20 failed checks (about 2 s) to leave again.
    reload(
        &gw,
        &config(
            &[a.addr(), b.addr()],
            &http_check("unhealthy_threshold: 20"),
        ),
    )
    .await;
    let b_before = b.traffic();
    traffic(&mut gw, 10).await;
    assert!(
        b.traffic() > b_before,
        "the rebuilt endpoint starts healthy"
    );
    eventually(&gw, "the new checkers' verdict", || {
        gw.count_log(&went_down(b.addr())) == 2
    })
    .await;
    let b_before = b.traffic();
    traffic(&mut gw, 10).await;
    assert_eq!(b.traffic(), b_before);
}
