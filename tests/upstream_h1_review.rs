//! Review of the hand-written HTTP/1.1 upstream client (`upstream/h1.rs`):
//! reuse after framing that RFC 9112 calls faulty, replay of requests the
//! upstream already took, request bodies cut when an early response ends,
//! write failures that hide a response already readable, reads split at
//! every byte, bytes an upstream sends past a body-less response, and caps.
//!
//! Each test puts the real gateway (one worker, so one pool) in front of an
//! upstream whose every connection runs a handler the test writes, over raw
//! TCP. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::h1::{LIMIT, exchange, fetch, gateway, get};
use support::raw::{self, RawResponse, find};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

/// Bound on the life of one upstream connection.
const CONN_LIFE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Upstream

/// What the upstream saw: (connection, method, path, body length).
type Log = Arc<Mutex<Vec<(usize, String, String, usize)>>>;

struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn log(&self) -> Vec<(usize, String, String, usize)> {
        self.log.lock().unwrap().clone()
    }

    /// How many times `path` arrived.
    fn count(&self, path: &str) -> usize {
        self.log().iter().filter(|r| r.2 == path).count()
    }

    /// The connection the (last) request for `path` came on.
    fn conn(&self, path: &str) -> usize {
        let log = self.log();
        log.iter()
            .rev()
            .find(|r| r.2 == path)
            .map(|r| r.0)
            .unwrap_or_else(|| panic!("the upstream never got {path}: {log:?}"))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream on 127.0.0.1:0 that runs `handler` for each connection, with
/// the connection's number in accept order.
async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(usize, TcpStream, Log) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let log: Log = Arc::default();
    let (acc, rec) = (accepted.clone(), log.clone());
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let n = acc.fetch_add(1, Ordering::SeqCst);
            conns.spawn(timeout(CONN_LIFE, handler(n, stream, rec.clone())));
            while conns.try_join_next().is_some() {}
        }
    });
    Upstream {
        addr,
        accepted,
        log,
        task,
    }
}

/// One request head as the upstream read it.
struct Req {
    method: String,
    path: String,
    length: usize,
}

/// Reads a request head (requests here carry Content-Length or no body).
async fn read_req(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Req> {
    let head = raw::take_head(s, buf).await?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, path) = (start.next()?.to_string(), start.next()?.to_string());
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    Some(Req {
        method,
        path,
        length,
    })
}

/// Reads and drops `n` body bytes; how many there were before EOF.
async fn skip_body(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> usize {
    let mut got = buf.len().min(n);
    buf.drain(..got);
    while got < n {
        if !raw::read_more(s, buf).await {
            return got;
        }
        let take = buf.len().min(n - got);
        buf.drain(..take);
        got += take;
    }
    got
}

/// `HTTP/1.1 200 OK` with `body` framed by Content-Length.
fn ok(body: &[u8]) -> Vec<u8> {
    [
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        body,
    ]
    .concat()
}

/// Serves every request on `s` with its own path as the body; `special`
/// answers (and may end the connection: `false`) the paths it knows.
async fn serve<F, Fut>(n: usize, mut s: TcpStream, log: Log, special: F)
where
    F: Fn(Req, TcpStream, Vec<u8>, Log) -> Fut,
    Fut: Future<Output = Option<(TcpStream, Vec<u8>)>>,
{
    let mut buf = Vec::new();
    while let Some(req) = read_req(&mut s, &mut buf).await {
        if req.path.starts_with("/x-") {
            let Some(back) = special(req, s, buf, log.clone()).await else {
                return;
            };
            (s, buf) = back;
            continue;
        }
        let got = skip_body(&mut s, &mut buf, req.length).await;
        log.lock()
            .unwrap()
            .push((n, req.method, req.path.clone(), got));
        if s.write_all(&ok(req.path.as_bytes())).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Gateway and client

#[track_caller]
fn assert_body(r: &RawResponse, body: &[u8]) {
    assert_eq!(r.status, 200, "{:?} {:?}", r.headers, r.text());
    assert!(r.complete, "the response was cut: {:?}", r.text());
    assert_eq!(r.text(), String::from_utf8_lossy(body));
}

/// Waits (bounded) until `cond` holds.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if cond() {
            return true;
        }
        sleep(Duration::from_millis(50)).await;
    }
    cond()
}

// ---------------------------------------------------------------------------
// Replay of a request the upstream already read

/// A bodyless POST on a pooled connection that the upstream reads and then
/// closes without answering (it crashed, or it processed the request and
/// died) must not be sent again: the gateway cannot tell it from a
/// connection closed while idle, and a POST is not idempotent (RFC 9110
/// §9.2.2). Nor may one request be sent down every idle connection in turn.
#[tokio::test]
async fn bodyless_post_taken_by_the_upstream_is_not_sent_again() {
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, buf, log| async move {
            log.lock()
                .unwrap()
                .push((n, req.method.clone(), req.path.clone(), 0));
            match req.path.as_str() {
                "/x-slow" => {
                    sleep(Duration::from_millis(300)).await;
                    s.write_all(&ok(b"slow")).await.ok()?;
                    Some((s, buf))
                }
                // Read, then the connection closes without a response.
                _ => None,
            }
        })
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    // Three connections in the pool.
    let warm: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { fetch(addr, "/x-slow").await }))
        .collect();
    for w in warm {
        assert_body(&w.await.unwrap(), b"slow");
    }
    assert_eq!(up.accepted(), 3);
    let r = exchange(
        addr,
        b"POST /x-pay HTTP/1.1\r\nHost: h1.test\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502, "{:?}", r.text());
    assert_eq!(
        up.count("/x-pay"),
        1,
        "the POST went upstream more than once: {:?}",
        up.log()
    );
}

// ---------------------------------------------------------------------------
// Reuse after faulty framing

/// RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
/// framing; the connection must be closed after it, keep-alive or not.
#[tokio::test]
async fn http10_response_with_transfer_encoding_is_not_reused() {
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, buf, log| async move {
            log.lock().unwrap().push((n, req.method, req.path, 0));
            s.write_all(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\n",
            )
            .await
            .ok()?;
            Some((s, buf))
        })
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let r = fetch(addr, "/x-te10").await;
    assert_eq!(r.status, 200, "{:?}", r.text());
    assert_body(&fetch(addr, "/next").await, b"/next");
    assert_ne!(up.conn("/x-te10"), up.conn("/next"), "reused");
}

/// Bytes an upstream sends past a body-less response (204, 304, HEAD),
/// in the same segment or a moment later while the connection is idle, are
/// never the next request's response.
#[tokio::test]
async fn bytes_after_a_bodyless_response_are_never_the_next_response() {
    const SMUGGLED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled";
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, buf, log| async move {
            log.lock()
                .unwrap()
                .push((n, req.method.clone(), req.path.clone(), 0));
            let head: &[u8] = match req.path.as_str() {
                "/x-204" | "/x-204-later" => {
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n"
                }
                "/x-304" | "/x-304-later" => {
                    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\n"
                }
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n",
            };
            if req.path.ends_with("-later") {
                s.write_all(head).await.ok()?;
                sleep(Duration::from_millis(100)).await;
                s.write_all(SMUGGLED).await.ok()?;
            } else {
                s.write_all(&[head, SMUGGLED].concat()).await.ok()?;
            }
            Some((s, buf))
        })
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    for (i, path) in [
        "/x-204",
        "/x-204-later",
        "/x-304",
        "/x-304-later",
        "/x-head",
        "/x-head-later",
    ]
    .into_iter()
    .enumerate()
    {
        let method = if path.starts_with("/x-head") {
            "HEAD"
        } else {
            "GET"
        };
        let request = format!("{method} {path} HTTP/1.1\r\nHost: h1.test\r\n\r\n");
        let r = exchange(addr, request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(r.body.is_empty(), "{path}: {:?}", r.text());
        sleep(Duration::from_millis(300)).await;
        let next = format!("/next{i}");
        assert_body(&fetch(addr, &next).await, next.as_bytes());
    }
}

// ---------------------------------------------------------------------------
// Reads split anywhere

/// A chunked response with extensions and trailers, written one byte at a
/// time: every state of the head parser and the chunked decoder is left and
/// re-entered mid-token (the chunk-size line, the CRLF after data, the
/// trailer section); the body arrives whole and the connection is reused.
#[tokio::test]
async fn chunked_response_split_at_every_byte_is_decoded_and_reused() {
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;a=b\r\nhello\r\n\
        1\r\n \r\n\
        5\r\nworld\r\n\
        0;end\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n";
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, buf, log| async move {
            log.lock().unwrap().push((n, req.method, req.path, 0));
            s.set_nodelay(true).ok()?;
            for b in RESPONSE {
                s.write_all(std::slice::from_ref(b)).await.ok()?;
                sleep(Duration::from_millis(2)).await;
            }
            Some((s, buf))
        })
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let mut client = raw::connect(addr).await;
    client.write_all(&get("/x-drip")).await.unwrap();
    let r = raw::read_response(&mut client, false).await.unwrap();
    assert_body(&r, b"hello world");
    client.write_all(&get("/next")).await.unwrap();
    let r = raw::read_response(&mut client, false).await.unwrap();
    assert_body(&r, b"/next");
    assert_eq!(up.conn("/x-drip"), up.conn("/next"), "not reused");
}

// ---------------------------------------------------------------------------
// Early answers and the request body

/// An upstream that answers 200 at once and then reads the upload (an
/// "accepted, processing" endpoint) must get the whole body, as it did with
/// hyper's client: the end of the response is not the end of the request.
#[tokio::test]
async fn early_2xx_answer_does_not_cut_the_upload() {
    const SIZE: usize = 4 * 1024 * 1024;
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, mut buf, log| async move {
            s.write_all(&ok(b"accepted")).await.ok()?;
            // Reads the upload only once the answer has been relayed.
            sleep(Duration::from_millis(300)).await;
            let got = skip_body(&mut s, &mut buf, req.length).await;
            log.lock().unwrap().push((n, req.method, req.path, got));
            Some((s, buf))
        })
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let (mut rd, mut wr) = raw::connect(addr).await.into_split();
    let writer = tokio::spawn(async move {
        let head =
            format!("POST /x-upload HTTP/1.1\r\nHost: h1.test\r\nContent-Length: {SIZE}\r\n\r\n");
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..SIZE / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = timeout(LIMIT, async {
        while find(&head, b"accepted").is_none() {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no response: {:?}",
        String::from_utf8_lossy(&head)
    );
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    let sent = timeout(LIMIT, writer).await;
    let arrived = eventually(|| up.count("/x-upload") == 1).await;
    assert!(
        arrived,
        "the upstream never finished reading: {:?}",
        up.log()
    );
    let got = up.log().iter().find(|r| r.2 == "/x-upload").unwrap().3;
    assert_eq!(
        got,
        SIZE,
        "the upstream got {got} of {SIZE} body bytes (client writer: {:?})",
        sent.map(|r| r.map(|r| r.map(|_| ())))
    );
}

/// An upstream answers 200 before reading the upload, sends the rest of its
/// body a moment later and closes (a reset: the upload is unread). The
/// response is in the gateway's socket before the reset; failing the write
/// of the request body must not throw it away (as `poll_head` already does
/// not before the head).
#[tokio::test]
async fn write_failure_after_an_early_answer_does_not_lose_the_response() {
    const SIZE: usize = 16 * 1024 * 1024;
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, _buf, log| async move {
            log.lock().unwrap().push((n, req.method, req.path, 0));
            s.set_nodelay(true).ok()?;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
                .await
                .ok()?;
            sleep(Duration::from_millis(300)).await;
            s.write_all(b"world").await.ok()?;
            // Dropped with the upload unread: the kernel resets.
            None
        })
    })
    .await;
    let (gw, addr) = gateway(up.addr);
    // The reset races the last bytes into the gateway: a few tries, and
    // none may lose them.
    for attempt in 0..5 {
        let (mut rd, mut wr) = raw::connect(addr).await.into_split();
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST /x-reset HTTP/1.1\r\nHost: h1.test\r\nContent-Length: {SIZE}\r\n\r\n"
            );
            wr.write_all(head.as_bytes()).await?;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..SIZE / chunk.len() {
                wr.write_all(&chunk).await?;
            }
            Ok::<_, std::io::Error>(wr)
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let _ = timeout(LIMIT, async {
            while find(&got, b"helloworld").is_none() {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        writer.abort();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(
            text.ends_with("\r\n\r\nhelloworld"),
            "try {attempt}: the response was cut: {text:?}; access log: {:?}",
            gw.stdout_lines().last()
        );
    }
}

// ---------------------------------------------------------------------------
// Caps

/// The 4 KiB chunk-size line cap (docs/architecture.md) holds however the
/// line arrives: here in one read after the head.
#[tokio::test]
async fn chunk_size_line_over_4_kib_is_refused_in_one_read_too() {
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, buf, log| async move {
            log.lock().unwrap().push((n, req.method, req.path, 0));
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .ok()?;
            sleep(Duration::from_millis(100)).await;
            let line = format!("5;ext={}\r\nhello\r\n0\r\n\r\n", "e".repeat(6000));
            s.write_all(line.as_bytes()).await.ok()?;
            Some((s, buf))
        })
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let r = exchange(addr, &get("/x-long-line")).await;
    if let Ok(r) = &r {
        assert!(
            r.status != 200 || !r.complete,
            "a 6 KiB chunk-size line was accepted: {:?}",
            r.text()
        );
    }
    assert_body(&fetch(addr, "/next").await, b"/next");
}

/// A trailer section larger than any buffer (100 KiB, never ended) fails
/// the response instead of growing the buffer; the gateway goes on.
#[tokio::test]
async fn endless_trailer_section_is_cut_and_the_gateway_goes_on() {
    let up = upstream(|n, s, log| {
        serve(n, s, log, move |req, mut s, buf, log| async move {
            log.lock().unwrap().push((n, req.method, req.path, 0));
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
            )
            .await
            .ok()?;
            let field = format!("X-T: {}\r\n", "t".repeat(1000));
            for _ in 0..100 {
                s.write_all(field.as_bytes()).await.ok()?;
            }
            // Held open, never ending the section.
            sleep(Duration::from_secs(30)).await;
            Some((s, buf))
        })
    })
    .await;
    let (_gw, addr) = gateway(up.addr);
    let r = exchange(addr, &get("/x-trailers")).await;
    match &r {
        Ok(r) => assert!(r.status != 200 || !r.complete, "{:?}", r.text()),
        Err(e) => assert!(!e.contains("timed out"), "{e}"),
    }
    assert_body(&fetch(addr, "/next").await, b"/next");
    assert_ne!(up.conn("/x-trailers"), up.conn("/next"));
}
