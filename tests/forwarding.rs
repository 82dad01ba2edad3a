//! What the upstream receives, and what the client gets back: hop-by-hop
//! headers, X-Forwarded-*/Forwarded, Host, request ids, protocol translation,
//! connection reuse, `Expect: 100-continue`, HEAD, 204 and 304.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use support::raw::{self, Action};
use support::upstream::{self, Seen, Upstream};
use support::{Gateway, get, get_path, send, send_h2};
use tokio::io::AsyncWriteExt;

fn hdr(seen: &Seen, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn all(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// A gateway with `extra` top-level settings, proxying `/` to `up`.
fn proxy_to(up: SocketAddr, extra: &str) -> (Gateway, SocketAddr) {
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
{extra}
upstreams:
  app: {{ endpoints: ["{up}"] }}
routes:
  - {{ name: app, match: {{ prefix: / }}, upstream: app }}
"#
    ));
    let addr = gw.addr("main");
    (gw, addr)
}

fn last(up: &Upstream) -> Seen {
    up.seen().pop().expect("upstream saw no request")
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "");
    let resp = raw::exchange(
        addr,
        b"POST /hop HTTP/1.1\r\n\
          Host: shop.example\r\n\
          Connection: keep-alive, X-Secret\r\n\
          X-Secret: s3cr3t\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: gzip, trailers\r\n\
          Upgrade: foo/1\r\n\
          Proxy-Connection: keep-alive\r\n\
          Transfer-Encoding: chunked\r\n\
          X-Kept: yes\r\n\
          \r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = last(&up);
    assert_eq!(seen.body, "hello");
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "upgrade",
        "proxy-connection",
    ] {
        assert_eq!(hdr(&seen, gone), None, "{gone} reached the upstream");
    }
    assert_eq!(all(&seen, "te"), ["trailers"]);
    // The client's Transfer-Encoding is not forwarded; the gateway frames the
    // body itself (chunked, as its length is unknown).
    let te = all(&seen, "transfer-encoding");
    assert!(
        te.is_empty() || te == ["chunked"],
        "transfer-encoding upstream: {te:?}"
    );
    assert_eq!(hdr(&seen, "x-kept").as_deref(), Some("yes"));

    // TE without `trailers` goes entirely.
    let resp = raw::exchange(
        addr,
        b"GET /te HTTP/1.1\r\nHost: shop.example\r\nTE: gzip, deflate\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    let seen = last(&up);
    assert_eq!(seen.uri, "/te");
    assert_eq!(hdr(&seen, "te"), None);
    assert_eq!(hdr(&seen, "connection"), None);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let up = raw::upstream(Action::Respond(
        b"HTTP/1.1 200 OK\r\n\
          Connection: X-Up-Secret\r\n\
          X-Up-Secret: 1\r\n\
          Keep-Alive: timeout=9\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Up-Kept: yes\r\n\
          Content-Length: 2\r\n\r\nok"
            .to_vec(),
    ))
    .await;
    let (_gw, addr) = proxy_to(up.addr, "");
    let resp = raw::exchange(addr, b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    assert_eq!(resp.header("x-up-kept"), Some("yes"));
    for gone in ["x-up-secret", "keep-alive", "proxy-connection"] {
        assert_eq!(
            resp.header(gone),
            None,
            "{gone} reached the client: {:?}",
            resp.headers
        );
    }
    assert!(
        resp.header("connection")
            .is_none_or(|v| !v.to_ascii_lowercase().contains("x-up-secret")),
        "{:?}",
        resp.headers
    );
}

fn spoofing(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "");
    send(addr, spoofing("/spoof")).await;
    let seen = last(&up);
    assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&seen, "x-forwarded-host"), ["shop.example"]);
    assert_eq!(hdr(&seen, "forwarded"), None);

    send(addr, get("plain.example", "/plain")).await;
    let seen = last(&up);
    assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&seen, "x-forwarded-host"), ["plain.example"]);
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_peer_are_appended() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(
        up.addr,
        "forwarding: { trusted_proxies: [127.0.0.1], forwarded_header: true }",
    );
    send(addr, spoofing("/via-proxy")).await;
    let seen = last(&up);
    assert_eq!(all(&seen, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["https"]);
    assert_eq!(all(&seen, "x-forwarded-host"), ["evil.example"]);
    assert_eq!(
        all(&seen, "forwarded"),
        ["for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=\"shop.example\""]
    );

    send(addr, get("shop.example", "/direct")).await;
    let seen = last(&up);
    assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        all(&seen, "forwarded"),
        ["for=127.0.0.1;proto=http;host=\"shop.example\""]
    );

    // Fields that `Connection` names are the last hop's own: gone before
    // the trusted values are looked for, so the gateway sets its own.
    let mut req = spoofing("/named");
    req.headers_mut().insert(
        "connection",
        "x-forwarded-proto, x-forwarded-host".parse().unwrap(),
    );
    send(addr, req).await;
    let seen = last(&up);
    assert_eq!(all(&seen, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&seen, "x-forwarded-host"), ["shop.example"]);
}

#[tokio::test]
async fn forwarded_header_from_an_untrusted_peer_is_replaced() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "forwarding: { forwarded_header: true }");
    send(addr, spoofing("/spoof")).await;
    let seen = last(&up);
    assert_eq!(
        all(&seen, "forwarded"),
        ["for=127.0.0.1;proto=http;host=\"shop.example\""]
    );
    assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn forwarded_host_cannot_forge_an_element() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "forwarding: { forwarded_header: true }");
    let resp = raw::exchange(
        addr,
        b"GET /forge HTTP/1.1\r\n\
          Host: x\", for=6.6.6.6;proto=\"https\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = last(&up);
    assert_eq!(seen.uri, "/forge");
    // One element, its host a quoted-string with the quotes escaped.
    assert_eq!(
        all(&seen, "forwarded"),
        [r#"for=127.0.0.1;proto=http;host="x\", for=6.6.6.6;proto=\"https""#]
    );
}

#[tokio::test]
async fn forwarded_headers_on_several_lines_from_a_trusted_peer_are_all_kept() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(
        up.addr,
        "forwarding: { trusted_proxies: [127.0.0.1], forwarded_header: true }",
    );
    // `header()` appends: two lines of each.
    let req = Request::get("/lines")
        .header("host", "shop.example")
        .header("x-forwarded-for", "1.1.1.1, 2.2.2.2")
        .header("x-forwarded-for", "3.3.3.3")
        .header("forwarded", "for=1.1.1.1, for=2.2.2.2")
        .header("forwarded", "for=3.3.3.3;proto=https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(addr, req).await.status, 200);
    let seen = last(&up);
    assert_eq!(
        all(&seen, "x-forwarded-for"),
        ["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]
    );
    assert_eq!(
        all(&seen, "forwarded"),
        ["for=1.1.1.1, for=2.2.2.2, for=3.3.3.3;proto=https, \
          for=127.0.0.1;proto=http;host=\"shop.example\""]
    );
}

#[tokio::test]
async fn host_is_preserved_or_set_per_upstream() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  keep: {{ endpoints: ["{a}"] }}
  endpoint: {{ endpoints: ["{a}"], host: endpoint }}
  fixed: {{ endpoints: ["{a}"], host: {{ fixed: internal.example }} }}
routes:
  - {{ name: keep, match: {{ prefix: /keep }}, upstream: keep }}
  - {{ name: endpoint, match: {{ prefix: /endpoint }}, upstream: endpoint }}
  - {{ name: fixed, match: {{ prefix: /fixed }}, upstream: fixed }}
"#,
        a = up.addr
    ));
    let addr = gw.addr("main");
    for (path, want) in [
        ("/keep", "shop.example:8443".to_string()),
        ("/endpoint", up.addr.to_string()),
        ("/fixed", "internal.example".to_string()),
    ] {
        let r = send(addr, get("shop.example:8443", path)).await;
        assert_eq!(r.status, 200);
        let seen = last(&up);
        assert_eq!(seen.uri, path);
        assert_eq!(all(&seen, "host"), [want], "{path}");
        assert_eq!(
            all(&seen, "x-forwarded-host"),
            ["shop.example:8443"],
            "{path}"
        );
    }
}

/// The client's Host goes upstream once, as sent, on the fast path and on
/// hyper's; one taken by `Connection: host`, or missing from an HTTP/1.0
/// request, is set again.
#[tokio::test]
async fn host_reaches_the_upstream_once_whatever_the_client_sends() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "");
    let endpoint = up.addr.to_string();
    for (request, want) in [
        (
            &b"GET /plain HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"[..],
            "shop.example",
        ),
        (
            b"POST /body HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            "shop.example",
        ),
        (
            b"GET /named HTTP/1.1\r\nHost: shop.example\r\nConnection: close, host\r\n\r\n",
            "shop.example",
        ),
        (b"GET /old HTTP/1.0\r\n\r\n", endpoint.as_str()),
    ] {
        let resp = raw::exchange(addr, request).await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = last(&up);
        assert_eq!(all(&seen, "host"), [want], "{}", seen.uri);
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[tokio::test]
async fn request_id_is_generated_and_a_client_id_replaced() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "");
    let r = get_path(addr, "/id").await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert!(is_hex_id(&id), "{id}");
    assert_eq!(all(&last(&up), "x-request-id"), [id.as_str()]);

    let r2 = get_path(addr, "/id").await;
    assert_ne!(r2.header("x-request-id").unwrap(), id);

    let req = Request::get("/id")
        .header("host", "h.test")
        .header("x-request-id", "client-chosen-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(addr, req).await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert!(is_hex_id(&id), "{id}");
    assert_eq!(all(&last(&up), "x-request-id"), [id]);
}

#[tokio::test]
async fn request_id_from_the_client_is_kept_when_trusted() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "request_id: { trust_incoming: true }");
    let with_id = |id: &str| {
        Request::get("/id")
            .header("host", "h.test")
            .header("x-request-id", id)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = send(addr, with_id("client-chosen-1")).await;
    assert_eq!(r.header("x-request-id"), Some("client-chosen-1"));
    assert_eq!(all(&last(&up), "x-request-id"), ["client-chosen-1"]);

    // A malformed id is still replaced.
    let r = send(addr, with_id("has spaces")).await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert!(is_hex_id(&id), "{id}");
    assert_eq!(all(&last(&up), "x-request-id"), [id]);

    // No id: one is generated.
    let r = get_path(addr, "/id").await;
    assert!(is_hex_id(r.header("x-request-id").unwrap()));
}

#[tokio::test]
async fn http2_client_to_http1_upstream() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "");
    let req = Request::post("http://shop.example/h2?x=1")
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let r = send_h2(addr, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "up");
    let seen = last(&up);
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.uri, "/h2?x=1");
    assert_eq!(all(&seen, "host"), ["shop.example"]);
    assert_eq!(seen.body, "over h2");
}

#[tokio::test]
async fn http1_client_to_h2c_upstream() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"], protocol: h2c }}
routes:
  - {{ name: app, match: {{ prefix: / }}, upstream: app }}
"#,
        up.addr
    ));
    let addr = gw.addr("main");
    let req = Request::post("/to-h2?y=2")
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "forged")
        .body(Full::new(Bytes::from_static(b"over h1")))
        .unwrap();
    let r = send(addr, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "up");
    let seen = last(&up);
    assert_eq!(seen.version, Version::HTTP_2);
    // The fields the gateway sets reach an HTTP/2 upstream too, in place
    // of the client's.
    assert_eq!(all(&seen, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all(&seen, "x-forwarded-proto"), ["http"]);
    assert_eq!(all(&seen, "x-forwarded-host"), ["shop.example"]);
    let ids = all(&seen, "x-request-id");
    assert!(ids.len() == 1 && is_hex_id(&ids[0]), "{ids:?}");
    assert_eq!(all(&seen, "traceparent").len(), 1);
    assert_eq!(seen.uri.path_and_query().unwrap(), "/to-h2?y=2");
    assert_eq!(seen.uri.authority().unwrap(), "shop.example");
    assert_eq!(seen.body, "over h1");
    // Several requests share the one h2 connection and all succeed.
    for _ in 0..5 {
        assert_eq!(get_path(addr, "/again").await.status, 200);
    }
    assert_eq!(up.count(), 6);
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = raw::upstream(Action::Respond(raw::ok_response("pooled"))).await;
    let (_gw, addr) = proxy_to(up.addr, "workers: 1");
    for i in 0..20 {
        // A new client connection each time: reuse is on the upstream side.
        let r = get_path(addr, &format!("/r{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "pooled");
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.accepted(),
        1,
        "upstream connections opened for 20 requests"
    );
}

#[tokio::test]
async fn max_connections_hands_a_returned_connection_to_a_waiting_request() {
    // The first request is held by the upstream; the second waits for the only
    // connection slot and must get the connection once the first returns it,
    // not time out waiting for the connection to close.
    let up = raw::upstream(Action::Hold(raw::ok_response("held"))).await;
    let mut gw = Gateway::start(&format!(
        r#"
workers: 1
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app:
    endpoints: ["{}"]
    timeouts: {{ request: 5s }}
    pool: {{ max_connections: 1 }}
routes:
  - {{ name: app, match: {{ prefix: / }}, upstream: app }}
"#,
        up.addr
    ));
    let addr = gw.addr("main");
    let first = tokio::spawn(get_path(addr, "/first"));
    assert!(up.wait_requests(1, Duration::from_secs(10)).await);
    let second = tokio::spawn(get_path(addr, "/second"));
    // Let the second request reach the pool and wait for the slot (if it is
    // slower, it finds the idle connection directly and the test proves less).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.requests(), 1, "the second request did not wait");
    up.release();
    let first = first.await.unwrap();
    assert_eq!((first.status.as_u16(), first.text()), (200, "held".into()));
    let second = second.await.unwrap();
    assert_eq!(
        (second.status.as_u16(), second.text()),
        (200, "held".into())
    );
    assert_eq!(up.requests(), 2);
    assert_eq!(up.accepted(), 1, "upstream connections opened");
}

#[tokio::test]
async fn expect_100_continue_upload() {
    let up = upstream::named("up").await;
    let (_gw, addr) = proxy_to(up.addr, "");
    let mut s = raw::connect(addr).await;
    s.write_all(
        b"PUT /upload HTTP/1.1\r\nHost: shop.example\r\nExpect: 100-continue\r\n\
          Content-Length: 11\r\n\r\n",
    )
    .await
    .unwrap();
    // The interim answer comes before any body byte is sent.
    let mut interim = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        while raw::find(&interim, b"\r\n\r\n").is_none() {
            let n = s.read(&mut b).await.unwrap();
            assert_eq!(n, 1, "closed while waiting for 100 Continue");
            interim.push(b[0]);
        }
    })
    .await
    .expect("no 100 Continue");
    assert!(
        interim.starts_with(b"HTTP/1.1 100 "),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    s.write_all(b"hello world").await.unwrap();
    let resp = raw::read_response(&mut s, false).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "up");
    let seen = last(&up);
    assert_eq!(seen.body, "hello world");
    assert_eq!(hdr(&seen, "expect"), None);
}

/// Sends `request` (with `Connection: close`) and returns the status line plus
/// headers, and every byte after the head.
async fn head_and_rest(addr: SocketAddr, request: &[u8]) -> (String, Vec<u8>) {
    let mut s = raw::connect(addr).await;
    s.write_all(request).await.unwrap();
    let (bytes, eof) = raw::read_to_end(&mut s, raw::RAW_TIMEOUT).await;
    assert!(eof, "connection not closed");
    let end = raw::find(&bytes, b"\r\n\r\n").expect("a complete head") + 4;
    (
        String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase(),
        bytes[end..].to_vec(),
    )
}

#[tokio::test]
async fn head_is_proxied_without_body_but_with_content_length() {
    let up = upstream::start(|_| Response::new(Full::new(Bytes::from_static(b"0123456789")))).await;
    let (_gw, addr) = proxy_to(up.addr, "");
    let (head, rest) = head_and_rest(
        addr,
        b"HEAD /thing HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert!(head.contains("\r\ncontent-length: 10\r\n"), "{head}");
    assert!(rest.is_empty(), "HEAD answer has a body: {rest:?}");
    assert_eq!(last(&up).method, "HEAD");
}

#[tokio::test]
async fn no_content_and_not_modified_pass_without_body() {
    let no_content = raw::upstream(Action::Respond(
        b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n".to_vec(),
    ))
    .await;
    let not_modified = raw::upstream(Action::Respond(
        b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n".to_vec(),
    ))
    .await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  nc: {{ endpoints: ["{}"] }}
  nm: {{ endpoints: ["{}"] }}
routes:
  - {{ name: nc, match: {{ prefix: /204 }}, upstream: nc }}
  - {{ name: nm, match: {{ prefix: /304 }}, upstream: nm }}
"#,
        no_content.addr, not_modified.addr
    ));
    let addr = gw.addr("main");
    let (head, rest) = head_and_rest(
        addr,
        b"DELETE /204 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 204 "), "{head}");
    assert!(head.contains("x-kind: none"), "{head}");
    assert!(rest.is_empty(), "204 has a body: {rest:?}");

    let (head, rest) = head_and_rest(
        addr,
        b"GET /304 HTTP/1.1\r\nHost: shop.example\r\nIf-None-Match: \"v1\"\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 304 "), "{head}");
    assert!(head.contains("etag: \"v1\""), "{head}");
    assert!(rest.is_empty(), "304 has a body: {rest:?}");

    // And on a kept-alive connection, the next response is read cleanly.
    let mut s = raw::connect(addr).await;
    s.write_all(b"GET /304 HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let first = raw::read_response(&mut s, false).await.unwrap();
    assert_eq!(first.status, 304);
    s.write_all(b"GET /204 HTTP/1.1\r\nHost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let second = raw::read_response(&mut s, false).await.unwrap();
    assert_eq!(second.status, 204);
    assert!(second.body.is_empty());
}
