#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The client side of HTTP/1.1 (`server/h1.rs`): plain requests are served
//! by the gateway's own loop, anything else hands the connection, with the
//! bytes read so far, to hyper's server. These tests write exact bytes over
//! raw TCP to the real gateway binary, in front of real upstream servers the
//! test starts, and check what the fast path must get right: pipelining,
//! the hand-off in the middle of a connection, smuggling after a fast
//! request, `Connection: close`, bodiless responses, re-framing a body of
//! unknown length, the gateway's own responses, a client that leaves, h2c on
//! the same listener and the head and idle timeouts.
//!
//! Responses are read through a buffer kept for the whole connection, so
//! that pipelined responses arriving in one read are all seen and a stray
//! byte after a response shows as a malformed next one. Every wait is
//! bounded; failures print the bytes seen on the wire.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::Gateway;
use support::h1::{LIMIT, gateway, gateway_with_limits};
use support::raw::{self, Action, find};
use support::upstream::{self, Seen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};

// ---------------------------------------------------------------------------
// Client

/// A response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// The head as sent, for failure messages.
    head: String,
    /// Header lines, names lowercased, in order.
    headers: Vec<(String, String)>,
    /// The body, de-chunked.
    body: Vec<u8>,
    /// Whether it came chunked.
    chunked: bool,
    /// Trailer fields of a chunked body.
    trailers: Vec<(String, String)>,
}

impl Resp {
    /// The only value of `name`; panics when it is given more than once.
    fn header(&self, name: &str) -> Option<&str> {
        let values = self.values(name);
        assert!(values.len() <= 1, "{name} given twice: {}", self.head);
        values.first().copied()
    }

    fn values(&self, name: &str) -> Vec<&str> {
        raw::values(&self.headers, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A 200 whose body is exactly `body`.
#[track_caller]
fn assert_ok(r: &Resp, body: &str) {
    assert_eq!(r.status, 200, "{}{:?}", r.head, r.text());
    assert_eq!(r.text(), body, "{}", r.head);
}

/// One client connection. Everything read is kept in `wire`.
struct Conn {
    s: TcpStream,
    /// Read and not yet taken as (part of) a response.
    buf: Vec<u8>,
    /// Every byte read on the connection.
    wire: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let s = raw::connect(addr).await;
        s.set_nodelay(true).unwrap();
        Conn {
            s,
            buf: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// What the connection received, for failure messages.
    fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.wire).into_owned()
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(LIMIT, self.s.write_all(bytes))
            .await
            .expect("writing timed out")
            .expect("writing");
    }

    /// Reads more; `Err` at the end of the stream (or on an error).
    async fn more(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk).await {
            Ok(0) => Err("the connection was closed".into()),
            Err(e) => Err(format!("read failed: {e}")),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.wire.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Takes a CRLF-terminated line off the buffer.
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err("a line over 64 KiB".into());
            }
            self.more().await?;
        }
    }

    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            self.more().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads the next final response (a HEAD request's has no body).
    async fn response(&mut self, head_request: bool) -> Resp {
        match timeout(LIMIT, self.read_response(head_request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("{e}; the connection received:\n{:?}", self.transcript()),
            Err(_) => panic!(
                "no response within {LIMIT:?}; the connection received:\n{:?}",
                self.transcript()
            ),
        }
    }

    /// [`Conn::response`] for `n` responses to GET requests.
    async fn responses(&mut self, n: usize) -> Vec<Resp> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.response(false).await);
        }
        all
    }

    async fn read_response(&mut self, head_request: bool) -> Result<Resp, String> {
        loop {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i + 4;
                }
                self.more().await?;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end);
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .or_else(|| head.strip_prefix("HTTP/1.0 "))
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| format!("not an HTTP/1.x status line: {head:?}"))?;
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut r = Resp {
                status,
                headers: raw::parse_headers(&head),
                head,
                body: Vec::new(),
                chunked: false,
                trailers: Vec::new(),
            };
            let te = r.values("transfer-encoding").join(",").to_ascii_lowercase();
            let lengths = r.values("content-length");
            if !te.is_empty() && !lengths.is_empty() {
                return Err(format!("both framing fields: {}", r.head));
            }
            if head_request || status == 204 || status == 304 {
                return Ok(r);
            }
            if !te.is_empty() {
                if te.trim() != "chunked" {
                    return Err(format!("transfer coding other than chunked: {}", r.head));
                }
                r.chunked = true;
                self.read_chunked(&mut r).await?;
            } else if let [length] = lengths[..] {
                let n: usize = length
                    .parse()
                    .map_err(|_| format!("bad Content-Length: {}", r.head))?;
                r.body = self.take(n).await.map_err(|e| format!("{e} in the body"))?;
            } else if lengths.is_empty() {
                // Close-delimited.
                while self.more().await.is_ok() {}
                r.body = std::mem::take(&mut self.buf);
            } else {
                return Err(format!("Content-Length given twice: {}", r.head));
            }
            return Ok(r);
        }
    }

    /// Decodes chunked coding strictly (RFC 9112 §7.1).
    async fn read_chunked(&mut self, r: &mut Resp) -> Result<(), String> {
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk-size line {line:?}"))?;
            if size == 0 {
                loop {
                    let field = self.line().await?;
                    if field.is_empty() {
                        return Ok(());
                    }
                    let (n, v) = field
                        .split_once(':')
                        .ok_or_else(|| format!("bad trailer line {field:?}"))?;
                    r.trailers
                        .push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let data = self.take(size).await?;
            r.body.extend_from_slice(&data);
            let end = self.take(2).await?;
            if end != b"\r\n" {
                return Err(format!(
                    "chunk data not followed by CRLF but {:?}",
                    String::from_utf8_lossy(&end)
                ));
            }
        }
    }

    /// Waits (at most `limit`) for the gateway to close the connection;
    /// panics if it sends anything first or does not close. Returns how long
    /// it took.
    async fn assert_closed(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        let leftover = std::mem::take(&mut self.buf);
        assert!(
            leftover.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&leftover)
        );
        let closed = timeout(limit, async {
            loop {
                if let Err(e) = self.more().await {
                    return e;
                }
            }
        })
        .await;
        assert!(
            self.buf.is_empty(),
            "the gateway sent more before closing: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        assert!(
            closed.is_ok(),
            "the connection was still open after {limit:?}; it received:\n{:?}",
            self.transcript()
        );
        start.elapsed()
    }

    /// Asserts that nothing arrives and the connection stays open for `d`.
    async fn assert_open_for(&mut self, d: Duration) {
        let got = timeout(d, self.more()).await;
        match got {
            Err(_) => {}
            Ok(Ok(())) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&self.buf)),
            Ok(Err(e)) => panic!("{e} within {d:?}"),
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: h1.test\r\n\r\n")
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: h1.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

// ---------------------------------------------------------------------------
// Upstreams and gateways

/// An upstream answering 200 with the request target as its body (`METHOD
/// target length` for a request other than a GET without a body); `/slow`
/// waits 300 ms first, `/slower` 1.5 s.
async fn echo_upstream() -> upstream::Upstream {
    upstream::start_async(|s: Seen| async move {
        let target = s
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .to_string();
        match s.uri.path() {
            "/slow" => sleep(Duration::from_millis(300)).await,
            "/slower" => sleep(Duration::from_millis(1500)).await,
            _ => {}
        }
        let text = if s.body.is_empty() && s.method == http::Method::GET {
            target
        } else {
            format!("{} {target} {}", s.method, s.body.len())
        };
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(text)))
            .unwrap()
    })
    .await
}

/// A body of unknown length: `pieces`, each after a pause, then `trailers`.
struct Drip {
    pieces: VecDeque<Bytes>,
    trailers: Option<http::HeaderMap>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl Drip {
    fn new(pieces: Vec<Bytes>, trailers: Option<http::HeaderMap>) -> Drip {
        Drip {
            pieces: pieces.into(),
            trailers,
            pause: Box::pin(sleep(Duration::from_millis(30))),
        }
    }
}

impl http_body::Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.pieces.is_empty() {
            return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        if this.pause.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let deadline = Instant::now() + Duration::from_millis(30);
        this.pause.as_mut().reset(deadline);
        Poll::Ready(this.pieces.pop_front().map(|p| Ok(Frame::data(p))))
    }
}

/// A hyper upstream that streams every response (chunked, no length):
/// `/drip` in three pieces with pauses, anything else its path.
struct DripUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DripUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drip_upstream() -> DripUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                count.fetch_add(1, Ordering::SeqCst);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-checksum", "abc".parse().unwrap());
                let body = if req.uri().path() == "/drip" {
                    let pieces = [&b"alpha-"[..], b"beta-", b"gamma"].map(Bytes::from_static);
                    Drip::new(pieces.to_vec(), Some(trailers))
                } else {
                    Drip::new(vec![Bytes::from(req.uri().path().to_string())], None)
                };
                async move { Ok::<_, Infallible>(Response::new(body)) }
            });
            conns.spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    DripUpstream {
        addr,
        requests,
        task,
    }
}

// ---------------------------------------------------------------------------
// 1. Pipelining

#[tokio::test]
async fn pipelined_gets_are_answered_in_order_and_the_connection_goes_on() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;

    // Two in one write; the first waits on the upstream, so the second is
    // read while the first is served.
    c.send(format!("{}{}", get("/slow"), get("/second?x=2")).as_bytes())
        .await;
    let r = c.responses(2).await;
    assert_ok(&r[0], "/slow");
    assert_ok(&r[1], "/second?x=2");

    // Three in one write.
    c.send(format!("{}{}{}", get("/one"), get("/slow"), get("/three")).as_bytes())
        .await;
    let r = c.responses(3).await;
    assert_ok(&r[0], "/one");
    assert_ok(&r[1], "/slow");
    assert_ok(&r[2], "/three");

    // Nothing more came, and the connection serves a later request.
    sleep(Duration::from_millis(100)).await;
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
    c.send(get("/later").as_bytes()).await;
    assert_ok(&c.response(false).await, "/later");
    assert_eq!(up.count(), 6, "{:?}", up.seen());
}

#[tokio::test]
async fn many_pipelined_gets_beyond_one_read_are_answered_in_order() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    // ~15 KiB of heads in one write: more than one read of the fast path.
    let n = 300;
    let all: String = (0..n).map(|i| get(&format!("/p/{i}"))).collect();
    assert!(all.len() > 8 * 1024);
    c.send(all.as_bytes()).await;
    for i in 0..n {
        let r = c.response(false).await;
        assert_ok(&r, &format!("/p/{i}"));
    }
    c.send(get("/after").as_bytes()).await;
    assert_ok(&c.response(false).await, "/after");
    assert_eq!(up.count(), n + 1);
}

#[tokio::test]
async fn a_large_response_then_a_pipelined_request() {
    let big: Bytes = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let b = big.clone();
    let up = upstream::start(move |s| {
        let body = if s.uri.path() == "/big" {
            b.clone()
        } else {
            Bytes::from(s.uri.path().to_string())
        };
        Response::new(Full::new(body))
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(format!("{}{}", get("/big"), get("/after")).as_bytes())
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length"), Some("1048576"), "{}", r.head);
    assert!(r.body == big, "the 1 MiB body differs");
    assert_ok(&c.response(false).await, "/after");
}

// ---------------------------------------------------------------------------
// 2. Hand-off to hyper in the middle of a connection

/// A body that would be a request if the framing were lost.
const TRICKY_BODY: &[u8] = b"abc\r\n\r\nGET /inside HTTP/1.1\r\nHost: h1.test\r\n\r\n\x00\xff";

#[tokio::test]
async fn a_request_with_a_body_hands_the_connection_over_mid_way() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;

    c.send(get("/first").as_bytes()).await;
    assert_ok(&c.response(false).await, "/first");
    c.send(&post("/upload", TRICKY_BODY)).await;
    assert_ok(
        &c.response(false).await,
        &format!("POST /upload {}", TRICKY_BODY.len()),
    );
    c.send(get("/third").as_bytes()).await;
    assert_ok(&c.response(false).await, "/third");

    let seen = up.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[1].method, "POST");
    assert_eq!(&seen[1].body[..], TRICKY_BODY);
    assert_eq!(up.count_path("/inside"), 0);
}

#[tokio::test]
async fn a_request_with_a_body_pipelined_behind_a_plain_one() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);

    // GET and POST in one write, then a GET.
    let mut c = Conn::open(addr).await;
    let mut bytes = get("/slow").into_bytes();
    bytes.extend_from_slice(&post("/upload", TRICKY_BODY));
    c.send(&bytes).await;
    let r = c.responses(2).await;
    assert_ok(&r[0], "/slow");
    assert_ok(&r[1], &format!("POST /upload {}", TRICKY_BODY.len()));
    c.send(get("/third").as_bytes()).await;
    assert_ok(&c.response(false).await, "/third");

    // All three in one write, the POST body chunked this time.
    let mut c = Conn::open(addr).await;
    let mut bytes = get("/a").into_bytes();
    bytes.extend_from_slice(
        b"POST /chunked HTTP/1.1\r\nHost: h1.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    bytes.extend_from_slice(get("/c").as_bytes());
    c.send(&bytes).await;
    let r = c.responses(3).await;
    assert_ok(&r[0], "/a");
    assert_ok(&r[1], "POST /chunked 11");
    assert_ok(&r[2], "/c");

    let seen = up.seen();
    assert_eq!(seen.len(), 6, "{seen:?}");
    let upload = seen.iter().find(|s| s.uri.path() == "/upload").unwrap();
    assert_eq!(&upload.body[..], TRICKY_BODY);
    let chunked = seen.iter().find(|s| s.uri.path() == "/chunked").unwrap();
    assert_eq!(&chunked.body[..], b"hello world");
    assert_eq!(up.count_path("/inside"), 0);
}

// ---------------------------------------------------------------------------
// 3. Smuggling after a fast request

#[tokio::test]
async fn a_flawed_head_after_a_fast_request_is_refused_and_closes() {
    const VECTORS: &[(&str, &str)] = &[
        (
            "CL and TE",
            "POST /bad HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Content_Length",
            "GET /bad HTTP/1.1\r\nHost: h1.test\r\nContent_Length: 5\r\n\r\nhello",
        ),
        (
            "Transfer_Encoding",
            "GET /bad HTTP/1.1\r\nHost: h1.test\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "gzip, chunked",
            "POST /bad HTTP/1.1\r\nHost: h1.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    let up = raw::upstream(Action::Respond(raw::ok_response("fine"))).await;
    let (gw, addr) = gateway(up.addr);
    for (name, flawed) in VECTORS {
        let before = up.requests();
        let mut c = Conn::open(addr).await;
        c.send(get("/first").as_bytes()).await;
        assert_ok(&c.response(false).await, "fine");
        assert!(up.wait_requests(before + 1, LIMIT).await);
        // The flawed head, and a request behind it that must never be served.
        c.send(format!("{flawed}{}", get("/smuggled")).as_bytes())
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 400, "{name}: {}{:?}", r.head, r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{name}: {}",
            r.head
        );
        assert_eq!(r.header("connection"), Some("close"), "{name}: {}", r.head);
        c.assert_closed(Duration::from_secs(5)).await;
        sleep(Duration::from_millis(100)).await;
        assert_eq!(up.requests(), before + 1, "{name}: {}", up.received_text());
    }
    let seen = up.received_text();
    assert!(!seen.contains("/bad"), "upstream received:\n{seen}");
    assert!(!seen.contains("/smuggled"), "upstream received:\n{seen}");
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

/// A head httparse takes but `http` does not (`<` in the target) goes to
/// hyper's server with the bytes after it: 400, closed, nothing behind it
/// served.
#[tokio::test]
async fn a_target_only_httparse_accepts_is_refused_after_a_fast_request() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    let bytes = format!(
        "{}GET /a<b HTTP/1.1\r\nHost: h1.test\r\n\r\n{}",
        get("/ok"),
        get("/smuggled")
    );
    c.send(bytes.as_bytes()).await;
    assert_ok(&c.response(false).await, "/ok");
    let r = c.response(false).await;
    assert_eq!(r.status, 400, "{}{:?}", r.head, r.text());
    c.assert_closed(Duration::from_secs(5)).await;
    sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count(), 1, "{:?}", up.seen());
}

// ---------------------------------------------------------------------------
// 4. Connection: close

#[tokio::test]
async fn connection_close_on_a_plain_get_closes_after_the_response() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    for value in ["close", "Close", "foo, CLOSE"] {
        let mut c = Conn::open(addr).await;
        // A request pipelined behind it must not be served.
        let bytes = format!(
            "GET /closing HTTP/1.1\r\nHost: h1.test\r\nConnection: {value}\r\n\r\n{}",
            get("/behind")
        );
        c.send(bytes.as_bytes()).await;
        let r = c.response(false).await;
        assert_ok(&r, "/closing");
        assert_eq!(r.header("connection"), Some("close"), "{value}: {}", r.head);
        c.assert_closed(Duration::from_secs(5)).await;
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(up.count_path("/closing"), 3);
    assert_eq!(up.count_path("/behind"), 0);
}

// ---------------------------------------------------------------------------
// 5. Responses without a body

#[tokio::test]
async fn head_has_the_length_and_no_body() {
    let up = upstream::start(|s| {
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(format!("body of {}", s.uri.path()))))
            .unwrap()
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    let head = "HEAD /thing HTTP/1.1\r\nHost: h1.test\r\n\r\n";

    c.send(get("/thing").as_bytes()).await;
    let full = c.response(false).await;
    assert_ok(&full, "body of /thing");

    c.send(head.as_bytes()).await;
    let r = c.response(true).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length"), Some("14"), "{}", r.head);
    assert_eq!(r.header("transfer-encoding"), None, "{}", r.head);
    // Had a body followed, it would be read here as the status line.
    c.send(get("/after").as_bytes()).await;
    assert_ok(&c.response(false).await, "body of /after");

    // HEAD with a GET pipelined right behind it.
    c.send(format!("{head}{}", get("/next")).as_bytes()).await;
    let r = c.response(true).await;
    assert_eq!(r.header("content-length"), Some("14"), "{}", r.head);
    assert_ok(&c.response(false).await, "body of /next");
    sleep(Duration::from_millis(100)).await;
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
    let heads = up.seen().iter().filter(|s| s.method == "HEAD").count();
    assert_eq!(heads, 2);
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body_and_keep_the_connection() {
    let up = upstream::start(|s| {
        let status = match s.uri.path() {
            "/204" => StatusCode::NO_CONTENT,
            "/304" => StatusCode::NOT_MODIFIED,
            _ => StatusCode::OK,
        };
        let body = if status == StatusCode::OK {
            Bytes::from(s.uri.path().to_string())
        } else {
            Bytes::new()
        };
        Response::builder()
            .status(status)
            .header("etag", "\"v1\"")
            .body(Full::new(body))
            .unwrap()
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    for status in [204, 304] {
        c.send(get(&format!("/{status}")).as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, status, "{}", r.head);
        assert_eq!(r.header("transfer-encoding"), None, "{}", r.head);
        if status == 204 {
            assert_eq!(r.header("content-length"), None, "{}", r.head);
        }
        assert_eq!(r.header("etag"), Some("\"v1\""), "{}", r.head);
        c.send(get("/after").as_bytes()).await;
        assert_ok(&c.response(false).await, "/after");
    }
    // Pipelined behind each other.
    c.send(format!("{}{}{}", get("/204"), get("/304"), get("/last")).as_bytes())
        .await;
    let r = c.responses(3).await;
    assert_eq!((r[0].status, r[1].status), (204, 304));
    assert_ok(&r[2], "/last");
    sleep(Duration::from_millis(100)).await;
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
}

// ---------------------------------------------------------------------------
// 6. Bodies of unknown length

#[tokio::test]
async fn a_streamed_body_of_unknown_length_is_chunked_whole() {
    let up = drip_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(get("/drip").as_bytes()).await;
    let r = c.response(false).await;
    assert_ok(&r, "alpha-beta-gamma");
    assert!(r.chunked, "not chunked: {}", r.head);
    assert_eq!(r.header("content-length"), None, "{}", r.head);
    // hyper's upstream sends trailers only when asked (`TE: trailers`);
    // whatever it did, none reach a client that did not ask.
    assert!(r.trailers.is_empty(), "trailers: {:?}", r.trailers);
    // The body ended where it should: the connection goes on.
    c.send(get("/next").as_bytes()).await;
    assert_ok(&c.response(false).await, "/next");
    assert_eq!(up.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn upstream_trailers_are_not_sent_to_a_client_that_did_not_ask() {
    let up = raw::upstream(Action::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n"
            .to_vec(),
    ))
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(get("/trailers").as_bytes()).await;
    let r = c.response(false).await;
    assert_ok(&r, "hello world");
    assert!(r.chunked, "{}", r.head);
    assert!(r.trailers.is_empty(), "trailers sent: {:?}", r.trailers);
    // Trailers that are not sent are not announced either.
    assert_eq!(r.header("trailer"), None, "{}", r.head);
    c.send(format!("{}{}", get("/again"), get("/again")).as_bytes())
        .await;
    for r in c.responses(2).await {
        assert_ok(&r, "hello world");
        assert!(r.trailers.is_empty(), "trailers sent: {:?}", r.trailers);
    }
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn a_close_delimited_upstream_body_is_chunked_to_the_client() {
    let up = raw::upstream(Action::WriteAndClose(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes".to_vec(),
    ))
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(get("/a").as_bytes()).await;
    let r = c.response(false).await;
    assert_ok(&r, "until the upstream closes");
    assert!(r.chunked, "{}", r.head);
    c.send(get("/b").as_bytes()).await;
    assert_ok(&c.response(false).await, "until the upstream closes");
    assert_eq!(up.accepted(), 2);
}

// ---------------------------------------------------------------------------
// 7. The gateway's own responses

/// A `date` header, once, within a few seconds of now.
#[track_caller]
fn assert_date(r: &Resp) {
    let date = r
        .header("date")
        .unwrap_or_else(|| panic!("no date: {}", r.head));
    let at = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{date:?}: {e}"));
    let now = SystemTime::now();
    let skew = now.duration_since(at).unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(5),
        "date {date:?} is {skew:?} off"
    );
}

#[tokio::test]
async fn gateway_made_responses_have_a_date_and_their_length() {
    let mut gw = Gateway::start(
        r#"
workers: 1
listeners: [{ name: main, address: "127.0.0.1:0" }]
routes:
  - name: teapot
    match: { path: /tea }
    respond:
      status: 418
      headers: { content-type: text/plain, x-custom: brewed }
      body: "short and stout"
  - name: empty
    match: { path: /empty }
    respond: { status: 200 }
"#,
    );
    let addr = gw.addr("main");
    let mut c = Conn::open(addr).await;

    c.send(get("/tea").as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 418, "{}", r.head);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("content-length"), Some("15"), "{}", r.head);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("x-custom"), Some("brewed"));
    assert_date(&r);

    c.send(get("/nothing/here").as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 404, "{}", r.head);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, r.body.len());
    assert!(
        r.text().contains("not-found") || r.text().contains("404"),
        "{}",
        r.text()
    );
    assert_date(&r);

    c.send(get("/empty").as_bytes()).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length"), Some("0"), "{}", r.head);
    assert_date(&r);

    // HEAD on a direct response: the head only.
    c.send(b"HEAD /tea HTTP/1.1\r\nHost: h1.test\r\n\r\n").await;
    let r = c.response(true).await;
    assert_eq!(r.status, 418, "{}", r.head);
    assert_date(&r);

    // All of them pipelined: each length frames its body exactly.
    let all = format!(
        "{}{}{}{}",
        get("/tea"),
        get("/nothing"),
        get("/empty"),
        get("/tea")
    );
    c.send(all.as_bytes()).await;
    let r = c.responses(4).await;
    let got: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(got, [418, 404, 200, 418]);
    assert_eq!(r[3].text(), "short and stout");
    sleep(Duration::from_millis(100)).await;
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
}

// ---------------------------------------------------------------------------
// 8. A client that leaves

/// A raw upstream: `/slow` is answered after 2 s unless the gateway closes
/// the connection first (the time it did is recorded); anything else at once
/// with its path.
struct Watcher {
    addr: SocketAddr,
    slow_requests: Arc<AtomicUsize>,
    closed_at: Arc<Mutex<Option<Instant>>>,
    answered_slow: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watcher() -> Watcher {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let slow_requests = Arc::new(AtomicUsize::new(0));
    let closed_at = Arc::new(Mutex::new(None));
    let answered_slow = Arc::new(AtomicUsize::new(0));
    let (reqs, closed, answered) = (
        slow_requests.clone(),
        closed_at.clone(),
        answered_slow.clone(),
    );
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let (reqs, closed, answered) = (reqs.clone(), closed.clone(), answered.clone());
            conns.spawn(timeout(Duration::from_secs(60), async move {
                let mut buf = Vec::new();
                while let Some(head) = raw::take_head(&mut s, &mut buf).await {
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    if path == "/slow" {
                        reqs.fetch_add(1, Ordering::SeqCst);
                        let gone = timeout(Duration::from_secs(2), async {
                            let mut b = [0u8; 1024];
                            loop {
                                match s.read(&mut b).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(_) => {}
                                }
                            }
                        })
                        .await;
                        if gone.is_ok() {
                            *closed.lock().unwrap() = Some(Instant::now());
                            return;
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    if s.write_all(&raw::ok_response(&path)).await.is_err() {
                        return;
                    }
                }
            }));
            while conns.try_join_next().is_some() {}
        }
    });
    Watcher {
        addr,
        slow_requests,
        closed_at,
        answered_slow,
        task,
    }
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_exchange() {
    let up = watcher().await;
    let (gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(get("/slow").as_bytes()).await;
    let deadline = Instant::now() + LIMIT;
    while up.slow_requests.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the upstream never got /slow");
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(200)).await;
    drop(c);
    let left = Instant::now();

    // The gateway drops the exchange: the upstream sees its connection
    // closed well before it would have answered (2 s after the request).
    let closed = loop {
        if let Some(at) = *up.closed_at.lock().unwrap() {
            break at;
        }
        assert!(
            left.elapsed() < Duration::from_secs(5),
            "the upstream connection stayed open after the client left (answered: {})",
            up.answered_slow.load(Ordering::SeqCst)
        );
        sleep(Duration::from_millis(10)).await;
    };
    let after = closed.saturating_duration_since(left);
    assert!(
        after < Duration::from_millis(1500),
        "the upstream saw the close {after:?} after the client left"
    );
    assert_eq!(up.answered_slow.load(Ordering::SeqCst), 0);

    // The gateway goes on serving.
    let mut c = Conn::open(addr).await;
    c.send(get("/other").as_bytes()).await;
    assert_ok(&c.response(false).await, "/other");
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

// ---------------------------------------------------------------------------
// 9. h2c on the same listener

#[tokio::test]
async fn h2c_prior_knowledge_still_works_next_to_the_fast_path() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let req = Request::get("http://h1.test/over-h2?q=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = support::send_h2(addr, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "/over-h2?q=1");
    // And HTTP/1.1 right after, on the same listener.
    let mut c = Conn::open(addr).await;
    c.send(get("/over-h1").as_bytes()).await;
    assert_ok(&c.response(false).await, "/over-h1");
    let r = support::send_h2(addr, support::get("h1.test", "/again")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "/again");
    assert_eq!(up.count(), 3);
}

/// HTTP/2 prior knowledge is a connection's first bytes only: the preface
/// after an HTTP/1.1 request does not turn the connection into HTTP/2.
#[tokio::test]
async fn the_http2_preface_after_a_request_is_not_http2() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(get("/first").as_bytes()).await;
    assert_ok(&c.response(false).await, "/first");
    // The preface, then an empty SETTINGS frame.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    c.send(&preface).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while c.more().await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open: {:?}",
            c.transcript()
        );
    }
    // Nothing but, at most, an HTTP/1.1 refusal: no SETTINGS frame.
    let after = String::from_utf8_lossy(&c.buf).into_owned();
    assert!(
        after.is_empty() || after.starts_with("HTTP/1.1 400"),
        "after the preface: {after:?}"
    );
    assert_eq!(up.count(), 1);
}

/// A client that pipelines requests and then closes its sending side gets
/// the answers to all of them, then the connection closes.
#[tokio::test]
async fn pipelined_requests_then_a_half_close_are_all_answered() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(format!("{}{}{}", get("/a"), get("/b"), get("/c")).as_bytes())
        .await;
    c.s.shutdown().await.unwrap();
    let rs = c.responses(3).await;
    for (r, body) in rs.iter().zip(["/a", "/b", "/c"]) {
        assert_ok(r, body);
    }
    c.assert_closed(LIMIT).await;
}

// ---------------------------------------------------------------------------
// 10. Heads in pieces, stalled heads, idle connections

#[tokio::test]
async fn a_head_sent_byte_by_byte_is_served() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway_with_limits(up.addr, "{ header_read_timeout: 2s }");
    let mut c = Conn::open(addr).await;
    let head = "GET /bytewise?a=b HTTP/1.1\r\nHost: h1.test\r\nX-Padding: 0123456789\r\n\r\n";
    for round in 0..2 {
        let started = Instant::now();
        for b in head.as_bytes() {
            c.send(&[*b]).await;
            sleep(Duration::from_millis(4)).await;
        }
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "round {round}: writing took {:?}",
            started.elapsed()
        );
        assert_ok(&c.response(false).await, "/bytewise?a=b");
    }
    // A head split just before and just after its end.
    c.send(b"GET /split HTTP/1.1\r\nHost: h1.test\r\n\r").await;
    sleep(Duration::from_millis(100)).await;
    c.send(b"\n").await;
    assert_ok(&c.response(false).await, "/split");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn a_head_that_stalls_is_closed_after_the_header_read_timeout() {
    let up = echo_upstream().await;
    let (_gw, addr) =
        gateway_with_limits(up.addr, "{ header_read_timeout: 1s, idle_timeout: 30s }");

    // First request on the connection.
    let mut c = Conn::open(addr).await;
    c.send(b"GET /stalled HTTP/1.1\r\nHost: h1.").await;
    let took = c.assert_closed(Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");

    // A later one, after a request the fast path served.
    let mut c = Conn::open(addr).await;
    c.send(get("/first").as_bytes()).await;
    assert_ok(&c.response(false).await, "/first");
    c.send(b"GET /stalled HTTP/1.1\r\nHo").await;
    let took = c.assert_closed(Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");

    // Bytes trickling in do not extend it.
    let mut c = Conn::open(addr).await;
    c.send(get("/first").as_bytes()).await;
    assert_ok(&c.response(false).await, "/first");
    let started = Instant::now();
    let mut closed_after = None;
    for b in b"GET /trickle HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if c.s.write_all(&[*b]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // A byte every 100 ms; meanwhile, watch for the close.
        match timeout(Duration::from_millis(100), c.more()).await {
            Err(_) => {}
            Ok(Ok(())) => panic!("unexpected bytes: {:?}", c.transcript()),
            Ok(Err(_)) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
    }
    let closed_after = closed_after.expect("a head trickled over 4 s was never cut");
    assert!(
        closed_after >= Duration::from_millis(800) && closed_after < Duration::from_millis(2500),
        "a trickled head was cut after {closed_after:?}"
    );
    assert_eq!(up.count_path("/stalled"), 0);
    assert_eq!(up.count_path("/trickle"), 0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let up = echo_upstream().await;
    let (_gw, addr) =
        gateway_with_limits(up.addr, "{ idle_timeout: 1s, header_read_timeout: 10s }");
    let mut c = Conn::open(addr).await;
    c.send(get("/first").as_bytes()).await;
    assert_ok(&c.response(false).await, "/first");
    // Busy connections are not idle: a request every 500 ms keeps it.
    for i in 0..3 {
        sleep(Duration::from_millis(500)).await;
        let path = format!("/keep/{i}");
        c.send(get(&path).as_bytes()).await;
        assert_ok(&c.response(false).await, &path);
    }
    let took = c.assert_closed(Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

/// docs/configuration.md, `limits.header_read_timeout`: "it also bounds how
/// long an idle keep-alive connection waits for its next request: an idle
/// HTTP/1.1 connection is closed after the shorter of `header_read_timeout`
/// and `idle_timeout`". hyper's server does so; this is the same after a
/// request the fast path served.
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_read_timeout_when_shorter() {
    let up = echo_upstream().await;
    let (_gw, addr) =
        gateway_with_limits(up.addr, "{ header_read_timeout: 1s, idle_timeout: 30s }");
    let mut c = Conn::open(addr).await;
    c.send(get("/fast").as_bytes()).await;
    assert_ok(&c.response(false).await, "/fast");
    let took = c.assert_closed(Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
}

/// The same with `idle_timeout: 0s` (no idle limit): `header_read_timeout`
/// alone bounds the wait for the next head, or an idle connection is held
/// forever.
#[tokio::test]
async fn with_no_idle_timeout_the_header_read_timeout_still_bounds_an_idle_connection() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway_with_limits(up.addr, "{ header_read_timeout: 1s, idle_timeout: 0s }");
    let mut c = Conn::open(addr).await;
    c.send(get("/fast").as_bytes()).await;
    assert_ok(&c.response(false).await, "/fast");
    let took = c.assert_closed(Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
}

/// The same, after a request hyper's server served (the baseline).
#[tokio::test]
async fn an_idle_connection_after_a_hyper_request_is_closed_after_the_header_read_timeout() {
    let up = echo_upstream().await;
    let (_gw, addr) =
        gateway_with_limits(up.addr, "{ header_read_timeout: 1s, idle_timeout: 30s }");
    let mut c = Conn::open(addr).await;
    c.send(&post("/hyper", b"x")).await;
    assert_ok(&c.response(false).await, "POST /hyper 1");
    c.assert_open_for(Duration::from_millis(500)).await;
    let took = c.assert_closed(Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
}

// ---------------------------------------------------------------------------
// More of what a plain head may hold

#[tokio::test]
async fn header_fields_reach_the_upstream_as_sent() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    // Repeated fields in order, an empty value, obs-text, odd spacing.
    c.send(
        b"GET /fields HTTP/1.1\r\nHost: h1.test\r\nX-Multi: a\r\nX-Other: 1\r\nx-multi: b\r\n\
          X-Empty:\r\nX-Obs: caf\xe9\r\nX-Spaced:   padded value \t\r\n\r\n",
    )
    .await;
    assert_ok(&c.response(false).await, "/fields");
    // More fields than the fast path parses (64): hyper's server takes it.
    let mut many = String::from("GET /many HTTP/1.1\r\nHost: h1.test\r\n");
    for i in 0..80 {
        many.push_str(&format!("X-F{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    c.send(many.as_bytes()).await;
    assert_ok(&c.response(false).await, "/many");
    // And a plain one after it on the same connection.
    c.send(get("/after").as_bytes()).await;
    assert_ok(&c.response(false).await, "/after");

    let seen = up.seen();
    let fields = &seen[0].headers;
    let multi: Vec<_> = fields.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["a", "b"], "{fields:?}");
    assert_eq!(fields["x-other"], "1");
    assert_eq!(fields["x-empty"], "");
    assert_eq!(fields["x-obs"].as_bytes(), b"caf\xe9");
    assert_eq!(fields["x-spaced"], "padded value");
    let many = &seen[1].headers;
    for i in 0..80 {
        assert_eq!(many[format!("x-f{i}").as_str()], i.to_string().as_str());
    }
}

#[tokio::test]
async fn absolute_form_targets_and_empty_lines_between_requests() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    // RFC 9112 §3.2.2: absolute-form; the upstream gets origin-form.
    c.send(b"GET http://h1.test/abs?x=1 HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    assert_ok(&c.response(false).await, "/abs?x=1");
    // RFC 9112 §2.2: an empty line before a request line is ignored.
    c.send(format!("\r\n{}\r\n{}", get("/a"), get("/b")).as_bytes())
        .await;
    let r = c.responses(2).await;
    assert_ok(&r[0], "/a");
    assert_ok(&r[1], "/b");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn http10_after_a_fast_request_is_served_and_closes() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway(up.addr);
    let mut c = Conn::open(addr).await;
    c.send(
        format!(
            "{}GET /ten HTTP/1.0\r\nHost: h1.test\r\n\r\n",
            get("/eleven")
        )
        .as_bytes(),
    )
    .await;
    assert_ok(&c.response(false).await, "/eleven");
    let r = c.response(false).await;
    assert_ok(&r, "/ten");
    // HTTP/1.0 without keep-alive: the connection ends with the response.
    c.assert_closed(Duration::from_secs(5)).await;
}

/// The head limit is measured the same by the fast path and by the guard in
/// front of hyper's server: a head of exactly `max_header_bytes` passes, one
/// byte more gets 431 and the connection closed.
#[tokio::test]
async fn the_head_limit_is_the_same_on_both_paths() {
    let up = echo_upstream().await;
    let (_gw, addr) = gateway_with_limits(up.addr, "{ max_header_bytes: 1KiB }");
    let head = |size: usize| {
        let start = "GET /size HTTP/1.1\r\nHost: h1.test\r\nX-Pad: ";
        let pad = size - start.len() - "\r\n\r\n".len();
        let head = format!("{start}{}\r\n\r\n", "a".repeat(pad));
        assert_eq!(head.len(), size);
        head
    };
    for (size, want) in [(1000, 200), (1024, 200), (1025, 431), (1100, 431)] {
        // First on its connection: the fast path reads it.
        let mut c = Conn::open(addr).await;
        c.send(head(size).as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, want, "fast path, {size}-byte head: {}", r.head);
        if want == 431 {
            c.assert_closed(Duration::from_secs(5)).await;
        }
        // After a request with a body: hyper's server reads it.
        let mut c = Conn::open(addr).await;
        c.send(&post("/handoff", b"x")).await;
        assert_ok(&c.response(false).await, "POST /handoff 1");
        c.send(head(size).as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(
            r.status, want,
            "after the hand-off, {size}-byte head: {}",
            r.head
        );
        if want == 431 {
            c.assert_closed(Duration::from_secs(5)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Drain

#[tokio::test]
async fn draining_closes_fast_path_connections() {
    let up = echo_upstream().await;
    let (mut gw, addr) = gateway_with_limits(up.addr, "{}");
    // One idle keep-alive connection, one with a request in flight.
    let mut idle = Conn::open(addr).await;
    idle.send(get("/idle").as_bytes()).await;
    assert_ok(&idle.response(false).await, "/idle");
    let mut busy = Conn::open(addr).await;
    busy.send(get("/slower").as_bytes()).await;
    let deadline = Instant::now() + LIMIT;
    while up.count_path("/slower") == 0 {
        assert!(Instant::now() < deadline, "the upstream never got /slower");
        sleep(Duration::from_millis(10)).await;
    }
    gw.signal("TERM");
    assert!(gw.wait_for_log("shutting down", LIMIT), "{}", gw.stderr());
    // The idle one is closed at once, not at the idle timeout.
    let took = idle.assert_closed(Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    // The one in flight gets its response, marked as the last, then closes.
    let r = busy.response(false).await;
    assert_ok(&r, "/slower");
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
    busy.assert_closed(Duration::from_secs(3)).await;
    assert_eq!(gw.wait_exit(LIMIT), Some(0), "{}", gw.stderr());
}
