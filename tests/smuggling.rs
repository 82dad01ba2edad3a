//! Request smuggling, written byte for byte over raw TCP. Each head-level
//! vector is refused (400 from hyper or from the framing guard) and the
//! upstream, a raw recorder, receives no byte; a request smuggled behind a
//! malformed chunked body never reaches the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::Gateway;
use support::raw::{self, Action, RawUpstream};
use tokio::io::AsyncWriteExt;

struct Setup {
    _gw: Gateway,
    addr: SocketAddr,
    up: RawUpstream,
}

async fn setup() -> Setup {
    let up = raw::upstream(Action::Respond(raw::ok_response("fine"))).await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
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

/// Sends `bytes` on one connection; the answer must be a 400 (or the
/// connection closed without one), and the upstream must have received
/// nothing at all, also after a moment.
async fn refused(s: &Setup, name: &str, bytes: &[u8]) {
    let mut c = raw::connect(s.addr).await;
    c.write_all(bytes).await.unwrap();
    let (reply, _) = raw::read_to_end(&mut c, Duration::from_secs(5)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 400 "),
        "{name}: want 400, got {reply:?}"
    );
    // Only one answer: nothing after the refused head was read as a request.
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{name}: {reply:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        s.up.received().is_empty(),
        "{name}: upstream received:\n{}",
        s.up.received_text()
    );
}

/// Each smuggling vector, followed on the same connection by a request that
/// must never reach the upstream.
const VECTORS: &[(&str, &str)] = &[
    (
        "CL.TE",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE.CL",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    ),
    (
        "CL.CL differing",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
    ),
    (
        "CL.CL identical",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "CL list",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 0\r\n\r\n",
    ),
    (
        "CL sign",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: +0\r\n\r\n",
    ),
    (
        "CL hex",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 0x0\r\n\r\n",
    ),
    (
        "CL overflow",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n",
    ),
    (
        "CL empty",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
    ),
    (
        "obs-fold",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    ),
    (
        "obs-fold with tab",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tx\r\n\r\n",
    ),
    (
        "first header folded",
        "GET /bad HTTP/1.1\r\n Host: h\r\n\r\n",
    ),
    (
        "space before colon",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "tab before colon",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent-Length\t: 0\r\n\r\n",
    ),
    (
        "TE not chunked",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
    ),
    (
        "TE chunked then other",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE other then chunked",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE chunked twice",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE two lines",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE empty element",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE xchunked",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE quoted",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE vertical tab",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "TE in HTTP/1.0",
        "POST /bad HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer_Encoding",
        "POST /bad HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "Content_Length",
        "POST /bad HTTP/1.1\r\nHost: h\r\nContent_Length: 5\r\n\r\n",
    ),
    (
        "NUL in value",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX-A: a\0b\r\n\r\n",
    ),
    (
        "NUL in name",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX-\0A: 1\r\n\r\n",
    ),
    (
        "bare CR in value",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n",
    ),
    (
        "bare CR ending a line",
        "GET /bad HTTP/1.1\r\nHost: h\rX-A: 1\r\n\r\n",
    ),
    (
        "bare CR in request line",
        "GET /bad\r HTTP/1.1\r\nHost: h\r\n\r\n",
    ),
    (
        "DEL in value",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n",
    ),
    (
        "ESC in value",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX-A: a\x1bb\r\n\r\n",
    ),
    (
        "invalid name character",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n",
    ),
    (
        "name with slash",
        "GET /bad HTTP/1.1\r\nHost: h\r\nX/A: 1\r\n\r\n",
    ),
    ("empty name", "GET /bad HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n"),
    (
        "line without colon",
        "GET /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding chunked\r\n\r\n",
    ),
    (
        "two spaces in request line",
        "GET  /bad HTTP/1.1\r\nHost: h\r\n\r\n",
    ),
    (
        "tab in request line",
        "GET\t/bad HTTP/1.1\r\nHost: h\r\n\r\n",
    ),
    ("NUL in target", "GET /bad\0x HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("space in target", "GET /bad x HTTP/1.1\r\nHost: h\r\n\r\n"),
    ("bad version", "GET /bad HTTP/1.2x\r\nHost: h\r\n\r\n"),
];

#[tokio::test]
async fn every_vector_is_refused_before_the_upstream() {
    let s = setup().await;
    for (name, head) in VECTORS {
        let mut bytes = head.as_bytes().to_vec();
        bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
        refused(&s, name, &bytes).await;
    }
}

/// The same vectors behind a valid request on a keep-alive connection: the
/// first reaches the upstream, the flawed one and what follows do not.
#[tokio::test]
async fn vectors_later_on_a_connection_are_refused() {
    let s = setup().await;
    for (name, head) in VECTORS {
        let before = s.up.requests();
        let mut c = raw::connect(s.addr).await;
        let mut bytes = b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n");
        c.write_all(&bytes).await.unwrap();
        let (reply, _) = raw::read_to_end(&mut c, Duration::from_secs(5)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200 "), "{name}: {reply:?}");
        assert!(reply.contains("HTTP/1.1 400 "), "{name}: {reply:?}");
        assert_eq!(s.up.requests(), before + 1, "{name}");
    }
    let seen = s.up.received_text();
    assert!(!seen.contains("/bad"), "upstream saw:\n{seen}");
    assert!(!seen.contains("/smuggled"), "upstream saw:\n{seen}");
}

/// Malformed chunked bodies: hyper ends the body with an error. The upstream
/// may have seen the head and part of the body, but never a complete
/// request, and never the request smuggled after it.
#[tokio::test]
async fn malformed_chunked_bodies_smuggle_nothing() {
    const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let bodies: &[(&str, String)] = &[
        (
            "invalid size character",
            format!("5g\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        ("0x prefix", format!("0x5\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        (
            "negative size",
            format!("-5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "size overflow",
            format!("10000000000000000\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "size with bare LF",
            format!("5\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "extension with bare LF",
            format!("5;a=b\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "last-chunk extension with bare LF",
            format!("0;a\n\r\n{SMUGGLED}"),
        ),
        (
            "missing CRLF after data",
            format!("5\r\nhelloXX0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "LF only after data",
            format!("5\r\nhello\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "data longer than size",
            format!("3\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        ("empty size", format!("\r\nhello\r\n0\r\n\r\n{SMUGGLED}")),
        (
            "space inside size",
            format!("1 0\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
    ];
    for (name, body) in bodies {
        let s = setup().await;
        let mut c = raw::connect(s.addr).await;
        let req = format!(
            "POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let (reply, _) = raw::read_to_end(&mut c, Duration::from_secs(5)).await;
        let reply = String::from_utf8_lossy(&reply);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = s.up.received_text();
        assert!(!seen.contains("/smuggled"), "{name}: upstream saw:\n{seen}");
        assert!(
            !seen.contains("\r\n0\r\n\r\n"),
            "{name}: upstream got a complete body:\n{seen}"
        );
        assert_eq!(s.up.requests(), 0, "{name}: upstream:\n{seen}");
        assert!(!reply.contains("fine"), "{name}: {reply:?}");
        assert!(
            reply.matches("HTTP/1.1 ").count() <= 1,
            "{name}: more than one answer: {reply:?}"
        );
    }
}

/// A valid chunked request, with an extension and trailers, still passes.
#[tokio::test]
async fn valid_chunked_request_passes() {
    let s = setup().await;
    let resp = raw::exchange(
        s.addr,
        b"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5;ext=1\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(s.up.wait_requests(1, Duration::from_secs(5)).await);
    assert!(s.up.received_text().contains("hello"));
}

/// Refusals come from the gateway, not the upstream, so they carry no trace
/// of it, and the connection is closed.
#[tokio::test]
async fn guard_refusal_is_a_problem_and_closes() {
    let s = setup().await;
    let resp = raw::exchange(
        s.addr,
        b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    assert!(resp.text().contains("urn:portico:problem:bad-request"));
    assert!(s.up.received().is_empty());
}
