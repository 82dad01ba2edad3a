//! Backend hiding: headers that name the upstream's software are removed from
//! its responses, and the gateway's own error answers never carry an upstream
//! address or an internal error text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use support::raw::{self, Action};
use support::{Gateway, get_path};

/// An upstream that announces itself every way it can.
async fn chatty() -> support::upstream::Upstream {
    support::upstream::start(|_| {
        Response::builder()
            .header("server", "secret/1.0")
            .header("x-powered-by", "PHP/5.1")
            .header("x-backend-id", "db-7")
            .header("x-kept", "yes")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap()
    })
    .await
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
{extra}
upstreams:
  up: {{ endpoints: ["{upstream}"] }}
routes:
  - name: all
    upstream: up
"#
    )
}

#[tokio::test]
async fn default_list_hides_server_and_x_powered_by() {
    let up = chatty().await;
    let mut gw = Gateway::start(&config(up.addr, ""));
    let reply = get_path(gw.addr("main"), "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello");
    assert_eq!(reply.header("server"), None);
    assert_eq!(reply.header("x-powered-by"), None);
    assert_eq!(reply.header("x-backend-id"), Some("db-7"));
    assert_eq!(reply.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn configured_headers_are_hidden() {
    let up = chatty().await;
    let mut gw = Gateway::start(&config(
        up.addr,
        "hide_response_headers: [Server, x-powered-by, X-Backend-Id]",
    ));
    let reply = get_path(gw.addr("main"), "/").await;
    assert_eq!(reply.status, 200);
    for name in ["server", "x-powered-by", "x-backend-id"] {
        assert_eq!(reply.header(name), None, "{name}");
    }
    assert_eq!(reply.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn an_empty_list_hides_nothing() {
    let up = chatty().await;
    let mut gw = Gateway::start(&config(up.addr, "hide_response_headers: []"));
    let reply = get_path(gw.addr("main"), "/").await;
    assert_eq!(reply.header("server"), Some("secret/1.0"));
}

/// Asserts that nothing in `text` names the upstream. Request ids and dates
/// are left out: their digits could hold the port by chance.
fn no_trace(text: &str, addr: SocketAddr, what: &str) {
    let mut lower = text.to_ascii_lowercase();
    for line in lower.clone().split(['\n', ',', '{', '}']) {
        if line.contains("request") || line.starts_with("date:") {
            lower = lower.replace(line, "");
        }
    }
    for needle in [
        addr.to_string(),
        addr.port().to_string(),
        "127.0.0.1".to_string(),
        "refused".to_string(),
        "os error".to_string(),
        "hyper".to_string(),
        "garbage".to_string(),
    ] {
        assert!(!lower.contains(&needle), "{what} leaks {needle:?}: {text}");
    }
}

#[tokio::test]
async fn connect_failure_does_not_name_the_upstream() {
    // A port with nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    let mut gw = Gateway::start(&config(addr, ""));
    let gw_addr = gw.addr("main");
    let resp = raw::exchange(
        gw_addr,
        b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 502);
    let head: String = resp
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\n"))
        .collect();
    no_trace(&resp.text(), addr, "502 body");
    no_trace(&head, addr, "502 head");
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    let mut keys: Vec<_> = body.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["request_id", "status", "title", "type"]);

    // gRPC clients get the same reticence in grpc-message.
    let resp = raw::exchange(
        gw_addr,
        b"POST /pkg.Svc/M HTTP/1.1\r\nHost: h.test\r\ncontent-type: application/grpc\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let head: String = resp
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\n"))
        .collect();
    assert!(head.contains("grpc-status: 14"), "{head}");
    no_trace(&head, addr, "gRPC error head");
}

#[tokio::test]
async fn invalid_upstream_answer_does_not_leak() {
    let up = raw::upstream(Action::WriteAndClose(
        b"garbage from 127.0.0.1 hyper\r\n\r\n".to_vec(),
    ))
    .await;
    let mut gw = Gateway::start(&config(up.addr, ""));
    let resp = raw::exchange(
        gw.addr("main"),
        b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 502);
    no_trace(&resp.text(), up.addr, "502 body");
}
