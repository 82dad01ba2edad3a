//! Path normalisation before routing: the route, every filter and the
//! upstream see one normalised path, so a path spelled differently cannot
//! escape a route's match; the upstream receives exactly that path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::Gateway;
use support::raw::{self, Action, RawUpstream};

struct Setup {
    _gw: Gateway,
    addr: SocketAddr,
    /// Behind `prefix: /public`.
    public: RawUpstream,
    /// Behind `prefix: /api`.
    api: RawUpstream,
}

/// `/public` and `/api` go to recording upstreams; `/admin` is closed (403),
/// as a filter in front of an admin area would do.
async fn setup(normalize: &str) -> Setup {
    let public = raw::upstream(Action::Respond(raw::ok_response("public"))).await;
    let api = raw::upstream(Action::Respond(raw::ok_response("api"))).await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
normalize_path: {normalize}
upstreams:
  public: {{ endpoints: ["{}"] }}
  api: {{ endpoints: ["{}"] }}
routes:
  - name: public
    match: {{ prefix: /public }}
    upstream: public
  - name: api
    match: {{ prefix: /api }}
    upstream: api
  - name: admin
    match: {{ prefix: /admin }}
    respond: {{ status: 403, body: "closed" }}
"#,
        public.addr, api.addr
    ));
    let addr = gw.addr("main");
    Setup {
        _gw: gw,
        addr,
        public,
        api,
    }
}

/// Sends `GET target` and returns the status and body.
async fn get(s: &Setup, target: &str) -> (u16, String) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
    let resp = raw::exchange(s.addr, req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{target}: {e}"));
    (resp.status, resp.text())
}

/// The request line the upstream received last.
async fn request_line(up: &RawUpstream) -> String {
    assert!(up.wait_requests(1, Duration::from_secs(5)).await);
    let text = up.received_text();
    let last = text.rsplit("GET ").next().unwrap_or("");
    format!("GET {}", last.split("\r\n").next().unwrap_or(""))
}

#[tokio::test]
async fn upstream_receives_exactly_the_normalised_path() {
    let s = setup("{}").await;
    for (target, want) in [
        ("/public/a/../b", "GET /public/b HTTP/1.1"),
        ("/public//b///c", "GET /public/b/c HTTP/1.1"),
        ("/public/./b/.", "GET /public/b/ HTTP/1.1"),
        ("/x/../public/%62", "GET /public/b HTTP/1.1"),
        (
            "/public/caf%c3%a9?q=/../%2e",
            "GET /public/caf%C3%A9?q=/../%2e HTTP/1.1",
        ),
        ("/%70ublic/%7e", "GET /public/~ HTTP/1.1"),
        ("//public", "GET /public HTTP/1.1"),
    ] {
        let (status, body) = get(&s, target).await;
        assert_eq!((status, body.as_str()), (200, "public"), "{target}");
        assert_eq!(request_line(&s.public).await, want, "{target}");
    }
    assert!(s.api.received().is_empty());
}

#[tokio::test]
async fn a_route_cannot_be_escaped() {
    let s = setup("{}").await;
    for target in [
        "/public/../admin",
        "/public/../admin/",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/.%2e/admin",
        "/public/./../admin",
        "/public/x/../../admin",
        "//admin",
        "/%2e%2e/admin",
        "/%61dmin",
        "/api/../../admin",
    ] {
        let (status, body) = get(&s, target).await;
        assert_eq!((status, body.as_str()), (403, "closed"), "{target}");
    }
    // `..` can move a request between proxied routes too: it goes where the
    // normalised path says, never where its first segment says.
    let (status, body) = get(&s, "/public/../api/x").await;
    assert_eq!((status, body.as_str()), (200, "api"));
    assert_eq!(request_line(&s.api).await, "GET /api/x HTTP/1.1");
    assert!(
        s.public.received().is_empty(),
        "{}",
        s.public.received_text()
    );
}

#[tokio::test]
async fn refused_spellings_are_400_and_reach_nothing() {
    let s = setup("{}").await;
    for target in [
        "/public/%2e%2e%2fadmin",
        "/public/a%2Fb",
        "/public/%5cadmin",
        "/public/..%5cadmin",
        "/public/a%00",
        "/public/a%zz",
        "/public/a%4",
        "/public/..;/admin",
        "/public/\\admin",
        "\\admin",
        "/public\\..\\admin",
    ] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n");
        let resp = raw::exchange(s.addr, req.as_bytes()).await.unwrap();
        assert_eq!(resp.status, 400, "{target}: {}", resp.text());
    }
    // The ones the gateway refuses (not hyper) are problem documents.
    let (_, body) = get(&s, "/public/%2e%2e%2fadmin").await;
    assert!(body.contains("urn:portico:problem:bad-request"), "{body}");
    assert!(
        s.public.received().is_empty(),
        "{}",
        s.public.received_text()
    );
    assert!(s.api.received().is_empty());
}

#[tokio::test]
async fn encoded_slash_decode_and_backslash_slash() {
    let s = setup("{ encoded_slash: decode, backslash: slash }").await;
    let (status, body) = get(&s, "/public/%2e%2e%2fadmin").await;
    assert_eq!((status, body.as_str()), (403, "closed"));
    let (status, _) = get(&s, "/public/a%2fb%5Cc").await;
    assert_eq!(status, 200);
    assert_eq!(request_line(&s.public).await, "GET /public/a/b/c HTTP/1.1");
    let (status, body) = get(&s, "/public/..%5cadmin").await;
    assert_eq!((status, body.as_str()), (403, "closed"));
    let (status, body) = get(&s, "/public\\..\\admin").await;
    assert_eq!((status, body.as_str()), (403, "closed"));
}

#[tokio::test]
async fn encoded_slash_keep_and_no_merging() {
    let s = setup("{ encoded_slash: keep, merge_slashes: false }").await;
    let (status, _) = get(&s, "/public/a%2fb").await;
    assert_eq!(status, 200);
    assert_eq!(request_line(&s.public).await, "GET /public/a%2Fb HTTP/1.1");
    // A kept `%2F` is data: `..%2F` is a name, not a way out.
    let (status, body) = get(&s, "/public/..%2fadmin").await;
    assert_eq!((status, body.as_str()), (200, "public"));
    assert_eq!(
        request_line(&s.public).await,
        "GET /public/..%2Fadmin HTTP/1.1"
    );
    let (status, _) = get(&s, "/public//b").await;
    assert_eq!(status, 200);
    assert_eq!(request_line(&s.public).await, "GET /public//b HTTP/1.1");
}

/// `OPTIONS *` has no path to normalise.
#[tokio::test]
async fn options_star_is_not_a_path() {
    let s = setup("{}").await;
    let resp = raw::exchange(
        s.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // No route matches `*`; what matters is that it is not refused as a path.
    assert_ne!(resp.status, 400, "{}", resp.text());
}
