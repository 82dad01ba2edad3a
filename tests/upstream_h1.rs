//! How the gateway treats what an HTTP/1.x upstream sends: message body
//! framing (RFC 9112 §6: Content-Length, chunked, close-delimited, both at
//! once, invalid lengths), interim responses, connection persistence
//! (RFC 9112 §9.3) and malformed heads (RFC 9112 §2.3, §5.2, RFC 9110 §8.6).
//!
//! Every test puts the real gateway (one worker, so one upstream pool) in
//! front of a scripted upstream that writes exact bytes, and that records on
//! which TCP connection each request arrived, so connection reuse is asserted
//! request by request. The upstream answers any request it has no script
//! for with its own path as the body, so a response can never be mistaken
//! for another request's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::h1::{LIMIT, exchange, fetch, gateway, get};
use support::raw::{self, RawResponse, find};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Bound on the life of one upstream connection.
const CONN_LIFE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Scripted upstream

/// One request as the upstream read it.
#[derive(Clone, Debug)]
struct Seen {
    /// The TCP connection it came on, in accept order (0: the first).
    conn: usize,
    method: String,
    path: String,
    /// Header lines, names lowercased, in order.
    headers: Vec<(String, String)>,
    /// The body, de-chunked when it came chunked.
    body: Vec<u8>,
}

impl Seen {
    /// Every value of header `name`, one per field line.
    fn values(&self, name: &str) -> Vec<&str> {
        raw::values(&self.headers, name)
    }

    fn chunked(&self) -> bool {
        self.values("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// What the upstream does with a request.
enum Answer {
    /// Reads the body, writes these bytes, then reads the next request.
    KeepOpen(Vec<u8>),
    /// Reads the body, writes these bytes, then closes the connection.
    Close(Vec<u8>),
    /// Writes these bytes as soon as the request head is read, without reading
    /// the body; then ends its sending side and holds the connection open
    /// without ever reading from it again.
    Early(Vec<u8>),
}

type Script = dyn Fn(&Seen) -> Answer + Send + Sync;

struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// TCP connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every request read so far, in arrival order.
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The (last) request for `path`.
    fn request(&self, path: &str) -> Seen {
        let seen = self.seen();
        seen.iter()
            .rev()
            .find(|s| s.path == path)
            .cloned()
            .unwrap_or_else(|| {
                let paths: Vec<_> = seen.iter().map(|s| (s.conn, s.path.as_str())).collect();
                panic!("the upstream never got {path}; it got (conn, path): {paths:?}")
            })
    }

    /// The connection the request for `path` came on.
    fn conn(&self, path: &str) -> usize {
        self.request(path).conn
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Drops the JoinSet of connections too, which aborts them.
        self.task.abort();
    }
}

/// The answer to a request the test has no script for: its path as the body.
fn echo(req: &Seen) -> Answer {
    Answer::KeepOpen(ok(req.path.as_bytes()))
}

/// `HTTP/1.1 200 OK` with `body` framed by Content-Length.
fn ok(body: &[u8]) -> Vec<u8> {
    [
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat()
}

/// An upstream on 127.0.0.1:0 that answers each request as `script` says.
async fn upstream(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script: Arc<Script> = Arc::new(script);
    let (acc, rec) = (accepted.clone(), seen.clone());
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        // Ends when the test drops the upstream (the task is aborted).
        while let Ok((stream, _)) = listener.accept().await {
            let conn = acc.fetch_add(1, Ordering::SeqCst);
            let served = serve(stream, conn, script.clone(), rec.clone());
            conns.spawn(timeout(CONN_LIFE, served));
            while conns.try_join_next().is_some() {}
        }
    });
    Upstream {
        addr,
        accepted,
        seen,
        task,
    }
}

async fn serve(
    mut stream: TcpStream,
    conn: usize,
    script: Arc<Script>,
    rec: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    // One request per turn; ends when the gateway closes the connection.
    while let Some(mut req) = read_head(&mut stream, &mut buf, conn).await {
        let answer = script(&req);
        if let Answer::Early(bytes) = &answer {
            rec.lock().unwrap().push(req);
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
            // Never reads again: a gateway that must finish sending the body
            // before it reads the response waits on a full window.
            std::future::pending::<()>().await;
            return;
        }
        let Some(body) = read_body(&mut stream, &mut buf, &req).await else {
            return;
        };
        req.body = body;
        rec.lock().unwrap().push(req);
        match answer {
            Answer::KeepOpen(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::Close(bytes) | Answer::Early(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Reads until `buf` holds at least `n` bytes; None at EOF.
async fn fill_to(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<()> {
    while buf.len() < n {
        if !raw::read_more(stream, buf).await {
            return None;
        }
    }
    Some(())
}

/// Takes one CRLF-terminated line (without the CRLF) off `buf`.
async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n") {
            break i;
        }
        if !raw::read_more(stream, buf).await {
            return None;
        }
    };
    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 2);
    Some(line)
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Seen> {
    let head = raw::take_head(stream, buf).await?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, path) = (start.next()?.to_string(), start.next()?.to_string());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Seen {
        conn,
        method,
        path,
        headers,
        body: Vec::new(),
    })
}

/// Reads the body `req` announces (chunked, Content-Length or none); None at
/// EOF or on a framing error.
async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, req: &Seen) -> Option<Vec<u8>> {
    if !req.chunked() {
        let len = match req.values("content-length").first() {
            None => 0,
            Some(v) => v.parse().ok()?,
        };
        fill_to(stream, buf, len).await?;
        return Some(buf.drain(..len).collect());
    }
    let mut body = Vec::new();
    // One chunk per turn, until the last chunk (or EOF).
    loop {
        let line = read_line(stream, buf).await?;
        let size = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            // Trailer fields up to the empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Some(body);
        }
        fill_to(stream, buf, size + 2).await?;
        if &buf[size..size + 2] != b"\r\n" {
            return None;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

// ---------------------------------------------------------------------------
// Gateway and client

/// One keep-alive HTTP/1.1 client connection, written byte for byte.
struct Client(TcpStream);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client(raw::connect(addr).await)
    }

    /// Writes `request` and reads its response (a HEAD request's has no body).
    async fn send(&mut self, request: &[u8]) -> RawResponse {
        timeout(LIMIT, self.0.write_all(request))
            .await
            .expect("writing the request timed out")
            .expect("writing the request");
        let head = request.starts_with(b"HEAD ");
        raw::read_response(&mut self.0, head)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(request)))
    }

    async fn get(&mut self, path: &str) -> RawResponse {
        self.send(&get(path)).await
    }
}

/// The head of `r`, long values cut, for failure messages.
fn head_of(r: &RawResponse) -> String {
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}", &v[..v.len().min(60)]))
        .collect();
    format!("{} {headers:?}", r.status)
}

/// A 200 whose body is exactly `body`, framed so that the client saw its end.
#[track_caller]
fn assert_body(r: &RawResponse, body: &[u8]) {
    assert_eq!(r.status, 200, "{} {:?}", head_of(r), r.text());
    assert!(
        r.complete,
        "the response was cut: {} {:?}",
        head_of(r),
        r.text()
    );
    assert!(
        r.body == body,
        "body differs: got {} bytes {:?}, want {} bytes; {}",
        r.body.len(),
        String::from_utf8_lossy(&r.body[..r.body.len().min(200)]),
        body.len(),
        head_of(r)
    );
}

/// The gateway's own 502 problem.
#[track_caller]
fn assert_bad_gateway(r: &RawResponse, what: &str) {
    let text = r.text();
    assert_eq!(
        r.status,
        502,
        "{what}: {} {:?}",
        head_of(r),
        &text[..text.len().min(200)]
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
}

/// The gateway still proxies: a plain GET through the same upstream works.
async fn assert_serves(addr: SocketAddr) {
    assert_body(&fetch(addr, "/good").await, b"/good");
}

/// A response whose head is `head` (CRLF line ends, without the empty line)
/// followed by `body` bytes.
fn response(head: &str, body: &[u8]) -> Vec<u8> {
    [head.as_bytes(), b"\r\n\r\n", body].concat()
}

// ---------------------------------------------------------------------------
// Well-framed responses

#[tokio::test]
async fn content_length_body_is_relayed_exactly_and_the_connection_reused() {
    // Bytes that look like framing, and a body larger than any one read.
    let small = b"exact\r\n\r\n0\r\n\r\nbytes\x00\xff".to_vec();
    let large: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let (s, l) = (small.clone(), large.clone());
    let up = upstream(move |req| match req.path.as_str() {
        "/small" => Answer::KeepOpen(ok(&s)),
        "/large" => Answer::KeepOpen(ok(&l)),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    let r = client.get("/small").await;
    assert_body(&r, &small);
    let r = client.get("/large").await;
    assert_body(&r, &large);
    assert_eq!(up.conn("/small"), up.conn("/large"), "not reused");
    assert_eq!(up.accepted(), 1);
}

/// A head with more fields than a request on the fast path may have (their
/// places are kept inline up to 64, on the heap past that) passes whole.
#[tokio::test]
async fn a_response_with_many_fields_passes_them_all() {
    let fields: String = (0..100)
        .map(|i| format!("\r\nx-field-{i}: value {i}"))
        .collect();
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: 4{fields}");
    let up = upstream(move |_| Answer::KeepOpen(response(&head, b"many"))).await;
    let (_gw, addr) = gateway(up.addr);
    let r = Client::connect(addr).await.get("/many").await;
    assert_body(&r, b"many");
    for i in 0..100 {
        let name = format!("x-field-{i}");
        assert_eq!(
            raw::values(&r.headers, &name),
            [format!("value {i}")],
            "{name}"
        );
    }
}

#[tokio::test]
async fn chunked_body_with_extensions_is_decoded_and_the_connection_reused() {
    let up = upstream(|req| match req.path.as_str() {
        "/chunked" => Answer::KeepOpen(response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
            // An extension, a quoted extension value, upper-case hex, leading
            // zeros and a chunk whose data looks like the last chunk.
            b"5;ext=1\r\nhello\r\n\
              1;a=b;c=\"d e\"\r\n \r\n\
              A\r\n0123456789\r\n\
              0005\r\n0\r\n\r\n\r\n\
              0\r\n\r\n",
        )),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    let r = client.get("/chunked").await;
    assert_body(&r, b"hello 01234567890\r\n\r\n");
    assert_body(&client.get("/next").await, b"/next");
    assert_eq!(up.conn("/chunked"), up.conn("/next"), "not reused");
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn chunked_trailers_reach_an_http2_client() {
    let up = upstream(|req| match req.path.as_str() {
        "/trailers" => Answer::KeepOpen(response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum",
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\n",
        )),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let req = http::Request::get("http://h1.test/trailers")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = support::send_h2(addr, req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello world");
    let trailers = r.trailers.expect("no trailers reached the client");
    assert_eq!(
        trailers.get("x-checksum").and_then(|v| v.to_str().ok()),
        Some("abc"),
        "{trailers:?}"
    );
}

#[tokio::test]
async fn close_delimited_body_is_relayed_whole_and_the_connection_not_reused() {
    let body: Vec<u8> = (0..100 * 1024).map(|i| (i % 241) as u8).collect();
    let b = body.clone();
    let up = upstream(move |req| match req.path.as_str() {
        "/until-close" => Answer::Close(response("HTTP/1.1 200 OK\r\nContent-Type: a/b", &b)),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    assert_body(&fetch(addr, "/until-close").await, &body);
    assert_body(&fetch(addr, "/next").await, b"/next");
    assert_ne!(up.conn("/until-close"), up.conn("/next"));
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn interim_responses_are_followed_by_the_final_response() {
    const CONTINUE: &str = "HTTP/1.1 100 Continue\r\n\r\n";
    const HINTS: &str = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n";
    let up = upstream(|req| {
        let interim = match req.path.as_str() {
            "/continue" => CONTINUE.to_string(),
            "/hints" => HINTS.to_string(),
            "/all" => format!("{CONTINUE}{HINTS}{HINTS}"),
            _ => return echo(req),
        };
        Answer::KeepOpen([interim.as_bytes(), &ok(req.path.as_bytes())].concat())
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    for path in ["/continue", "/hints", "/all"] {
        let r = client.get(path).await;
        assert_body(&r, path.as_bytes());
    }
    // Interim responses do not end the exchange: the connection stays usable.
    assert_body(&client.get("/next").await, b"/next");
    assert_eq!(up.accepted(), 1, "{:?}", up.seen());
}

#[tokio::test]
async fn repeated_identical_content_length_is_accepted() {
    let up = upstream(|req| match req.path.as_str() {
        "/list" => Answer::KeepOpen(response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5",
            b"hello",
        )),
        "/lines" => Answer::KeepOpen(response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5",
            b"hello",
        )),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    for path in ["/list", "/lines"] {
        // `Connection: close`, so that a length the client cannot parse still
        // ends with the connection (and shows in the failure).
        let request = format!("GET {path} HTTP/1.1\r\nHost: h1.test\r\nConnection: close\r\n\r\n");
        let r = exchange(addr, request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        // Forwarded as one valid Content-Length (RFC 9110 §8.6), or re-framed.
        let lengths: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            lengths.is_empty() || lengths == ["5"],
            "{path}: Content-Length sent to the client: {lengths:?}"
        );
        assert_body(&r, b"hello");
    }
}

#[tokio::test]
async fn head_response_has_no_body_and_the_connection_is_reused() {
    let up = upstream(|req| match req.method.as_str() {
        "HEAD" => Answer::KeepOpen(response(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000",
            b"",
        )),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    let r = client
        .send(b"HEAD /head HTTP/1.1\r\nHost: h1.test\r\n\r\n")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    assert!(r.body.is_empty(), "a body after HEAD: {:?}", r.text());
    // Had the gateway sent a body, it would be read here as a status line.
    assert_body(&client.get("/after-head").await, b"/after-head");
    assert_eq!(up.request("/head").method, "HEAD");
    assert_eq!(up.conn("/head"), up.conn("/after-head"), "not reused");
    assert_eq!(up.accepted(), 1);
}

// ---------------------------------------------------------------------------
// Connection persistence

/// `path` is answered with `answer` on a connection the upstream keeps open;
/// the next request must still go on a new connection.
async fn assert_not_reused_after(path: &str, answer: &'static [u8], body: &[u8]) {
    let up = upstream(move |req| {
        if req.path.starts_with("/once") {
            Answer::KeepOpen(answer.to_vec())
        } else {
            echo(req)
        }
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    assert_body(&client.get(path).await, body);
    assert_body(&client.get("/next").await, b"/next");
    assert_ne!(up.conn(path), up.conn("/next"), "reused");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn http10_response_without_keep_alive_is_not_reused() {
    assert_not_reused_after(
        "/once-1.0",
        b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nok10",
        b"ok10",
    )
    .await;
}

#[tokio::test]
async fn connection_close_response_is_not_reused() {
    assert_not_reused_after(
        "/once-close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose",
        b"close",
    )
    .await;
}

/// A pooled connection that the upstream closes under a GET, with no answer:
/// the GET goes once more, on a new connection (RFC 9112 §9.3.1).
#[tokio::test]
async fn get_on_a_pooled_connection_closed_under_it_goes_once_more() {
    let up = upstream(|req| match (req.path.as_str(), req.conn) {
        ("/closed-under", 0) => Answer::Close(Vec::new()),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    assert_body(&fetch(addr, "/first").await, b"/first");
    assert_body(&fetch(addr, "/closed-under").await, b"/closed-under");
    let conns: Vec<usize> = up
        .seen()
        .iter()
        .filter(|s| s.path == "/closed-under")
        .map(|s| s.conn)
        .collect();
    assert_eq!(
        conns,
        [0, 1],
        "sent on the pooled connection, then a new one"
    );
}

#[tokio::test]
async fn bytes_past_content_length_are_never_taken_as_the_next_response() {
    let up = upstream(|req| match req.path.as_str() {
        // The surplus is a whole response: relayed for the next request, it
        // would be response splitting.
        "/extra" => Answer::KeepOpen(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
              HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
                .to_vec(),
        ),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    assert_body(&client.get("/extra").await, b"ok");
    assert_body(&client.get("/next").await, b"/next");
    assert_eq!(up.seen().len(), 2, "{:?}", up.seen());
}

// ---------------------------------------------------------------------------
// Request bodies towards the upstream

#[tokio::test]
async fn chunked_request_body_reaches_the_upstream_intact() {
    let up = upstream(echo).await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    // The second chunk's data looks like a last chunk.
    let r = client
        .send(
            b"POST /chunked-up HTTP/1.1\r\nHost: h1.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n5\r\n0\r\n\r\n\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
    assert_body(&r, b"/chunked-up");
    let seen = up.request("/chunked-up");
    assert_eq!(seen.body, b"hello0\r\n\r\n world", "{seen:?}");
    let lengths = seen.values("content-length");
    if seen.chunked() {
        assert!(lengths.is_empty(), "chunked and a length: {seen:?}");
        let te = seen.values("transfer-encoding").join(",");
        assert!(te.to_ascii_lowercase().trim().ends_with("chunked"), "{te}");
    } else {
        assert_eq!(lengths, ["16"], "{seen:?}");
    }
    assert_eq!(up.seen().len(), 1, "{:?}", up.seen());
}

#[tokio::test]
async fn content_length_request_body_reaches_the_upstream_intact() {
    let up = upstream(echo).await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = Client::connect(addr).await;
    // A body that is a last chunk and a request, should it be framed wrongly.
    let body = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h1.test\r\n\r\n";
    let request = [
        format!(
            "POST /length-up HTTP/1.1\r\nHost: h1.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body,
    ]
    .concat();
    assert_body(&client.send(&request).await, b"/length-up");
    assert_body(&client.get("/next").await, b"/next");
    let seen = up.request("/length-up");
    assert_eq!(seen.values("content-length"), [body.len().to_string()]);
    assert!(seen.values("transfer-encoding").is_empty(), "{seen:?}");
    assert_eq!(seen.body, body);
    let paths: Vec<_> = up.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/length-up", "/next"]);
}

#[tokio::test]
async fn early_response_to_a_large_upload_is_relayed_without_hanging() {
    const SIZE: usize = 4 * 1024 * 1024;
    let up = upstream(|req| match req.path.as_str() {
        "/upload" => Answer::Early(response(
            "HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nX-From: upstream\r\nContent-Length: 8\r\nContent-Type: text/plain",
            b"too big!",
        )),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let (mut rd, mut wr) = raw::connect(addr).await.into_split();
    // The client keeps sending its body while it waits for the answer.
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: h1.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        // Returned, not dropped: dropping would half-close the connection.
        Ok::<_, std::io::Error>(wr)
    });
    let head = timeout(LIMIT, read_final_head(&mut rd))
        .await
        .expect("no answer within the timeout")
        .expect("no response head");
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    let head_lc = head.to_ascii_lowercase();
    match status {
        "413" => assert!(head_lc.contains("\r\nx-from: upstream"), "{head}"),
        "502" => assert!(
            head_lc.contains("\r\ncontent-type: application/problem+json"),
            "{head}"
        ),
        _ => panic!("want the upstream's 413 (or a 502): {head}"),
    }
    assert_eq!(up.request("/upload").method, "POST");
    writer.abort();
    assert_serves(addr).await;
}

/// Reads response heads off `r` until a final (non-1xx) one; returns it.
async fn read_final_head(r: &mut (impl AsyncRead + Unpin)) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // At most a few interim responses.
    for _ in 0..8 {
        let end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            match r.read(&mut chunk).await {
                Ok(0) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&buf))),
                Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&buf))),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if !head
            .split_whitespace()
            .nth(1)
            .is_some_and(|s| s.starts_with('1'))
        {
            return Ok(head);
        }
    }
    Err("too many interim responses".into())
}

// ---------------------------------------------------------------------------
// Ambiguous or broken framing

#[tokio::test]
async fn invalid_content_length_is_502_and_the_gateway_goes_on() {
    let up = upstream(|req| {
        let length = match req.path.as_str() {
            "/alpha" => "Content-Length: abc",
            "/negative" => "Content-Length: -1",
            "/list" => "Content-Length: 5, 6",
            "/lines" => "Content-Length: 5\r\nContent-Length: 6",
            _ => return echo(req),
        };
        Answer::Close(response(&format!("HTTP/1.1 200 OK\r\n{length}"), b"hello!"))
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    for path in ["/alpha", "/negative", "/list", "/lines"] {
        assert_bad_gateway(&fetch(addr, path).await, path);
        assert_serves(addr).await;
    }
}

#[tokio::test]
async fn chunked_with_content_length_is_never_framed_by_the_length() {
    let up = upstream(|req| {
        let head = match req.path.as_str() {
            "/te-then-cl" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3",
            "/cl-then-te" => "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked",
            _ => return echo(req),
        };
        Answer::KeepOpen(response(head, b"5\r\nhello\r\n0\r\n\r\n"))
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    for (i, path) in ["/te-then-cl", "/cl-then-te"].into_iter().enumerate() {
        let r = fetch(addr, path).await;
        if r.status != 502 {
            // Forwarded: de-chunked, and the received Content-Length removed.
            assert_body(&r, b"hello");
            let length = r.header("content-length");
            assert!(
                length.is_none() || length == Some("5"),
                "{path}: {length:?}"
            );
            let te = r.header("transfer-encoding");
            assert!(length.is_none() || te.is_none(), "{path}: both framings");
        } else {
            assert_bad_gateway(&r, path);
        }
        let next = format!("/next{i}");
        assert_body(&fetch(addr, &next).await, next.as_bytes());
        assert_ne!(up.conn(path), up.conn(&next), "{path}: reused");
    }
}

#[tokio::test]
async fn non_chunked_final_transfer_coding_is_answered_without_hanging() {
    const BODY: &[u8] = b"\x1f\x8b\x08\x00not-really-gzip";
    let up = upstream(|req| {
        let coding = match req.path.as_str() {
            "/gzip" => "gzip",
            "/chunked-gzip" => "chunked, gzip",
            _ => return echo(req),
        };
        let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {coding}");
        Answer::Close(response(&head, BODY))
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    for path in ["/gzip", "/chunked-gzip"] {
        // Read until the connection closes (RFC 9112 §6.3), or refused.
        let r = exchange(addr, &get(path))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        if r.status == 502 {
            assert_bad_gateway(&r, path);
        } else {
            assert_body(&r, BODY);
        }
        assert_serves(addr).await;
    }
}

#[tokio::test]
async fn response_head_over_64_kib_is_502() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2",
        "a".repeat(80 * 1024)
    );
    let up = upstream(move |req| match req.path.as_str() {
        "/big-head" => Answer::Close(response(&big, b"ok")),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    assert_bad_gateway(&fetch(addr, "/big-head").await, "80 KiB header");
    assert_serves(addr).await;
}

#[tokio::test]
async fn malformed_chunk_size_cuts_the_response_and_drops_the_connection() {
    let up = upstream(|req| match req.path.as_str() {
        "/bad-chunk" => Answer::KeepOpen(response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
            b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
        )),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    // An error before any head, or a cut response: never a complete 200.
    if let Ok(r) = exchange(addr, &get("/bad-chunk")).await {
        assert!(
            r.status != 200 || !r.complete,
            "a clean complete body: {:?}",
            r.text()
        );
        if r.status == 200 {
            assert!(b"hello".starts_with(&r.body), "{:?}", r.text());
        }
    }
    assert_body(&fetch(addr, "/next").await, b"/next");
    assert_ne!(up.conn("/bad-chunk"), up.conn("/next"), "reused");
}

#[tokio::test]
async fn obsolete_line_folding_in_a_response_is_502() {
    let up = upstream(|req| match req.path.as_str() {
        "/folded" => Answer::Close(response(
            "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2",
            b"ok",
        )),
        _ => echo(req),
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    assert_bad_gateway(&fetch(addr, "/folded").await, "obs-fold");
    assert_serves(addr).await;
}

#[tokio::test]
async fn status_line_that_is_not_http1_is_502() {
    let up = upstream(|req| {
        let version = match req.path.as_str() {
            "/v2.0" => "HTTP/2.0",
            "/v2" => "HTTP/2",
            "/v3.0" => "HTTP/3.0",
            _ => return echo(req),
        };
        let head = format!("{version} 200 OK\r\nContent-Length: 2");
        Answer::Close(response(&head, b"ok"))
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    for path in ["/v2.0", "/v2", "/v3.0"] {
        assert_bad_gateway(&fetch(addr, path).await, path);
    }
    assert_serves(addr).await;
}
