//! The HTTP/1.1 fast path. Most requests on a keep-alive connection are
//! plain: HTTP/1.1, no body, no upgrade, no `Expect`. This loop serves those
//! itself: the head is parsed in place with `httparse` (values share the read
//! buffer), the pipeline runs in the connection's task, and the response
//! head goes out in one write with the first piece of its body.
//!
//! Anything else (a body, either framing field, an upgrade, `Expect`, `TE`,
//! HTTP/1.0, CONNECT, a head that does not parse or is over the limits, the
//! HTTP/2 preface) hands the connection, with every byte read so far, to
//! hyper's server behind the [`super::h1_guard`], which serves it from that
//! request on. So bodies, 100-continue, upgrades, h2c and every refusal of a
//! malformed or ambiguous head stay where they were built and tested; the
//! fast path only ever takes a head that hyper would have taken as it is.

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version, header};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shared;
use crate::http1::{self, Writer};
use crate::pipeline::{self, ConnInfo};
use crate::proxy::body::{ClientBody, ResponseBody};

/// Largest head the fast path takes, whatever the configured limit (larger:
/// hyper's, which also refuses request targets over 64 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
/// Fields forwarding may add to a request's map (Host, a joined
/// `tracestate`; the rest goes beside it): room is made when it is built.
const ADDED_UPSTREAM: usize = 2;
/// Read size for request heads.
const READ_SIZE: usize = 8 * 1024;

/// How the fast path left a connection.
pub enum Handoff<S> {
    /// It is closed (or the client left).
    Closed,
    /// Hyper's server takes it from here; the bytes are what was read of it
    /// and not served, from the start of a request head.
    Hyper(S, Bytes),
}

/// The connection limits the loop applies.
pub struct Limits {
    /// Largest request head.
    pub max_head: usize,
    /// Time a started head has to arrive whole.
    pub header_read_timeout: Duration,
    /// Time a connection may wait idle for its next request (zero: only the
    /// header read timeout applies).
    pub idle_timeout: Duration,
}

impl Limits {
    /// How long a connection waits for its next request: the shorter of
    /// the idle and header read timeouts, as hyper's server does.
    fn keep_alive(&self) -> Duration {
        if self.idle_timeout.is_zero() {
            self.header_read_timeout
        } else {
            self.idle_timeout.min(self.header_read_timeout)
        }
    }
}

/// Serves plain HTTP/1.1 requests on `io` until the connection closes or a
/// request needs hyper's server.
pub async fn serve<S>(
    mut io: S,
    info: &Arc<ConnInfo>,
    shared: &Shared,
    drain: &mut watch::Receiver<bool>,
    limits: Limits,
) -> Handoff<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let signal = drain.clone();
    let mut drained = pin!(super::drained(drain));
    let mut clock = http1::Deadline::in_task();
    let mut heads = http1::HeadBuf::default();
    // The drain signal is watched from the first wait on: polled again only
    // once it changed, its waker (this task's) stays registered.
    let mut registered = false;
    let mut served = false;
    let mut ended = false;
    loop {
        // 1. A whole head, within the header read timeout; while nothing
        // came between requests, within the idle timeout too.
        let mut waiting = None;
        let mut scanned = 0;
        let parsed = loop {
            // Parsed only once an end of head may be there: a head that
            // arrives in small pieces is not parsed again for every piece.
            if head_may_end(&buf, scanned) || buf.len() > limits.max_head {
                match parse(&mut buf, limits.max_head) {
                    Parse::Partial => {}
                    // HTTP/2 prior knowledge is a connection's first bytes,
                    // never what follows an HTTP/1.1 request (hyper's
                    // server would look for it again): refused as hyper's
                    // HTTP/1.1 server refuses it, by closing.
                    Parse::Other if served && h2_preface(&buf) => return Handoff::Closed,
                    Parse::Other => return Handoff::Hyper(io, buf.freeze()),
                    Parse::Plain(req, close) => break (req, close),
                }
            }
            if ended {
                // What the client sent before closing its side is served.
                return Handoff::Closed;
            }
            scanned = buf.len();
            // Both timeouts count from when the connection began to wait.
            let since = *waiting.get_or_insert_with(Instant::now);
            let idle = buf.is_empty();
            let deadline = if idle && served {
                since + limits.keep_alive()
            } else {
                since + limits.header_read_timeout
            };
            let read = poll_fn(|cx| {
                if let Poll::Ready(r) = poll_fill(&mut io, &mut buf, cx) {
                    return Poll::Ready(matches!(r, Ok(n) if n > 0));
                }
                if clock.poll_passed(deadline, cx) {
                    return Poll::Ready(false);
                }
                if idle && (!registered || signal.has_changed().unwrap_or(true)) {
                    if drained.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    registered = true;
                }
                Poll::Pending
            })
            .await;
            if !read {
                return Handoff::Closed;
            }
        };
        served = true;
        let (req, mut close) = parsed;
        let head_method = req.method() == Method::HEAD;

        // 2. The pipeline, while the client is watched: one that leaves
        // cancels its request (and the upstream exchange with it).
        let gw = shared.current.load_full();
        let mut handled = pin!(pipeline::handle(req, info.clone(), gw, None));
        let mut client = Client {
            buf: &mut buf,
            cap: limits.max_head,
            ended: &mut ended,
        };
        let resp = client.watching(&mut io, |_, cx| handled.as_mut().poll(cx));
        let Some(Ok(resp)) = resp.await else {
            return Handoff::Closed;
        };

        // 3. The response.
        close |= *signal.borrow();
        let (mut parts, body) = resp.into_parts();
        let (head, framing) =
            encode_response(&mut heads, &mut parts, &body, head_method, &mut close);
        http1::recycle(parts.headers);
        let body = match framing {
            Framing::None => {
                drop(body);
                None
            }
            Framing::Length | Framing::Chunked => Some(body),
        };
        let mut writer = Writer::new(head, body, matches!(framing, Framing::Chunked), false);
        let mut client = Client {
            buf: &mut buf,
            cap: limits.max_head,
            ended: &mut ended,
        };
        let written = client.watching(&mut io, |io, cx| writer.poll(io, cx)).await;
        drop(writer);
        if !matches!(written, Some(Ok(()))) {
            return Handoff::Closed;
        }
        if close {
            let _ = io.shutdown().await;
            return Handoff::Closed;
        }
    }
}

/// What the buffer holds.
// Matched as soon as it is returned: boxing the request would cost an
// allocation per request to save a move.
#[allow(clippy::large_enum_variant)]
enum Parse {
    /// Part of a head that may still be plain.
    Partial,
    /// A head the fast path does not take.
    Other,
    /// A plain request, taken out of the buffer; whether the client asked
    /// to close after it.
    Plain(Request<ClientBody>, bool),
}

fn parse(buf: &mut BytesMut, max_head: usize) -> Parse {
    // Left uninitialized: httparse writes the fields it finds, and filling
    // the whole array first would cost more than the parse.
    let mut fields = [const { MaybeUninit::uninit() }; http1::MAX_PLAIN_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parse::Partial,
        _ => return Parse::Other,
    };
    if req.version != Some(1) {
        return Parse::Other;
    }
    let Some(method) = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
    else {
        return Parse::Other;
    };
    if method == Method::CONNECT || req.headers.iter().any(|f| not_plain(f.name.as_bytes())) {
        return Parse::Other;
    }
    let start = buf.as_ptr() as usize;
    let path = req
        .path
        .map_or((0, 0), |p| (p.as_ptr() as usize - start, p.len()));
    let mut spans = http1::Spans::new();
    http1::spans(buf, req.headers, &mut spans);
    let head = buf.split_to(len).freeze();
    let parts = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
        .ok()
        .zip(http1::header_map(&head, &spans, ADDED_UPSTREAM).ok());
    let Some((uri, (headers, notable))) = parts else {
        // httparse took what `http` refuses: hyper answers it.
        let mut all = BytesMut::with_capacity(head.len() + buf.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(buf);
        *buf = all;
        return Parse::Other;
    };
    let close = notable.connection && http1::ConnectionOptions::of(&headers).close;
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parse::Plain(req, close)
}

/// Whether `buf` starts like the HTTP/2 connection preface (RFC 9113 §3.4).
fn h2_preface(buf: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = buf.len().min(PREFACE.len());
    buf[..n] == PREFACE[..n]
}

/// Whether the bytes past `scanned` (and the three before, where an end
/// may straddle two reads) hold an empty line, the end of a head.
fn head_may_end(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(3);
    let tail = buf.get(from..).unwrap_or_default();
    memchr::memchr_iter(b'\n', tail)
        .any(|i| matches!(tail.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..])))
}

/// A field that makes a request not plain: framing (and its look-alikes,
/// which the guard refuses), upgrades, `Expect` and `TE`.
fn not_plain(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 7] = [
        b"content-length",
        b"transfer-encoding",
        b"content_length",
        b"transfer_encoding",
        b"upgrade",
        b"expect",
        b"te",
    ];
    NAMES
        .iter()
        .any(|n| n.len() == name.len() && n.eq_ignore_ascii_case(name))
}

/// Reads more of what the client sends; `Ok(0)` at the end of its stream.
fn poll_fill<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The client's side of a connection while one of its requests is served.
struct Client<'a> {
    /// What was read and not served yet.
    buf: &'a mut BytesMut,
    /// How much may be read ahead: a head's limit.
    cap: usize,
    /// The client closed its side: it sends no more.
    ended: &'a mut bool,
}

impl Client<'_> {
    /// Drives `step` to its end while reading what the client sends (a
    /// pipelined next request); `None` once the client has gone: its
    /// connection failed, or it closed its side with nothing more to be
    /// served (a client that closes its side after pipelining requests gets
    /// the answers to those it sent).
    async fn watching<S, T>(
        &mut self,
        io: &mut S,
        mut step: impl FnMut(&mut S, &mut Context<'_>) -> Poll<T>,
    ) -> Option<T>
    where
        S: AsyncRead + Unpin,
    {
        poll_fn(|cx| {
            if let Poll::Ready(done) = step(io, cx) {
                return Poll::Ready(Some(done));
            }
            while !*self.ended && self.buf.len() <= self.cap {
                match poll_fill(io, self.buf, cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(0)) if self.buf.is_empty() => return Poll::Ready(None),
                    Poll::Ready(Ok(0)) => *self.ended = true,
                    Poll::Ready(Ok(_)) => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// How a response body goes out.
enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    /// `Content-Length`.
    Length,
    Chunked,
}

/// The status line and header fields, with the framing this server chose
/// (RFC 9112 §6): the body's length when it is known, chunked when not.
fn encode_response(
    heads: &mut http1::HeadBuf,
    parts: &mut http::response::Parts,
    body: &ResponseBody,
    head_method: bool,
    close: &mut bool,
) -> (Bytes, Framing) {
    let status = parts.status;
    // A response has few fields: one pass over their names tells whether
    // it has `Connection` and `Date` for less than hashing either name.
    let (mut has_connection, mut has_date) = (false, false);
    for name in parts.headers.keys() {
        has_connection |= name == header::CONNECTION;
        has_date |= name == header::DATE;
    }
    let connection = if has_connection {
        http1::ConnectionOptions::of(&parts.headers)
    } else {
        http1::ConnectionOptions::default()
    };
    *close |= connection.close;
    let (length, framing) = if head_method || status == StatusCode::NOT_MODIFIED {
        // The length of the representation the GET would have sent.
        (stated_length(&parts.headers), Framing::None)
    } else if status.is_informational() || status == StatusCode::NO_CONTENT {
        (None, Framing::None)
    } else {
        match body.size_hint().exact() {
            Some(n) => (Some(n), Framing::Length),
            None => (None, Framing::Chunked),
        }
    };
    if matches!(framing, Framing::Chunked) {
        // Trailers are not sent (the client did not ask with `TE: trailers`),
        // so none is announced.
        parts.headers.remove(header::TRAILER);
    }
    let headers = &parts.headers;
    let head = heads.encode(|out| {
        if status == StatusCode::OK {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        } else {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(status.as_str().as_bytes());
            out.extend_from_slice(b" ");
            out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        http1::encode_fields(out, headers, length, matches!(framing, Framing::Chunked));
        if *close && !connection.present {
            out.extend_from_slice(b"connection: close\r\n");
        }
        if !has_date {
            out.extend_from_slice(b"date: ");
            date::with(|d| out.extend_from_slice(d));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    });
    (head, framing)
}

/// A single, valid `Content-Length`.
fn stated_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.parse().ok()
}

/// The `Date` field value (RFC 9110 §6.6.1), formatted once a second per thread.
mod date {
    use std::cell::RefCell;

    use super::SystemTime;

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    /// Calls `f` with the current date.
    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        CACHED.with_borrow_mut(|(at, text)| {
            if *at != secs {
                let formatted = httpdate::fmt_http_date(now);
                if formatted.len() == text.len() {
                    text.copy_from_slice(formatted.as_bytes());
                    *at = secs;
                }
            }
            f(&text[..]);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Option<(Request<ClientBody>, bool, usize)> {
        let mut buf = BytesMut::from(head);
        match parse(&mut buf, 8192) {
            Parse::Plain(req, close) => Some((req, close, buf.len())),
            _ => None,
        }
    }

    #[test]
    fn plain_heads_are_taken_and_leave_the_rest() {
        let (req, close, rest) =
            parsed("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nGET /next").unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()["host"], "x");
        assert_eq!(req.headers()["x-a"], "1");
        assert!(!close);
        assert_eq!(rest, "GET /next".len());
        let (_, close, _) = parsed("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(close);
    }

    #[test]
    fn anything_else_goes_to_hyper_untouched() {
        for head in [
            "POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nContent_Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\n Folded: x\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(head);
            assert!(
                matches!(parse(&mut buf, 8192), Parse::Other),
                "{head:?} was taken"
            );
            assert_eq!(&buf[..], head.as_bytes(), "{head:?} was consumed");
        }
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(200));
        assert!(matches!(
            parse(&mut BytesMut::from(&big[..]), 100),
            Parse::Other
        ));
        assert!(matches!(
            parse(&mut BytesMut::from("GET / HTTP/1.1\r\nHost"), 8192),
            Parse::Partial
        ));
        assert!(matches!(
            parse(&mut BytesMut::from(&big[..50]), 40),
            Parse::Other
        ));
    }

    #[test]
    fn a_head_is_parsed_only_once_its_end_may_be_there() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(head_may_end(head, 0));
        assert!(head_may_end(b"GET / HTTP/1.1\n\n", 0));
        assert!(!head_may_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        // An end that straddles the previous read and the new bytes.
        assert!(head_may_end(head, head.len() - 1));
        assert!(head_may_end(head, head.len() - 3));
        // Scanned already: only new bytes (and the three before) are looked at.
        assert!(!head_may_end(b"\r\n\r\nGET / HTTP/1.1\r\nHost", 10));
    }

    #[test]
    fn responses_state_their_framing() {
        let encode = |status: u16, body: ResponseBody, head: bool| {
            let mut resp = http::Response::new(());
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from_static("5"));
            let (mut parts, ()) = resp.into_parts();
            let mut close = false;
            let mut heads = http1::HeadBuf::default();
            let (bytes, framing) = encode_response(&mut heads, &mut parts, &body, head, &mut close);
            (String::from_utf8(bytes.to_vec()).unwrap(), framing)
        };
        let (text, framing) = encode(200, ResponseBody::full(Bytes::from_static(b"hi")), false);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-length: 2\r\n"), "{text}");
        assert!(!text.contains("content-length: 5"), "{text}");
        assert!(
            text.contains("date: ") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
        assert!(matches!(framing, Framing::Length));
        let (text, framing) = encode(200, ResponseBody::empty(), true);
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(matches!(framing, Framing::None));
        let (text, framing) = encode(204, ResponseBody::empty(), false);
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
        assert!(!text.contains("content-length"), "{text}");
        assert!(matches!(framing, Framing::None));
    }
}
