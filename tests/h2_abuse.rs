//! HTTP/2 abuse: rapid reset (CVE-2023-44487), CONTINUATION floods, SETTINGS
//! and PING floods, window-update overflow. An abusive connection is closed
//! (and counted) or throttled, and meanwhile another client of the same
//! worker keeps its latency.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod h2frames;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2frames::{Ended, frame};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{Gateway, get_path, upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The tests of this file run one at a time: each measures latency, and two
/// floods on two cores would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One worker: the flood and the well-behaved client share it.
async fn start() -> (Gateway, upstream::Upstream) {
    let up = upstream::named("app").await;
    let gw = Gateway::start(&format!(
        r#"
workers: 1
admin: {{ address: "127.0.0.1:0" }}
limits: {{ send_timeout: 2s }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: app, match: {{ prefix: / }}, upstream: app }}
"#,
        up.addr
    ));
    (gw, up)
}

/// A client doing sequential GETs on one HTTP/1.1 keep-alive connection.
struct Prober {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Prober {
    async fn new(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self { tx }
    }

    async fn get(&mut self) -> Duration {
        self.tx.ready().await.unwrap();
        let started = Instant::now();
        let req = Request::get("/probe")
            .header("host", "h.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), self.tx.send_request(req))
            .await
            .expect("probe timed out")
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        started.elapsed()
    }

    /// Latencies of sequential GETs: `n` of them, or until `stop` is set
    /// (at most 20 s either way).
    async fn run(&mut self, n: usize, stop: Option<&AtomicBool>) -> Vec<Duration> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < n
            && !stop.is_some_and(|s| s.load(Ordering::Relaxed))
            && Instant::now() < deadline
        {
            out.push(self.get().await);
        }
        out
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Floods one connection with `batch(i)` (i: batch number) until the server
/// ends it or `max_batches` were written; how it ended and the batches sent.
async fn flood_one(
    addr: SocketAddr,
    max_batches: usize,
    batch: impl Fn(usize) -> Vec<u8>,
) -> (Ended, usize) {
    let (ended, _, sent) = flood_one_at(addr, max_batches, batch).await;
    (ended, sent)
}

/// [`flood_one`], with the last stream id of the server's GOAWAY.
async fn flood_one_at(
    addr: SocketAddr,
    max_batches: usize,
    batch: impl Fn(usize) -> Vec<u8>,
) -> (Ended, Option<u32>, usize) {
    let (mut rd, mut wr) = h2frames::connect(addr).await.into_split();
    let done = Arc::new(AtomicBool::new(false));
    let seen = done.clone();
    let reader = tokio::spawn(async move {
        let ended = h2frames::wait_end_at(&mut rd, Duration::from_secs(10)).await;
        seen.store(true, Ordering::Relaxed);
        ended
    });
    let mut sent = 0;
    while sent < max_batches && !done.load(Ordering::Relaxed) {
        if wr.write_all(&batch(sent)).await.is_err() {
            break;
        }
        sent += 1;
        // Gives the reader (same test runtime) a turn.
        tokio::task::yield_now().await;
    }
    let (ended, last) = reader.await.unwrap();
    (ended, last, sent)
}

/// Runs `flood` over and over for `length` while a prober measures latency;
/// returns the probe latencies under the flood.
async fn under_flood<F, Fut>(addr: SocketAddr, length: Duration, flood: F) -> Vec<Duration>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    /// Stops the prober when the flooder ends, also by a failed assertion.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = StopOnDrop(stop.clone());
    let flooder = tokio::spawn(async move {
        let _flag = flag;
        let until = Instant::now() + length;
        while Instant::now() < until {
            flood().await;
        }
    });
    let mut prober = Prober::new(addr).await;
    let lat = prober.run(usize::MAX, Some(&stop)).await;
    flooder.await.unwrap();
    lat
}

/// Asserts the prober's latency under a flood stayed close to its baseline.
fn assert_latency(name: &str, baseline: Duration, under: Vec<Duration>) {
    assert!(
        under.len() >= 20,
        "{name}: only {} probes completed",
        under.len()
    );
    let p = p99(under);
    // Generous: a debug build on two shared cores, the flood client in the
    // same process as the prober.
    let bound = (baseline * 10).max(Duration::from_millis(100));
    assert!(
        p < bound && p < Duration::from_millis(200),
        "{name}: p99 {p:?} under the flood, baseline p99 {baseline:?}"
    );
}

async fn baseline(addr: SocketAddr) -> Duration {
    let mut prober = Prober::new(addr).await;
    prober.run(10, None).await;
    p99(prober.run(200, None).await)
}

async fn aborted(admin: SocketAddr, reason: &str) -> f64 {
    let text = get_path(admin, "/metrics").await.text();
    let series = format!(
        r#"portico_listener_connections_aborted_total{{listener="main",reason="{reason}"}}"#
    );
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `n` streams opened and at once reset, from stream id `first`.
fn rapid_resets(first: u32, n: u32) -> Vec<u8> {
    let block = h2frames::get_block("h.test", "/flood");
    let mut out = Vec::with_capacity(n as usize * (block.len() + 40));
    for i in 0..n {
        let id = first + 2 * i;
        frame(
            &mut out,
            h2frames::HEADERS,
            h2frames::END_STREAM | h2frames::END_HEADERS,
            id,
            &block,
        );
        // RST_STREAM(CANCEL)
        frame(&mut out, h2frames::RST_STREAM, 0, id, &8u32.to_be_bytes());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_is_closed_while_another_client_keeps_its_latency() {
    let _serial = SERIAL.lock().await;
    let (mut gw, up) = start().await;
    let addr = gw.addr("main");
    let admin = gw.addr("admin");
    let base = baseline(addr).await;

    const PER_BATCH: u32 = 50;
    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = results.clone();
    let lat = under_flood(addr, Duration::from_millis(1500), move || {
        let rec = rec.clone();
        async move {
            let r = flood_one_at(addr, 400, |b| {
                rapid_resets(1 + 2 * PER_BATCH * b as u32, PER_BATCH)
            })
            .await;
            rec.lock().unwrap().push(r);
        }
    })
    .await;
    let results = results.lock().unwrap().clone();
    assert!(!results.is_empty());
    for (ended, last, batches) in &results {
        assert_eq!(
            *ended,
            Ended::GoAway(h2frames::ENHANCE_YOUR_CALM),
            "a rapid-reset connection was not refused ({batches} batches written)"
        );
        // The server stopped after a bounded number of streams (h2 allows 20
        // resets of streams not yet accepted); the writer runs ahead of it.
        let last = last.unwrap_or(0);
        assert!(last < 2 * 500, "GOAWAY after stream {last}");
    }
    assert_latency("rapid reset", base, lat);
    assert!(aborted(admin, "enhance_your_calm").await >= results.len() as f64);
    // Few or none of the reset streams reached the upstream.
    let flooded = up.count_path("/flood");
    assert!(
        flooded < results.len() * 200,
        "{flooded} reset streams were forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_closed() {
    let _serial = SERIAL.lock().await;
    let (mut gw, _up) = start().await;
    let addr = gw.addr("main");
    let base = baseline(addr).await;
    let lat = under_flood(addr, Duration::from_millis(1000), move || async move {
        // HEADERS without END_HEADERS, then CONTINUATION frames of junk
        // header fields that never end.
        let mut filler = Vec::new();
        while filler.len() < 16_000 {
            h2frames::literal(&mut filler, "x-filler", "0123456789abcdef0123456789abcdef");
        }
        let (ended, batches) = flood_one(addr, 2000, |b| {
            let mut out = Vec::new();
            if b == 0 {
                frame(
                    &mut out,
                    h2frames::HEADERS,
                    h2frames::END_STREAM,
                    1,
                    &h2frames::get_block("h.test", "/"),
                );
            }
            frame(&mut out, h2frames::CONTINUATION, 0, 1, &filler);
            out
        })
        .await;
        assert!(
            matches!(ended, Ended::GoAway(_) | Ended::Closed),
            "a CONTINUATION flood was not closed after {batches} frames: {ended:?}"
        );
        // Closed while the client could still write: the server did not take
        // in the whole 32 MB (what was written beyond 64 KiB of headers sat in
        // socket buffers when the GOAWAY came).
        assert!(
            batches < 2000,
            "{batches} CONTINUATION frames before the close"
        );
    })
    .await;
    assert_latency("CONTINUATION flood", base, lat);
}

/// A PING or SETTINGS flood from a client that also reads: h2 answers each
/// one (one pending answer at a time, so the flood is paced by the client's
/// own reading), and the other client does not notice.
async fn answered_flood(kind: u8, payload: [u8; 8]) {
    let _serial = SERIAL.lock().await;
    let (mut gw, _up) = start().await;
    let addr = gw.addr("main");
    let base = baseline(addr).await;
    let lat = under_flood(addr, Duration::from_millis(1500), move || async move {
        let mut batch = Vec::new();
        let payload: &[u8] = if kind == h2frames::PING {
            &payload
        } else {
            // SETTINGS_INITIAL_WINDOW_SIZE = 65535, a legal no-op.
            &[0, 4, 0, 0, 0xff, 0xff]
        };
        for _ in 0..1000 {
            frame(&mut batch, kind, 0, 0, payload);
        }
        let (ended, _) = flood_one(addr, 200, |_| batch.clone()).await;
        // Throttled (still open) or closed; never a crash.
        assert_ne!(ended, Ended::GoAway(h2frames::FLOW_CONTROL_ERROR));
    })
    .await;
    assert_latency("flood", base, lat);
    // And the gateway still serves HTTP/2 afterwards.
    let reply = support::send_h2(
        addr,
        Request::get("http://h.test/after")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_does_not_harm_another_client() {
    answered_flood(h2frames::PING, *b"floodpng").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_flood_does_not_harm_another_client() {
    answered_flood(h2frames::SETTINGS, [0; 8]).await;
}

/// A PING flood from a client that never reads: the answers back up, and
/// the send timeout closes the connection.
#[tokio::test]
async fn a_ping_flood_that_never_reads_is_closed() {
    let _serial = SERIAL.lock().await;
    let (mut gw, _up) = start().await;
    let addr = gw.addr("main");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let mut out = h2frames::PREFACE.to_vec();
    frame(&mut out, h2frames::SETTINGS, 0, 0, &[]);
    s.write_all(&out).await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..1000 {
        frame(&mut batch, h2frames::PING, 0, 0, b"floodpng");
    }
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if s.write_all(&batch).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was still open after 20 s");
    assert!(started.elapsed() > Duration::from_millis(500));
    // The gateway still answers.
    assert_eq!(get_path(addr, "/after").await.status, 200);
}

#[tokio::test]
async fn a_window_overflow_gets_flow_control_error() {
    let _serial = SERIAL.lock().await;
    let (mut gw, _up) = start().await;
    let addr = gw.addr("main");
    let admin = gw.addr("admin");
    let (mut rd, mut wr) = h2frames::connect(addr).await.into_split();
    let mut out = Vec::new();
    for _ in 0..2 {
        frame(
            &mut out,
            h2frames::WINDOW_UPDATE,
            0,
            0,
            &0x7fff_ffffu32.to_be_bytes(),
        );
    }
    wr.write_all(&out).await.unwrap();
    let ended = h2frames::wait_end(&mut rd, Duration::from_secs(5)).await;
    assert_eq!(ended, Ended::GoAway(h2frames::FLOW_CONTROL_ERROR));
    let deadline = Instant::now() + Duration::from_secs(5);
    while aborted(admin, "flow_control_error").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw HTTP/1.1 upstream: `/big` gets a 1 MiB body; `/slow` waits 4 s
/// before its head, and 3 s more in the middle of its body. Counts the open
/// connections that have served `/big`.
async fn big_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::AtomicUsize;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let big_open = Arc::new(AtomicUsize::new(0));
    let counter = big_open.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut served_big = false;
                let mut buf = Vec::new();
                'conn: loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end);
                    let written = if head.starts_with("GET /slow") {
                        tokio::time::sleep(Duration::from_secs(4)).await;
                        let mut ok = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nslow")
                            .await
                            .is_ok();
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        ok &= s.write_all(b"-ok!").await.is_ok();
                        ok
                    } else {
                        if !served_big {
                            served_big = true;
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = vec![b'x'; 1 << 20];
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        s.write_all(head.as_bytes()).await.is_ok()
                            && s.write_all(&body).await.is_ok()
                    };
                    if !written {
                        break;
                    }
                }
                if served_big {
                    counter.fetch_sub(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, big_open)
}

/// A client that opens streams with a zero flow-control window and never
/// sends WINDOW_UPDATE: hyper never polls their bodies, so nothing times out
/// on its own. The stall rule (`limits.send_timeout`) closes the connection
/// and so frees the upstream connections; a slow upstream is not a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_zero_window_is_closed_and_frees_the_upstreams() {
    use std::sync::atomic::Ordering::SeqCst;
    let _serial = SERIAL.lock().await;
    let (up, big_open) = big_upstream().await;
    let mut gw = Gateway::start(&format!(
        r#"
workers: 1
admin: {{ address: "127.0.0.1:0" }}
limits: {{ send_timeout: 2s }}
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{up}"] }}
routes:
  - {{ name: app, match: {{ prefix: / }}, upstream: app }}
"#
    ));
    let addr = gw.addr("main");

    // A well-behaved client of a slow upstream, meanwhile.
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let reply = support::send_h2(addr, support::get("h.test", "/slow")).await;
        (reply, started.elapsed())
    });

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut out = h2frames::PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0
    frame(&mut out, h2frames::SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
    frame(&mut out, h2frames::SETTINGS, h2frames::ACK, 0, &[]);
    let block = h2frames::get_block("h.test", "/big");
    for i in 0..20u32 {
        frame(
            &mut out,
            h2frames::HEADERS,
            h2frames::END_STREAM | h2frames::END_HEADERS,
            1 + 2 * i,
            &block,
        );
    }
    s.write_all(&out).await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    while big_open.load(SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "the upstream saw {} connections",
            big_open.load(SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let ended = h2frames::wait_end(&mut s, Duration::from_secs(2 + 3)).await;
    assert_ne!(ended, Ended::Open, "the stalled connection is still open");
    let closed_after = started.elapsed();
    assert!(
        closed_after > Duration::from_millis(1500),
        "closed too early: {closed_after:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(3);
    while big_open.load(SeqCst) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} upstream connections still held",
            big_open.load(SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (reply, took) = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"slow-ok!");
    assert!(took >= Duration::from_secs(7), "{took:?}");
}
