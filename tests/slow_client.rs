//! A client that stops reading cannot hold its connection, and the upstream
//! connection behind it, past `limits.send_timeout`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::raw::{self, Action};
use support::{Gateway, get_path};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_client_that_stops_reading_releases_the_upstream_connection() {
    // Far more than the socket buffers between upstream, gateway and client
    // hold (loopback receive buffers grow to 32 MiB here).
    let big = vec![b'x'; 128 << 20];
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    response.extend_from_slice(&big);
    let up = raw::upstream(Action::Respond(response)).await;
    let mut gw = Gateway::start(&format!(
        r#"
limits: {{ send_timeout: 500ms }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  big: {{ endpoints: ["{}"], pool: {{ max_connections: 1 }}, timeouts: {{ request: 30s }} }}
routes:
  - {{ name: big, match: {{ prefix: / }}, upstream: big }}
"#,
        up.addr
    ));
    let addr = gw.addr("main");

    // Asks for the big body and never reads it, with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /stalled HTTP/1.1\r\nHost: h.test\r\n\r\n")
        .await
        .unwrap();
    assert!(up.wait_requests(1, Duration::from_secs(5)).await);

    // The only upstream connection is freed once the stalled write times out.
    let next = tokio::time::timeout(Duration::from_secs(10), get_path(addr, "/next"))
        .await
        .expect("the upstream connection was never released");
    assert_eq!(next.status, 200);
    assert_eq!(next.body.len(), 128 << 20);
    drop(stalled);
}
