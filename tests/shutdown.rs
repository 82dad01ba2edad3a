//! Graceful shutdown: requests in flight finish, new connections are refused,
//! idle connections are closed, and `shutdown_timeout` bounds the wait.
// Test helpers panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::Gateway;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// An upstream that reports each request's arrival and answers `slow done`
/// only once released (or after `fallback`).
struct Held {
    addr: SocketAddr,
    arrived: mpsc::UnboundedReceiver<String>,
    release: Arc<Notify>,
}

async fn held_upstream(fallback: Duration) -> Held {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (tx, gate) = (tx.clone(), gate.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (tx, gate) = (tx.clone(), gate.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let released = gate.notified();
                        let _ = tx.send(path.clone());
                        if path.starts_with("/slow") {
                            let _ = timeout(fallback, released).await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("slow done"))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Held {
        addr,
        arrived,
        release,
    }
}

fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"{extra}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{upstream}"] }}
routes:
  - name: app
    match: {{ prefix: / }}
    upstream: app
"#
    )
}

/// One GET over a new connection; the error text when the exchange fails.
async fn try_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = tx
        .send_request(support::get("localhost", path))
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One GET over a new h2c connection; the error text when the exchange fails.
async fn try_get_h2(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls until connecting to `addr` is refused (10 s at most).
async fn wait_refused(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        match timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_then_exit_zero() {
    let mut up = held_upstream(LIMIT).await;
    let mut gw = Gateway::start(&config(up.addr, ""));
    let addr = gw.addr("main");

    // An idle keep-alive connection, used once.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut idle_tx, idle_conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let resp = timeout(
        LIMIT,
        idle_tx.send_request(support::get("localhost", "/fast")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    assert_eq!(up.arrived.recv().await.as_deref(), Some("/fast"));

    // A request held by the upstream.
    let in_flight = tokio::spawn(try_get(addr, "/slow"));
    let arrived = timeout(LIMIT, up.arrived.recv())
        .await
        .expect("request never arrived");
    assert_eq!(arrived.as_deref(), Some("/slow"));

    gw.signal("TERM");
    assert!(gw.wait_for_log("shutting down", LIMIT), "{}", gw.stderr());
    assert!(
        wait_refused(addr).await,
        "new connections still accepted while draining"
    );
    // The idle connection is closed by the gateway, not left to the deadline.
    let closed = timeout(LIMIT, idle_conn).await;
    assert!(closed.is_ok(), "the idle connection was not closed");
    assert!(!in_flight.is_finished(), "the held request ended early");

    up.release.notify_waiters();
    let reply = timeout(LIMIT, in_flight)
        .await
        .expect("in-flight request never completed")
        .unwrap();
    assert_eq!(reply, Ok((200, "slow done".to_string())));

    assert_eq!(gw.wait_exit(LIMIT), Some(0), "{}", gw.stderr());
    assert!(
        gw.stderr().contains("all connections drained"),
        "{}",
        gw.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_h2_request_completes_then_exit_zero() {
    let mut up = held_upstream(LIMIT).await;
    let mut gw = Gateway::start(&config(up.addr, ""));
    let addr = gw.addr("main");

    let in_flight = tokio::spawn(try_get_h2(addr, "/slow/h2"));
    let arrived = timeout(LIMIT, up.arrived.recv())
        .await
        .expect("request never arrived");
    assert_eq!(arrived.as_deref(), Some("/slow/h2"));

    gw.signal("TERM");
    assert!(wait_refused(addr).await, "new connections still accepted");
    assert!(!in_flight.is_finished(), "the held request ended early");
    up.release.notify_waiters();
    let reply = timeout(LIMIT, in_flight)
        .await
        .expect("in-flight request never completed")
        .unwrap();
    assert_eq!(reply, Ok((200, "slow done".to_string())));
    assert_eq!(gw.wait_exit(LIMIT), Some(0), "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_wait() {
    // The upstream never answers within the test (and the gateway's own
    // request timeout is the default 60 s).
    let mut up = held_upstream(Duration::from_secs(120)).await;
    let mut gw = Gateway::start(&config(up.addr, "shutdown_timeout: 500ms"));
    let addr = gw.addr("main");

    let in_flight = tokio::spawn(try_get(addr, "/slow/forever"));
    let arrived = timeout(LIMIT, up.arrived.recv())
        .await
        .expect("request never arrived");
    assert_eq!(arrived.as_deref(), Some("/slow/forever"));

    gw.signal("TERM");
    // Far below the 30 s default and the 60 s request timeout.
    assert_eq!(gw.wait_exit(LIMIT), Some(0), "{}", gw.stderr());
    assert!(
        gw.stderr().contains("shutdown deadline reached"),
        "{}",
        gw.stderr()
    );
    let outcome = timeout(LIMIT, in_flight)
        .await
        .expect("the client was left hanging")
        .unwrap();
    assert!(outcome.is_err(), "cut request answered: {outcome:?}");
}

#[tokio::test]
async fn sigint_also_shuts_down_cleanly() {
    let up = held_upstream(LIMIT).await;
    let mut gw = Gateway::start(&config(up.addr, ""));
    let addr = gw.addr("main");
    assert_eq!(try_get(addr, "/fast").await, Ok((200, "slow done".into())));
    gw.signal("INT");
    assert_eq!(gw.wait_exit(LIMIT), Some(0), "{}", gw.stderr());
    assert!(
        matches!(TcpStream::connect(addr).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_stops_at_once_with_exit_one() {
    // Neither the upstream nor the drain deadline would end the wait within
    // the test.
    let mut up = held_upstream(Duration::from_secs(120)).await;
    let mut gw = Gateway::start(&config(up.addr, "shutdown_timeout: 120s"));
    let addr = gw.addr("main");

    let in_flight = tokio::spawn(try_get(addr, "/slow/held"));
    let arrived = timeout(LIMIT, up.arrived.recv())
        .await
        .expect("request never arrived");
    assert_eq!(arrived.as_deref(), Some("/slow/held"));

    gw.signal("TERM");
    assert!(gw.wait_for_log("shutting down", LIMIT), "{}", gw.stderr());
    assert!(wait_refused(addr).await, "new connections still accepted");
    assert_eq!(
        gw.wait_exit(Duration::from_millis(200)),
        None,
        "exited early"
    );
    assert!(!in_flight.is_finished(), "the held request ended early");

    gw.signal("TERM");
    assert_eq!(gw.wait_exit(LIMIT), Some(1), "{}", gw.stderr());
    assert!(
        gw.stderr().contains("second stop signal"),
        "{}",
        gw.stderr()
    );
    let outcome = timeout(LIMIT, in_flight)
        .await
        .expect("the client was left hanging")
        .unwrap();
    assert!(outcome.is_err(), "cut request answered: {outcome:?}");
}

/// A reload that arrives while draining binds nothing: a listener added by it
/// never accepts.
#[tokio::test]
async fn reload_during_shutdown_binds_nothing() {
    let mut up = held_upstream(LIMIT).await;
    let mut gw = Gateway::start(&config(up.addr, "shutdown_timeout: 5s"));
    let addr = gw.addr("main");
    let inflight = tokio::spawn(async move { try_get(addr, "/slow").await });
    timeout(LIMIT, up.arrived.recv()).await.unwrap().unwrap();
    gw.signal("TERM");
    assert!(gw.wait_for_log("shutting down", LIMIT));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "listeners: [{{ name: main, address: \"{addr}\" }}, {{ name: late, address: \"127.0.0.1:{port}\" }}]"
    );
    let yaml = config(up.addr, "shutdown_timeout: 5s").replace(
        "listeners: [{ name: main, address: \"127.0.0.1:0\" }]",
        &extra,
    );
    gw.replace_config(&yaml);
    gw.signal("HUP");
    assert!(gw.wait_for_log("reload failed", LIMIT), "{}", gw.stderr());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a listener was bound during shutdown"
    );
    up.release.notify_waiters();
    let (status, _) = timeout(LIMIT, inflight).await.unwrap().unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(gw.wait_exit(LIMIT), Some(0));
}
