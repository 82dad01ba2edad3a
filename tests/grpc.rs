//! gRPC through the gateway: a tonic client speaking h2c to the gateway, an h2c
//! upstream (`protocol: h2c`) serving `test.Echo` with tonic's server codec.
//! Also plain HTTP/2 trailers, both ways, with hyper on both ends.
// Test helpers panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::Gateway;
use support::grpc::{self, EchoRequest};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(10);

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  grpc: {{ endpoints: ["{upstream}"], protocol: h2c }}
routes:
  - name: grpc
    match: {{ prefix: /test.Echo }}
    upstream: grpc
"#
    )
}

fn request(message: &str, count: u32, fail_with: i32) -> tonic::Request<EchoRequest> {
    tonic::Request::new(EchoRequest {
        message: message.into(),
        count,
        fail_with,
    })
}

#[tokio::test]
async fn unary_call() {
    let up = grpc::start().await;
    let mut gw = Gateway::start(&config(up.addr));
    let mut client = grpc::client(gw.addr("main")).await;

    let mut req = request("hello", 0, 0);
    req.metadata_mut()
        .insert("x-client", "grpc-test".parse().unwrap());
    let resp = timeout(LIMIT, grpc::unary(&mut client, req))
        .await
        .expect("call timed out")
        .expect("call failed");
    // tonic merges the trailers into the metadata: grpc-status 0 arrived.
    assert_eq!(
        resp.metadata()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("0"),
        "metadata: {:?}",
        resp.metadata()
    );
    assert_eq!(
        resp.metadata()
            .get("x-served-by")
            .map(|v| v.to_str().unwrap()),
        Some("grpc-upstream")
    );
    assert!(resp.metadata().contains_key("x-request-id"));
    assert_eq!(resp.into_inner().message, "echo: hello");

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let call = &seen[0];
    assert_eq!(call.path, grpc::UNARY);
    assert_eq!(call.version, http::Version::HTTP_2);
    let h = |n: &str| call.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(h("content-type").as_deref(), Some("application/grpc"));
    assert_eq!(h("te").as_deref(), Some("trailers"));
    assert_eq!(h("x-client").as_deref(), Some("grpc-test"));
}

#[tokio::test]
async fn unary_error_status_reaches_the_client() {
    let up = grpc::start().await;
    let mut gw = Gateway::start(&config(up.addr));
    let mut client = grpc::client(gw.addr("main")).await;

    let status = timeout(LIMIT, grpc::unary(&mut client, request("missing-42", 0, 0)))
        .await
        .expect("call timed out")
        .expect_err("the upstream answers NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such item: missing-42");

    // The connection stays usable after an error.
    let ok = timeout(LIMIT, grpc::unary(&mut client, request("again", 0, 0)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.into_inner().message, "echo: again");
}

#[tokio::test]
async fn server_streaming_in_order() {
    let up = grpc::start().await;
    let mut gw = Gateway::start(&config(up.addr));
    let mut client = grpc::client(gw.addr("main")).await;

    timeout(LIMIT, async {
        let mut stream = grpc::server_streaming(&mut client, request("item", 50, 0))
            .await
            .expect("call failed")
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.expect("stream failed") {
            got.push(m);
        }
        assert_eq!(got.len(), 50);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(m.seq, i as u32);
            assert_eq!(m.message, format!("item #{i}"));
        }
        let trailers = stream
            .trailers()
            .await
            .expect("trailers")
            .unwrap_or_default();
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
            Some("0"),
            "trailers: {trailers:?}"
        );
    })
    .await
    .expect("stream timed out");
    assert_eq!(up.seen()[0].path, grpc::STREAM);
}

#[tokio::test]
async fn stream_error_in_trailers_reaches_the_client() {
    let up = grpc::start().await;
    let mut gw = Gateway::start(&config(up.addr));
    let mut client = grpc::client(gw.addr("main")).await;

    timeout(LIMIT, async {
        let code = Code::ResourceExhausted as i32;
        let mut stream = grpc::server_streaming(&mut client, request("part", 10, code))
            .await
            .expect("the status comes after the messages")
            .into_inner();
        let mut got = 0;
        let status = loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    assert_eq!(m.seq, got);
                    got += 1;
                }
                Ok(None) => panic!("stream ended without the error status"),
                Err(status) => break status,
            }
        };
        assert_eq!(got, 10);
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(status.message(), "failed after 10");
    })
    .await
    .expect("stream timed out");
}

#[tokio::test]
async fn concurrent_calls_share_the_gateway() {
    let up = grpc::start().await;
    let mut gw = Gateway::start(&config(up.addr));
    let client = grpc::client(gw.addr("main")).await;

    let calls = (0..20).map(|i| {
        let mut c = client.clone();
        tokio::spawn(async move {
            let r = grpc::unary(&mut c, request(&format!("call {i}"), 0, 0))
                .await
                .unwrap();
            assert_eq!(r.into_inner().message, format!("echo: call {i}"));
            let mut s = grpc::server_streaming(&mut c, request(&format!("s{i}"), 5, 0))
                .await
                .unwrap()
                .into_inner();
            let mut n = 0;
            while let Some(m) = s.message().await.unwrap() {
                assert_eq!(m.message, format!("s{i} #{n}"));
                n += 1;
            }
            assert_eq!(n, 5);
        })
    });
    for c in calls {
        timeout(LIMIT, c).await.expect("call timed out").unwrap();
    }
    assert_eq!(up.seen().len(), 40);
    // HTTP/2 multiplexing: one upstream connection per gateway worker at most.
    assert!(
        up.connections() <= 2,
        "{} upstream connections",
        up.connections()
    );
}

/// An h2c upstream that answers with a body and trailers, and reports the
/// request trailers it received in its own trailers.
async fn trailer_upstream() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let collected = req.into_body().collect().await.unwrap();
                        let req_trailers = collected.trailers().cloned().unwrap_or_default();
                        let len = collected.to_bytes().len();
                        rec.lock().unwrap().push(req_trailers.clone());
                        let mut trailers = HeaderMap::new();
                        trailers.insert("x-checksum", HeaderValue::from_static("c0ffee"));
                        trailers.insert(
                            "x-request-bytes",
                            HeaderValue::from_str(&len.to_string()).unwrap(),
                        );
                        if let Some(v) = req_trailers.get("x-client-trailer") {
                            trailers.insert("x-echoed-trailer", v.clone());
                        }
                        let body = Full::new(Bytes::from_static(b"body before trailers"))
                            .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(trailers))));
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn http2_trailers_pass_both_ways() {
    let (up, seen) = trailer_upstream().await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  h2: {{ endpoints: ["{up}"], protocol: h2c }}
routes:
  - name: h2
    match: {{ prefix: /t }}
    upstream: h2
"#
    ));
    let addr = gw.addr("main");

    timeout(LIMIT, async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req_trailers = HeaderMap::new();
        req_trailers.insert("x-client-trailer", HeaderValue::from_static("from-client"));
        let body = Full::new(Bytes::from_static(b"12345"))
            .with_trailers(std::future::ready(Some(Ok::<_, Infallible>(req_trailers))));
        let req = Request::post(format!("http://{addr}/t"))
            .header("te", "trailers")
            .body(body)
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(collected.to_bytes(), "body before trailers");
        let t = |n: &str| trailers.get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(t("x-checksum").as_deref(), Some("c0ffee"));
        assert_eq!(t("x-request-bytes").as_deref(), Some("5"));
        assert_eq!(t("x-echoed-trailer").as_deref(), Some("from-client"));
    })
    .await
    .expect("exchange timed out");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].get("x-client-trailer").map(|v| v.to_str().unwrap()),
        Some("from-client")
    );
}

// ---- errors made by the gateway ---------------------------------------------

/// An address that refuses connections: bound, then closed.
fn refusing_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn refused_upstream_is_unavailable_for_a_grpc_client() {
    let mut gw = Gateway::start(&config(refusing_addr()));
    let mut client = grpc::client(gw.addr("main")).await;

    let status = timeout(LIMIT, grpc::unary(&mut client, request("hello", 0, 0)))
        .await
        .expect("call timed out")
        .expect_err("the upstream refuses connections");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "Upstream connection failed", "{status:?}");
    assert!(
        status.metadata().contains_key("x-request-id"),
        "{:?}",
        status.metadata()
    );
}

#[tokio::test]
async fn no_route_is_unimplemented_for_a_grpc_client() {
    let up = grpc::start().await;
    let yaml = config(up.addr).replace("prefix: /test.Echo", "prefix: /other.Service");
    let mut gw = Gateway::start(&yaml);
    let mut client = grpc::client(gw.addr("main")).await;

    let status = timeout(LIMIT, grpc::unary(&mut client, request("hello", 0, 0)))
        .await
        .expect("call timed out")
        .expect_err("no route matches");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(
        status.message(),
        "No route matches the request",
        "{status:?}"
    );
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn gateway_errors_are_trailers_only_for_grpc_and_problems_otherwise() {
    let mut gw = Gateway::start(&config(refusing_addr()));
    let addr = gw.addr("main");
    let call = |content_type: &'static str| {
        Request::post(format!("http://{addr}{}", grpc::UNARY))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };

    for content_type in ["application/grpc", "application/grpc+proto"] {
        let r = support::send_h2(addr, call(content_type)).await;
        assert_eq!(r.status, 200, "{content_type}");
        assert_eq!(r.header("content-type"), Some("application/grpc"));
        assert_eq!(r.header("grpc-status"), Some("14"));
        assert_eq!(r.header("grpc-message"), Some("Upstream connection failed"));
        assert!(r.header("x-request-id").is_some());
        assert!(r.body.is_empty(), "{:?}", r.text());
    }

    // Anything else still gets the problem document.
    let r = support::send_h2(addr, call("application/json")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r.header("grpc-status").is_none());
}
