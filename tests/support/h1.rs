//! For the HTTP/1.1 upstream tests: a one-worker gateway (so one upstream
//! pool for every client connection) in front of one upstream, and client
//! exchanges bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::timeout;

use super::Gateway;
use super::raw::{self, RawResponse};

/// Bound on every exchange a test waits for.
pub const LIMIT: Duration = Duration::from_secs(10);

/// One worker proxying every path to `upstream`.
pub fn gateway(upstream: SocketAddr) -> (Gateway, SocketAddr) {
    gateway_with_limits(upstream, "{}")
}

/// [`gateway`] with `limits` (a YAML map).
pub fn gateway_with_limits(upstream: SocketAddr, limits: &str) -> (Gateway, SocketAddr) {
    let mut gw = Gateway::start(&format!(
        r#"
workers: 1
limits: {limits}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  u: {{ endpoints: ["{upstream}"], timeouts: {{ request: 5s }} }}
routes:
  - {{ name: all, match: {{ prefix: / }}, upstream: u }}
"#
    ));
    let addr = gw.addr("main");
    (gw, addr)
}

/// A GET for `path`, byte for byte.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: h1.test\r\n\r\n").into_bytes()
}

/// `request` on a new client connection; the response, or why there is none.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, String> {
    timeout(LIMIT, raw::exchange(addr, request))
        .await
        .unwrap_or_else(|_| Err("no answer within the timeout".into()))
}

/// GET `path` on a new client connection; a response must come.
pub async fn fetch(addr: SocketAddr, path: &str) -> RawResponse {
    exchange(addr, &get(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}
