//! Upstream failures become problem responses (502, 503, 504), a body cut
//! short reaches the client as a failed response, and the gateway keeps
//! serving after each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::raw::{self, Action, RawUpstream};
use support::{Gateway, Reply, get_path};
use tokio::io::AsyncWriteExt;

/// A port on 127.0.0.1 with nothing listening.
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A gateway with a direct `/ok` route and `/u` proxied to `upstream` (YAML).
fn gateway(upstream: &str) -> (Gateway, SocketAddr) {
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  u: {upstream}
routes:
  - {{ name: ok, match: {{ path: /ok }}, respond: {{ body: still-here }} }}
  - {{ name: u, match: {{ prefix: /u }}, upstream: u }}
"#
    ));
    let addr = gw.addr("main");
    (gw, addr)
}

async fn still_serves(addr: SocketAddr) {
    let r = get_path(addr, "/ok").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "still-here");
}

/// A problem+json answer of `status` and problem `slug` that names no upstream address.
fn assert_problem(r: &Reply, status: u16, slug: &str, hidden: &[String]) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["type"], format!("urn:portico:problem:{slug}"));
    assert_eq!(p["status"], status);
    assert_eq!(p["request_id"], r.header("x-request-id").unwrap());
    let body = r.text();
    for h in hidden {
        assert!(!body.contains(h.as_str()), "body leaks {h}: {body}");
    }
}

#[tokio::test]
async fn connection_refused_is_502_without_the_address() {
    let dead = closed_port().await;
    let (_gw, addr) = gateway(&format!("{{ endpoints: [\"{dead}\"] }}"));
    let r = get_path(addr, "/u/x").await;
    assert_problem(
        &r,
        502,
        "upstream-connect-failed",
        &[
            dead.to_string(),
            dead.port().to_string(),
            "127.0.0.1".into(),
        ],
    );
    still_serves(addr).await;
    // And again: no state was left broken.
    assert_eq!(get_path(addr, "/u/y").await.status, 502);
    still_serves(addr).await;
}

#[tokio::test]
async fn upstream_that_never_answers_is_504() {
    let up = raw::upstream(Action::Stall).await;
    let (_gw, addr) = gateway(&format!(
        "{{ endpoints: [\"{}\"], timeouts: {{ request: 300ms }} }}",
        up.addr
    ));
    let r = get_path(addr, "/u/stall").await;
    assert_problem(&r, 504, "upstream-timeout", &[up.addr.to_string()]);
    assert_eq!(up.requests(), 1);
    still_serves(addr).await;
}

#[tokio::test]
async fn slow_upstream_within_the_timeout_is_200() {
    // Slower than the 300 ms that times out above, well within this upstream's limit.
    let up = raw::upstream(Action::Delay(
        Duration::from_millis(500),
        raw::ok_response("slow but fine"),
    ))
    .await;
    let (_gw, addr) = gateway(&format!(
        "{{ endpoints: [\"{}\"], timeouts: {{ request: 8s }} }}",
        up.addr
    ));
    let r = get_path(addr, "/u/slow").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow but fine");
    still_serves(addr).await;
}

async fn truncated_once(addr: SocketAddr) {
    let resp = raw::exchange(addr, b"GET /u/cut HTTP/1.1\r\nHost: h.test\r\n\r\n")
        .await
        .expect("response head");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("100"));
    assert!(
        !resp.complete,
        "client saw a complete response: {} bytes",
        resp.body.len()
    );
    assert!(resp.body.len() < 100);
    assert!(resp.body.starts_with(b"partial"), "{:?}", resp.text());
}

#[tokio::test]
async fn body_cut_short_fails_the_response_and_the_gateway_goes_on() {
    let up = raw::upstream(Action::WriteAndClose(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial body".to_vec(),
    ))
    .await;
    let (_gw, addr) = gateway(&format!("{{ endpoints: [\"{}\"] }}", up.addr));
    truncated_once(addr).await;
    still_serves(addr).await;
    // The same upstream again: a fresh connection, the same failure, no worse.
    truncated_once(addr).await;
    assert_eq!(up.accepted(), 2);
    still_serves(addr).await;
}

#[tokio::test]
async fn unresolvable_endpoint_is_503() {
    let (_gw, addr) = gateway("{ endpoints: [\"nonexistent.invalid:80\"] }");
    let r = get_path(addr, "/u/dns").await;
    assert_problem(&r, 503, "no-endpoint", &["nonexistent.invalid".into()]);
    still_serves(addr).await;
}

#[tokio::test]
async fn reset_before_responding_is_502() {
    let up = raw::upstream(Action::Reset).await;
    let (_gw, addr) = gateway(&format!("{{ endpoints: [\"{}\"] }}", up.addr));
    let r = get_path(addr, "/u/reset").await;
    assert_problem(&r, 502, "upstream-failed", &[up.addr.to_string()]);
    assert_eq!(up.requests(), 1);
    still_serves(addr).await;
}

#[tokio::test]
async fn upstream_closing_without_answer_is_502() {
    let up = raw::upstream(Action::WriteAndClose(Vec::new())).await;
    let (_gw, addr) = gateway(&format!("{{ endpoints: [\"{}\"] }}", up.addr));
    let r = get_path(addr, "/u/close").await;
    assert_problem(&r, 502, "upstream-failed", &[up.addr.to_string()]);
    still_serves(addr).await;
}

#[tokio::test]
async fn garbage_from_upstream_is_502() {
    let up = raw::upstream(Action::WriteAndClose(
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
    ))
    .await;
    let (_gw, addr) = gateway(&format!("{{ endpoints: [\"{}\"] }}", up.addr));
    let r = get_path(addr, "/u/garbage").await;
    assert_problem(&r, 502, "upstream-failed", &[up.addr.to_string()]);
    still_serves(addr).await;
}

/// A pooled connection the upstream closed while idle is not used for the next request.
#[tokio::test]
async fn idle_connection_closed_by_the_upstream_is_not_reused() {
    // Answers one request per connection, then closes it (without saying so).
    let up: RawUpstream = raw::upstream(Action::WriteAndClose(raw::ok_response("once"))).await;
    let (_gw, addr) = gateway(&format!("{{ endpoints: [\"{}\"] }}", up.addr));
    for i in 0..5 {
        let r = get_path(addr, &format!("/u/{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "once");
    }
    assert_eq!(up.requests(), 5);
}

/// A client that goes away mid-request leaves the gateway serving.
#[tokio::test]
async fn client_leaving_mid_request_does_no_harm() {
    let up = raw::upstream(Action::Stall).await;
    let (_gw, addr) = gateway(&format!("{{ endpoints: [\"{}\"] }}", up.addr));
    let mut s = raw::connect(addr).await;
    s.write_all(b"GET /u/leave HTTP/1.1\r\nHost: h.test\r\n\r\n")
        .await
        .unwrap();
    assert!(up.wait_requests(1, Duration::from_secs(10)).await);
    drop(s);
    still_serves(addr).await;
}
