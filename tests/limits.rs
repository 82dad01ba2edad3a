//! Limits on what one client may hold or send: connection caps per listener
//! and per IP, the idle keep-alive timeout (HTTP/1.1 and HTTP/2), the body
//! read timeout (408), the body size limit (413, by Content-Length and while
//! streaming, with per-route overrides), and the advertised HTTP/2 stream cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod h2frames;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::raw::{self, Action};
use support::{Gateway, get_path, upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A keep-alive GET on `s`; the response status.
async fn get_on(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n")
        .await
        .unwrap();
    raw::read_response(s, false).await.unwrap().status
}

/// True when the gateway closes `s` unanswered within 2 s.
async fn closed_unanswered(s: &mut TcpStream) -> bool {
    // The write may already fail if the gateway closed first.
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
    let (bytes, eof) = raw::read_to_end(s, Duration::from_secs(2)).await;
    eof && bytes.is_empty()
}

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{ip}:0").parse::<SocketAddr>().unwrap())
        .unwrap();
    socket.connect(to).await.unwrap()
}

fn respond_config(listener_extra: &str, limits: &str) -> String {
    format!(
        r#"
workers: 2
admin: {{ address: "127.0.0.1:0" }}
limits: {{ {limits} }}
listeners: [{{ name: main, address: "127.0.0.1:0"{listener_extra} }}]
routes:
  - {{ name: hello, match: {{ prefix: / }}, respond: {{ status: 200, body: "hi" }} }}
"#
    )
}

/// The value of the first metrics line starting with `series`.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = get_path(admin, "/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_listener_cap_closes_extra_connections_across_workers_and_frees_slots() {
    let mut gw = Gateway::start(&respond_config(", max_connections: 3", ""));
    let addr = gw.addr("main");
    let admin = gw.addr("admin");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = raw::connect(addr).await;
        assert_eq!(get_on(&mut s).await, 200);
        held.push(s);
    }
    let mut extra = raw::connect(addr).await;
    assert!(
        closed_unanswered(&mut extra).await,
        "the 4th connection was served"
    );
    // The count follows connections across both workers' accept loops.
    let refused = metric(
        admin,
        r#"portico_listener_connections_refused_total{listener="main",reason="max_connections"}"#,
    )
    .await;
    assert!(refused >= 1.0, "refusal not counted: {refused}");

    // A closed connection gives its slot back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = raw::connect(addr).await;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
        if let Ok(r) = raw::read_response(&mut s, false).await {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed slot was never reusable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_per_ip_cap_counts_each_client_address() {
    let mut gw = Gateway::start(&respond_config(", max_connections_per_ip: 2", ""));
    let addr = gw.addr("main");
    let mut a1 = connect_from("127.0.0.1", addr).await;
    let mut a2 = connect_from("127.0.0.1", addr).await;
    assert_eq!(get_on(&mut a1).await, 200);
    assert_eq!(get_on(&mut a2).await, 200);
    let mut a3 = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_unanswered(&mut a3).await,
        "a third connection from one IP was served"
    );
    // Another address still gets in.
    let mut b1 = connect_from("127.0.0.2", addr).await;
    assert_eq!(get_on(&mut b1).await, 200);
    // And a freed slot is usable again.
    drop(a1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from("127.0.0.1", addr).await;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n").await;
        if let Ok(r) = raw::read_response(&mut s, false).await {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed per-IP slot was never reusable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop((a2, b1));
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let up = raw::upstream(Action::Delay(
        Duration::from_millis(900),
        raw::ok_response("slow"),
    ))
    .await;
    let mut gw = Gateway::start(&format!(
        r#"
limits: {{ idle_timeout: 400ms, header_read_timeout: 20s }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  slow: {{ endpoints: ["{}"] }}
routes:
  - {{ name: slow, match: {{ prefix: /slow }}, upstream: slow }}
  - {{ name: hello, match: {{ prefix: / }}, respond: {{ status: 200, body: "hi" }} }}
"#,
        up.addr
    ));
    let addr = gw.addr("main");
    let mut s = raw::connect(addr).await;
    // A request in flight longer than the idle timeout keeps the connection.
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: h.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(raw::read_response(&mut s, false).await.unwrap().status, 200);
    // Then idle: closed after about the timeout.
    let idle_from = Instant::now();
    let (bytes, eof) = raw::read_to_end(&mut s, Duration::from_secs(5)).await;
    let idle = idle_from.elapsed();
    assert!(eof && bytes.is_empty(), "not closed: {bytes:?}");
    assert!(
        idle >= Duration::from_millis(350) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    let mut gw = Gateway::start(&respond_config("", "idle_timeout: 400ms"));
    let addr = gw.addr("main");
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://h.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp: Response<_> = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle HTTP/2 connection stayed open")
        .unwrap()
        .unwrap();
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(350), "closed after {idle:?}");
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_upstream_an_aborted_body() {
    let up = raw::upstream(Action::Stall).await;
    let mut gw = Gateway::start(&format!(
        r#"
limits: {{ body_read_timeout: 400ms }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  up: {{ endpoints: ["{}"], timeouts: {{ request: 30s, idle: 30s }} }}
routes:
  - {{ name: up, match: {{ prefix: / }}, upstream: up }}
"#,
        up.addr
    ));
    let addr = gw.addr("main");
    let mut s = raw::connect(addr).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: h.test\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let started = Instant::now();
    let r = raw::read_response(&mut s, false).await.unwrap();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("request-timeout"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    // The upstream got at most the head and the bytes sent before the stall.
    let got = up.received_text();
    let body = got.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.len() < 100, "the upstream got a whole body: {got:?}");
}

fn body_limit_config(up: SocketAddr) -> String {
    format!(
        r#"
limits: {{ max_body_size: 1KiB }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  up: {{ endpoints: ["{up}"] }}
routes:
  - {{ name: big, match: {{ prefix: /big }}, upstream: up, max_body_size: 8KiB }}
  - {{ name: small, match: {{ prefix: / }}, upstream: up }}
"#
    )
}

#[tokio::test]
async fn a_declared_length_over_the_limit_gets_413_before_anything_goes_upstream() {
    let up = raw::upstream(Action::Respond(raw::ok_response("ok"))).await;
    let mut gw = Gateway::start(&body_limit_config(up.addr));
    let addr = gw.addr("main");
    let body = vec![b'x'; 2000];
    let mut req = b"POST /small HTTP/1.1\r\nHost: h.test\r\nContent-Length: 2000\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    let r = raw::exchange(addr, &req).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("payload-too-large"), "{}", r.text());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.accepted(), 0, "the upstream was contacted");
    assert!(up.received().is_empty());

    // HTTP/2 declares the length too.
    let reply = support::send_h2(
        addr,
        Request::post("http://h.test/small")
            .header("content-length", "2000")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 413);
    assert_eq!(up.accepted(), 0);
}

#[tokio::test]
async fn a_route_may_allow_larger_bodies() {
    let up =
        upstream::start(|seen| Response::new(Full::new(Bytes::from(seen.body.len().to_string()))))
            .await;
    let mut gw = Gateway::start(&body_limit_config(up.addr));
    let addr = gw.addr("main");
    let post = |path: &str, n: usize| {
        Request::post(path)
            .header("host", "h.test")
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let r = support::send(addr, post("/big", 5000)).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "5000"));
    let r = support::send(addr, post("/big", 9000)).await;
    assert_eq!(r.status, 413);
    let r = support::send(addr, post("/small", 1000)).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "1000"));
    let r = support::send(addr, post("/small", 1100)).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_cut_with_413() {
    let up = raw::upstream(Action::Stall).await;
    let mut gw = Gateway::start(&body_limit_config(up.addr));
    let addr = gw.addr("main");
    let mut s = raw::connect(addr).await;
    s.write_all(b"POST /small HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
    s.write_all(chunk.as_bytes()).await.unwrap();
    // Let the first chunk reach the upstream before the one that goes over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(chunk.as_bytes()).await.unwrap();
    let r = raw::read_response(&mut s, false).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    // The upstream's exchange was cut: it never saw the body's last chunk
    // (looked for past the head, where a request id ending in 0 looks like one).
    let got = up.received_text();
    let body = got.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(
        !body.contains("0\r\n\r\n"),
        "the upstream got a complete body: {got:?}"
    );
    assert!(
        got.matches('y').count() <= 1024,
        "more than the limit went upstream"
    );
}

#[tokio::test]
async fn the_http2_stream_cap_is_advertised() {
    let mut gw = Gateway::start(&respond_config("", "max_concurrent_streams: 7"));
    let addr = gw.addr("main");
    let mut s = h2frames::connect(addr).await;
    let settings = loop {
        let f = h2frames::read_frame(&mut s, Duration::from_secs(5))
            .await
            .expect("no SETTINGS from the server");
        if f.kind == h2frames::SETTINGS && f.flags & h2frames::ACK == 0 {
            break f.settings();
        }
    };
    // SETTINGS_MAX_CONCURRENT_STREAMS is 0x3.
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
}

#[tokio::test]
async fn websocket_tunnels_hold_their_connection_slots() {
    let echo = support::ws::echo().await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0", max_connections_per_ip: 2 }}]
upstreams:
  ws: {{ endpoints: ["{}"] }}
routes:
  - {{ name: ws, match: {{ prefix: / }}, upstream: ws }}
"#,
        echo.addr
    ));
    let addr = gw.addr("main");
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (ws, resp) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        .expect("handshake timed out")
        .unwrap();
        assert_eq!(resp.status(), 101);
        tunnels.push(ws);
    }
    // Both tunnels still hold their client's slots: a third connection is refused.
    let mut third = connect_from("127.0.0.1", addr).await;
    assert!(
        closed_unanswered(&mut third).await,
        "a third connection was served while two tunnels were open"
    );

    // Closing a tunnel gives its slot back.
    let mut first = tunnels.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await;
        if let Ok(Ok((ws, resp))) = attempt {
            assert_eq!(resp.status(), 101);
            drop(ws);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of the closed tunnel was never given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tunnels);
}

/// An h2c upstream behind a 1 KiB body limit and a 1 s body read timeout,
/// ejected after one 5xx.
fn h2c_body_limits_config(up: SocketAddr) -> String {
    format!(
        r#"
limits: {{ max_body_size: 1KiB, body_read_timeout: 1s }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  up:
    endpoints: ["{up}"]
    protocol: h2c
    timeouts: {{ request: 30s, idle: 30s }}
    outlier_detection: {{ consecutive_5xx: 1, base_ejection_time: 10s, max_ejection_percent: 100 }}
routes:
  - {{ name: up, match: {{ prefix: / }}, upstream: up }}
"#
    )
}

#[tokio::test]
async fn client_body_faults_through_an_h2c_upstream_are_the_clients() {
    let up = upstream::start(|seen| Response::new(Full::new(seen.body.clone()))).await;
    let mut gw = Gateway::start(&h2c_body_limits_config(up.addr));
    let addr = gw.addr("main");

    // A chunked body over the limit: 413.
    let mut s = raw::connect(addr).await;
    s.write_all(b"POST /big HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
    s.write_all(chunk.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = s.write_all(chunk.as_bytes()).await;
    let r = raw::read_response(&mut s, false).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("payload-too-large"), "{}", r.text());

    // A body stalled past the read timeout: 408.
    let mut s = raw::connect(addr).await;
    s.write_all(b"POST /stall HTTP/1.1\r\nHost: h.test\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let started = Instant::now();
    let r = raw::read_response(&mut s, false).await.unwrap();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("request-timeout"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(5));

    // Neither counted against the endpoint: it is not ejected.
    let r = get_path(addr, "/after").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        gw.count_log("request failed"),
        0,
        "client faults logged as warnings: {}",
        gw.stderr()
    );
}
