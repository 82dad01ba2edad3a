//! Bodies stream through the gateway without being buffered: 1 GiB up and
//! 1 GiB down, with exact byte counts, while the gateway's peak resident
//! memory stays far below the size of the body.
// Test helpers panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::Gateway;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;
/// Generous for a debug build on a shared 2-core machine.
const TRANSFER_LIMIT: Duration = Duration::from_secs(300);
/// Peak RSS allowed for the gateway. A gateway that buffered the body would
/// need more than 1 GiB; a streaming one stays at its baseline (~10-20 MiB).
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// A generated body: `remaining` bytes in `CHUNK`-sized frames of one shared buffer.
struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl Generated {
    fn new(len: u64) -> Self {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
        Self {
            remaining: len,
            chunk: Bytes::from(chunk),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Counts a body's data bytes, frame by frame, keeping none of them.
async fn count(mut body: Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(d) = frame.expect("body failed").into_data() {
            n += d.len() as u64;
        }
    }
    n
}

/// Either a generated body or a short text.
enum Answer {
    Text(Option<Bytes>),
    Stream(Generated),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Answer::Text(t) => Poll::Ready(t.take().map(|b| Ok(Frame::data(b)))),
            Answer::Stream(g) => Pin::new(g).poll_frame(cx),
        }
    }
}

/// `POST /upload` answers the number of bytes received; `GET /download/N`
/// streams N bytes (chunked: no Content-Length).
async fn bulk_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_owned();
                    let answer = if path == "/upload" {
                        let n = count(req.into_body()).await;
                        Answer::Text(Some(Bytes::from(n.to_string())))
                    } else if let Some(n) = path.strip_prefix("/download/") {
                        Answer::Stream(Generated::new(n.parse().unwrap()))
                    } else {
                        Answer::Text(Some(Bytes::from_static(b"?")))
                    };
                    Ok::<_, Infallible>(Response::new(answer))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(upstream: SocketAddr, protocol: &str) -> String {
    format!(
        r#"
access_log: {{ enabled: false }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  bulk: {{ endpoints: ["{upstream}"], protocol: {protocol} }}
routes:
  - name: bulk
    match: {{ prefix: / }}
    upstream: bulk
"#
    )
}

/// The client's side of one connection to the gateway: HTTP/1.1 or h2c.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<Generated>),
    H2(hyper::client::conn::http2::SendRequest<Generated>),
}

impl Client {
    async fn connect(addr: SocketAddr, h2: bool) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let io = TokioIo::new(stream);
        if h2 {
            let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(tx)
        } else {
            let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(tx)
        }
    }

    async fn send(&mut self, req: Request<Generated>) -> Response<Incoming> {
        match self {
            Client::H1(tx) => tx.send_request(req).await.unwrap(),
            Client::H2(tx) => tx.send_request(req).await.unwrap(),
        }
    }
}

async fn upload(addr: SocketAddr, len: u64, h2: bool) -> u64 {
    let mut client = Client::connect(addr, h2).await;
    let req = Request::post(format!("http://{addr}/upload"))
        .header("host", addr.to_string())
        .header("content-length", len)
        .body(Generated::new(len))
        .unwrap();
    let resp = client.send(req).await;
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).parse().unwrap()
}

async fn download(addr: SocketAddr, len: u64, h2: bool) -> u64 {
    let mut client = Client::connect(addr, h2).await;
    let req = Request::get(format!("http://{addr}/download/{len}"))
        .header("host", addr.to_string())
        .body(Generated::new(0))
        .unwrap();
    let resp = client.send(req).await;
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("content-length"));
    count(resp.into_body()).await
}

/// Moves 1 GiB one way through a fresh gateway and checks count and memory.
async fn transfer(direction: &str, protocol: &str) {
    let h2 = protocol == "h2c";
    let up = bulk_upstream().await;
    let mut gw = Gateway::start(&config(up, protocol));
    let addr = gw.addr("main");
    let before = gw.peak_rss_kib();
    let started = Instant::now();
    let n = timeout(TRANSFER_LIMIT, async {
        match direction {
            "upload" => upload(addr, GIB, h2).await,
            _ => download(addr, GIB, h2).await,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{direction} over {protocol} timed out"));
    let took = started.elapsed();
    let peak = gw.peak_rss_kib();
    eprintln!(
        "{direction} over {protocol}: 1 GiB in {took:?}; gateway peak RSS {before} KiB at start, {peak} KiB after"
    );
    assert_eq!(n, GIB, "{direction} over {protocol}: byte count");
    assert!(
        peak < RSS_LIMIT_KIB,
        "{direction} over {protocol}: gateway peak RSS {peak} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_http1() {
    transfer("upload", "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_http1() {
    transfer("download", "http1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_h2c() {
    transfer("upload", "h2c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_h2c() {
    transfer("download", "h2c").await;
}
