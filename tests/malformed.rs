//! Malformed requests, written byte for byte over raw TCP: each is refused with
//! 400 (or 414/431), and the upstream — a raw recorder — receives no byte of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::Gateway;
use support::raw::{self, Action, RawUpstream};

struct Setup {
    _gw: Gateway,
    addr: SocketAddr,
    up: RawUpstream,
}

/// A gateway proxying everything to a raw recording upstream, with `limits`.
async fn setup(limits: &str) -> Setup {
    let up = raw::upstream(Action::Respond(raw::ok_response("fine"))).await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
limits: {limits}
upstreams:
  rec: {{ endpoints: ["{}"] }}
routes:
  - name: all
    match: {{ prefix: / }}
    upstream: rec
"#,
        up.addr
    ));
    let addr = gw.addr("main");
    Setup { _gw: gw, addr, up }
}

const DEFAULT_LIMITS: &str = "{ max_uri_length: 1KiB, max_header_bytes: 16KiB, max_headers: 20 }";

/// Sends `bytes`, expects one of `statuses`, then checks that the upstream got
/// nothing, and that a valid request afterwards does reach it (so "nothing"
/// means something). Every malformed request uses a path containing `/bad`.
async fn refused(s: &Setup, bytes: &[u8], statuses: &[u16]) {
    let what = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]).into_owned();
    let resp = raw::exchange(s.addr, bytes)
        .await
        .unwrap_or_else(|e| panic!("no response to {what:?}: {e}"));
    assert!(
        statuses.contains(&resp.status),
        "status {} (want one of {statuses:?}) for {what:?}; body: {}",
        resp.status,
        resp.text()
    );
    assert!(
        s.up.received().is_empty(),
        "upstream received bytes for {what:?}:\n{}",
        s.up.received_text()
    );

    let ok = raw::exchange(
        s.addr,
        b"GET /sanity HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("sanity request");
    assert_eq!(ok.status, 200, "sanity request after {what:?}");
    assert_eq!(ok.text(), "fine");
    assert!(s.up.wait_requests(1, Duration::from_secs(5)).await);
    let seen = s.up.received_text();
    assert!(
        seen.starts_with("GET /sanity "),
        "upstream saw more than the sanity request:\n{seen}"
    );
    assert!(
        !seen.contains("/bad"),
        "malformed request reached upstream:\n{seen}"
    );
    assert_eq!(s.up.requests(), 1, "upstream:\n{seen}");
}

#[tokio::test]
async fn content_length_and_transfer_encoding_together() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"POST /bad-cl-te HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_then_content_length() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"POST /bad-te-cl HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\
          Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn two_different_content_lengths() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"POST /bad-two-cl HTTP/1.1\r\nHost: example.test\r\nContent-Length: 5\r\n\
          Content-Length: 6\r\n\r\nhello!",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn invalid_chunk_size() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"POST /bad-chunk HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          zz\r\nhello\r\n0\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn space_before_colon_in_header_name() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"GET /bad-space HTTP/1.1\r\nHost: example.test\r\nX-Thing : 1\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn obs_fold_header_continuation() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"GET /bad-fold HTTP/1.1\r\nHost: example.test\r\nX-Thing: first\r\n  folded\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn nul_in_header_value() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"GET /bad-nul HTTP/1.1\r\nHost: example.test\r\nX-Thing: a\0b\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn bare_cr_in_header_value() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"GET /bad-cr HTTP/1.1\r\nHost: example.test\r\nX-Thing: a\rb\r\n\r\n",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn uri_longer_than_limit_is_414() {
    let s = setup(DEFAULT_LIMITS).await;
    // 1 KiB is the limit; the target here is 1024 + 1 bytes.
    let target = format!("/bad{}", "u".repeat(1024 + 1 - 4));
    let req = format!("GET {target} HTTP/1.1\r\nHost: example.test\r\n\r\n");
    refused(&s, req.as_bytes(), &[414]).await;
}

#[tokio::test]
async fn uri_at_the_limit_is_served() {
    let s = setup(DEFAULT_LIMITS).await;
    let target = format!("/ok{}", "u".repeat(1024 - 3));
    let req = format!("GET {target} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n");
    let resp = raw::exchange(s.addr, req.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(s.up.received_text().contains(&target));
}

#[tokio::test]
async fn header_block_larger_than_limit_is_431() {
    let s = setup(DEFAULT_LIMITS).await;
    let req = format!(
        "GET /bad-big HTTP/1.1\r\nHost: example.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20 * 1024)
    );
    refused(&s, req.as_bytes(), &[431]).await;
}

/// A limit below hyper's smallest read buffer (8 KiB) must hold too.
#[tokio::test]
async fn header_block_over_a_small_limit_is_431() {
    let s = setup("{ max_header_bytes: 2KiB }").await;
    let req = format!(
        "GET /bad-big HTTP/1.1\r\nHost: example.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(4 * 1024)
    );
    refused(&s, req.as_bytes(), &[431]).await;
}

#[tokio::test]
async fn more_headers_than_limit_is_431() {
    let s = setup(DEFAULT_LIMITS).await;
    let mut req = String::from("GET /bad-many HTTP/1.1\r\nHost: example.test\r\n");
    for i in 0..30 {
        req.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    refused(&s, req.as_bytes(), &[431]).await;
}

#[tokio::test]
async fn headers_at_the_limit_are_served() {
    let s = setup(DEFAULT_LIMITS).await;
    let mut req =
        String::from("GET /ok-many HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n");
    // 20 in all, counting Host and Connection.
    for i in 0..18 {
        req.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    req.push_str("\r\n");
    let resp = raw::exchange(s.addr, req.as_bytes()).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(s.up.received_text().contains("x-h17: 17"));
}

#[tokio::test]
async fn repeated_content_length_is_refused() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"POST /bad HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        &[400],
    )
    .await;
}

#[tokio::test]
async fn http11_without_host_or_with_two_is_refused() {
    let s = setup(DEFAULT_LIMITS).await;
    refused(&s, b"GET /bad HTTP/1.1\r\nAccept: */*\r\n\r\n", &[400]).await;
    let s = setup(DEFAULT_LIMITS).await;
    refused(
        &s,
        b"GET /bad HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        &[400],
    )
    .await;
}

/// A head that asks for an upgrade stops the framing guard; when the upstream
/// does not switch, the connection must close so that nothing smuggled after
/// it is read as a request.
#[tokio::test]
async fn refused_upgrade_closes_the_connection() {
    let s = setup(DEFAULT_LIMITS).await;
    let resp = raw::exchange(
        s.addr,
        b"GET /first HTTP/1.1\r\nHost: h.test\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n\
          POST /bad HTTP/1.1\r\nHost: h.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(s.up.wait_requests(1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = s.up.received_text();
    assert!(
        !seen.contains("/bad"),
        "smuggled request reached upstream:\n{seen}"
    );
    assert_eq!(s.up.requests(), 1, "upstream:\n{seen}");
}

/// The host that routes a request is the host the upstream sees: an
/// absolute-form target wins over a different Host header (RFC 9112 §3.2.2).
#[tokio::test]
async fn absolute_form_authority_is_the_host_sent_upstream() {
    let s = setup(DEFAULT_LIMITS).await;
    let resp = raw::exchange(
        s.addr,
        b"GET http://public.test/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200);
    assert!(s.up.wait_requests(1, Duration::from_secs(5)).await);
    let seen = s.up.received_text().to_ascii_lowercase();
    assert!(
        seen.contains("\r\nhost: public.test\r\n"),
        "upstream saw:\n{seen}"
    );
    assert!(
        seen.contains("\r\nx-forwarded-host: public.test\r\n"),
        "upstream saw:\n{seen}"
    );
}

/// A connection that never sends a byte is closed after the header read timeout.
#[tokio::test]
async fn silent_connection_is_closed() {
    let s = setup("{ header_read_timeout: 300ms }").await;
    let mut stream = raw::connect(s.addr).await;
    let (bytes, closed) = raw::read_to_end(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "connection still open after 5 s");
    assert!(bytes.is_empty());
}
