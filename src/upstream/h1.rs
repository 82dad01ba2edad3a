//! The HTTP/1.1 upstream client (RFC 9112). A connection is driven by the
//! task of the request that holds it: the request is written and the
//! response head read right there, and the response body is read from the
//! socket as the client takes it. There is no connection task and no channel
//! between tasks, which is what hyper's client spends a task hop and a
//! channel send on for every message.

use std::borrow::BorrowMut;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::http1;
use crate::proxy::body::{BoxError, RequestBody};
use crate::proxy::headers::{Added, list_elements};

/// Fields the gateway may add to a response (the request id, HSTS, rate
/// limit headers): room is made when the map is built.
const ADDED_DOWNSTREAM: usize = 4;
/// Largest response head (status line and header fields) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head or a trailer section.
const MAX_HEADERS: usize = 128;
/// Largest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most interim (1xx) responses skipped before the final one.
const MAX_INTERIM: usize = 16;
/// Reads ask for `READ_MIN` at first; a read that fills its space doubles
/// the next, up to `READ_MAX`, and one that fills less than a quarter halves
/// it: large bodies move in large reads, small answers after a large one do
/// not keep getting large buffers. (64 KiB reads moved 1 MiB bodies as fast
/// as hyper's reads of up to 400 KiB, with half the memory.)
const READ_MIN: usize = 8 * 1024;
const READ_MAX: usize = 64 * 1024;

/// A connection's transport: plain TCP or TLS.
pub enum Io {
    /// Cleartext.
    Plain(TcpStream),
    /// TLS (boxed: a TLS session is large).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection failed or closed before any byte of a response came.
    #[error("connection closed before a response: {0}")]
    Closed(#[source] io::Error),
    /// The connection failed after the response had begun.
    #[error("connection failed mid-response: {0}")]
    Io(#[source] io::Error),
    /// The request body (the client's side) failed.
    #[error("request body: {0}")]
    Body(#[source] BoxError),
    /// The upstream broke HTTP/1.1.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// No response head within the request timeout.
    #[error("no response within the request timeout")]
    TimedOut,
}

/// One HTTP/1.1 connection to an upstream.
pub struct Conn {
    io: Io,
    /// Bytes read and not consumed yet.
    buf: BytesMut,
    read_size: usize,
    /// False once anything makes the framing of a next message doubtful.
    reusable: bool,
    /// When a response head is due.
    due: http1::Deadline,
    /// Room for request heads.
    heads: http1::HeadBuf,
}

impl Conn {
    /// A connection over `io`, with nothing exchanged yet.
    pub fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            read_size: READ_MIN,
            reusable: true,
            due: http1::Deadline::default(),
            heads: http1::HeadBuf::default(),
        }
    }

    /// Whether the connection can carry another exchange once this one ends.
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    /// Whether this idle connection is unusable: closed by the upstream, or
    /// sent something nobody asked for. Looks without waiting.
    pub fn is_closed(&mut self) -> bool {
        if !self.reusable || !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        // A TLS record that carries no data (a session ticket) is consumed
        // here and leaves the connection open.
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Sends a request and waits for its response head, due by `until`.
    /// The body is read from this connection with the returned [`Decoder`];
    /// the request body goes on being written as the response body is read.
    pub async fn send(
        &mut self,
        head: &http::request::Parts,
        added: &Added<'_>,
        body: RequestBody,
        until: Instant,
    ) -> Result<(http::response::Parts, Decoder), Error> {
        let mut writer = Some(request_writer(&mut self.heads, head, added, body));
        let mut interim = 0;
        let mut received = false;
        let (parts, state) = std::future::poll_fn(|cx| {
            let polled = self.poll_head(cx, &head.method, &mut writer, &mut interim, &mut received);
            if polled.is_pending() && self.due.poll_passed(until, cx) {
                return Poll::Ready(Err(Error::TimedOut));
            }
            polled
        })
        .await?;
        if writer.is_some() && (parts.status.is_client_error() || parts.status.is_server_error()) {
            // An error answered before the body was sent: the upstream wants
            // no more of it (RFC 9112 §9.5).
            writer = None;
            self.reusable = false;
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS && writer.is_some() {
            return Err(Error::Invalid("101 before the request was sent"));
        }
        Ok((
            parts,
            Decoder {
                state,
                writer: writer.map(Box::new),
                failed: None,
            },
        ))
    }

    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        writer: &mut Option<Writer>,
        interim: &mut usize,
        received: &mut bool,
    ) -> Poll<Result<(http::response::Parts, State), Error>> {
        loop {
            self.poll_request(writer, cx)?;
            while !self.buf.is_empty() {
                match self.parse_head(method)? {
                    Head::Final(parts, state) => return Poll::Ready(Ok((parts, state))),
                    Head::Interim => {
                        *interim += 1;
                        if *interim > MAX_INTERIM {
                            return Poll::Ready(Err(Error::Invalid("too many 1xx responses")));
                        }
                    }
                    Head::Partial => break,
                }
            }
            let failed = match ready!(self.poll_fill(cx)) {
                Ok(0) => io::ErrorKind::UnexpectedEof.into(),
                Ok(_) => {
                    *received = true;
                    continue;
                }
                Err(e) => e,
            };
            return Poll::Ready(Err(if *received {
                Error::Io(failed)
            } else {
                Error::Closed(failed)
            }));
        }
    }

    /// Writes what it can of a request still being sent. A write that fails
    /// (the upstream closed its side) stops the request but not the reading:
    /// the response may already be in the socket. Only a failure of the
    /// client's body is an error.
    fn poll_request<W: BorrowMut<Writer>>(
        &mut self,
        writer: &mut Option<W>,
        cx: &mut Context<'_>,
    ) -> Result<(), Error> {
        let Some(w) = writer else {
            return Ok(());
        };
        let result = match w.borrow_mut().poll(&mut self.io, cx) {
            Poll::Pending => return Ok(()),
            Poll::Ready(Ok(())) => Ok(()),
            Poll::Ready(Err(http1::WriteError::Io(_))) => {
                self.reusable = false;
                Ok(())
            }
            Poll::Ready(Err(http1::WriteError::Body(e))) => {
                self.reusable = false;
                Err(Error::Body(e))
            }
        };
        *writer = None;
        result
    }

    /// Parses a response head from the buffer.
    fn parse_head(&mut self, method: &Method) -> Result<Head, Error> {
        // Left uninitialized: httparse writes the fields it finds, and
        // filling the whole array first would cost more than the parse.
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &self.buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => {
                return Err(Error::Invalid("response head over 64 KiB"));
            }
            Ok(httparse::Status::Partial) if self.buf.len() >= MAX_HEAD => {
                return Err(Error::Invalid("response head over 64 KiB"));
            }
            Ok(httparse::Status::Partial) => return Ok(Head::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("too many header fields"));
            }
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let status = resp
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(Error::Invalid("malformed status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 and 103 mean nothing to a client of the gateway.
            self.buf.advance(len);
            return Ok(Head::Interim);
        }
        let version = if resp.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each field lies in the head, so that values can share its
        // bytes instead of being copied.
        let mut spans = http1::Spans::new();
        http1::spans(&self.buf, resp.headers, &mut spans);
        let bytes = self.buf.split_to(len).freeze();
        let (mut headers, notable) =
            http1::header_map(&bytes, &spans, ADDED_DOWNSTREAM).map_err(Error::Invalid)?;

        let state = self.framing(method, status, version, &mut headers, notable)?;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        Ok(Head::Final(parts, state))
    }

    /// How the response body is delimited (RFC 9112 §6.3), and whether the
    /// connection can carry another exchange after it.
    fn framing(
        &mut self,
        method: &Method,
        status: StatusCode,
        version: Version,
        headers: &mut HeaderMap,
        notable: http1::Notable,
    ) -> Result<State, Error> {
        let connection = if notable.connection {
            http1::ConnectionOptions::of(headers)
        } else {
            http1::ConnectionOptions::default()
        };
        if connection.close || (version == Version::HTTP_10 && !connection.keep_alive) {
            self.reusable = false;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS {
            self.reusable = false;
            return Ok(State::Done);
        }
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(State::Length(0));
        }
        if notable.transfer_encoding {
            // Transfer-Encoding overrides Content-Length, which must not be
            // passed on; a message that has both, or an HTTP/1.0 one that has
            // Transfer-Encoding (RFC 9112 §6.1), is suspect: no reuse.
            if headers.remove(header::CONTENT_LENGTH).is_some() || version == Version::HTTP_10 {
                self.reusable = false;
            }
            if chunked_last(headers) {
                return Ok(State::Chunked(Chunk::Size));
            }
            self.reusable = false;
            return Ok(State::Close);
        }
        match content_length(headers)? {
            (Some(n), several) => {
                if several {
                    // One value downstream: a list of equal ones is valid
                    // here but not understood by every client.
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                }
                Ok(State::Length(n))
            }
            (None, _) => {
                self.reusable = false;
                Ok(State::Close)
            }
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_MIN {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(READ_MAX);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_MIN);
        }
        Poll::Ready(Ok(n))
    }
}

/// A 101's connection is a tunnel: the bytes read past the head come first.
impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.buf.len().min(buf.remaining());
        buf.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// What the read buffer holds of a response head.
enum Head {
    /// Not all of it yet.
    Partial,
    /// An interim (1xx) response, now consumed.
    Interim,
    Final(http::response::Parts, State),
}

/// Whether `chunked` is the final transfer coding.
fn chunked_last(headers: &HeaderMap) -> bool {
    list_elements(headers, header::TRANSFER_ENCODING)
        .filter(|t| !t.is_empty())
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// The body length that `Content-Length` states: every value (on one line
/// or several) must be the same run of digits (RFC 9110 §8.6); and whether
/// it was stated more than once.
fn content_length(headers: &HeaderMap) -> Result<(Option<u64>, bool), Error> {
    let mut length = None;
    let mut several = false;
    for t in list_elements(headers, header::CONTENT_LENGTH) {
        let n = (!t.is_empty() && t.len() <= 19 && t.iter().all(u8::is_ascii_digit))
            .then(|| t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
            .ok_or(Error::Invalid("malformed Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(Error::Invalid("conflicting Content-Length values"));
        }
        several |= length.is_some();
        length = Some(n);
    }
    Ok((length, several))
}

/// What is left of a response body.
#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
    Done,
}

/// Where a chunked body's decoding is.
#[derive(Debug)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// Reads a response body from the connection that carried its head (the
/// connection stays in the request's lease), and finishes writing the
/// request body if the upstream answered before it was all sent.
pub struct Decoder {
    state: State,
    /// Boxed: needed only when the upstream answers before the whole
    /// request is out.
    writer: Option<Box<Writer>>,
    /// A failure held back for one turn (see `poll_frame`).
    failed: Option<Error>,
}

impl Decoder {
    /// The next frame of the body, read from `conn`.
    pub fn poll_frame(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Err(e) = conn.poll_request(&mut self.writer, cx) {
            return Poll::Ready(Some(Err(e)));
        }
        let frame = ready!(self.poll_body(conn, cx));
        match frame {
            None if self.writer.is_some() => {
                // The response is complete, the request not yet (the writer
                // is pending, its wake-up registered above): the upstream
                // answered early and still reads the body, so it goes on
                // until it is all sent, the response's idle timeout bounding
                // a stall. Only the end of the response waits for that.
                return Poll::Pending;
            }
            Some(Err(e)) => {
                // The server writes out what it has when this body is
                // pending; failing now would lose the part of the response
                // that did arrive.
                conn.reusable = false;
                self.failed = Some(e);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            _ => {}
        }
        Poll::Ready(frame)
    }

    /// Whether the request body is still being sent.
    pub fn sending(&self) -> bool {
        self.writer.is_some()
    }

    /// Sends the rest of the request body; ready with whether all of it
    /// went out.
    pub fn poll_send(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<bool> {
        if conn.poll_request(&mut self.writer, cx).is_err() {
            return Poll::Ready(false);
        }
        if self.writer.is_some() {
            return Poll::Pending;
        }
        Poll::Ready(conn.reusable)
    }

    fn poll_body(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let fill = match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    if !conn.buf.is_empty() {
                        // More than the stated length: not a next response.
                        conn.reusable = false;
                    }
                    self.state = State::Done;
                    continue;
                }
                State::Length(left) | State::Chunked(Chunk::Data(left)) => {
                    if !conn.buf.is_empty() {
                        let n = conn
                            .buf
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0
                            && let State::Chunked(c) = &mut self.state
                        {
                            *c = Chunk::DataEnd;
                        }
                        return data(conn.buf.split_to(n).freeze());
                    }
                    true
                }
                State::Close => {
                    if !conn.buf.is_empty() {
                        return data(conn.buf.split().freeze());
                    }
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => self.state = State::Done,
                        Ok(_) => {}
                        Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
                    }
                    false
                }
                State::Chunked(chunk) => match chunk_step(chunk, &mut conn.buf) {
                    Err(e) => return Poll::Ready(Some(Err(e))),
                    Ok(Step::More) => true,
                    Ok(Step::Again) => false,
                    Ok(Step::Trailers(t)) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Step::End) => {
                        self.state = State::Done;
                        false
                    }
                },
            };
            if fill {
                match ready!(conn.poll_fill(cx)) {
                    Ok(0) => {
                        conn.reusable = false;
                        return Poll::Ready(Some(Err(Error::Invalid(
                            "connection closed before the end of the body",
                        ))));
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
                }
            }
        }
    }

    /// Whether the body has ended and nothing is left to write.
    pub fn is_end_stream(&self) -> bool {
        self.writer.is_none() && matches!(self.state, State::Done | State::Length(0))
    }

    /// The body's length when the upstream stated it.
    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn data(bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    Poll::Ready(Some(Ok(Frame::data(bytes))))
}

/// What one step of chunked decoding needs next.
enum Step {
    /// More bytes.
    More,
    /// Another step over the buffer.
    Again,
    Trailers(HeaderMap),
    End,
}

/// Decodes what the buffer holds of a chunk-size line, a chunk's CRLF or
/// the trailer section (RFC 9112 §7.1); data is taken by the caller.
fn chunk_step(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Step, Error> {
    match chunk {
        Chunk::Size => {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                return if buf.len() > MAX_CHUNK_LINE {
                    Err(Error::Invalid("chunk-size line too long"))
                } else {
                    Ok(Step::More)
                };
            };
            if end > MAX_CHUNK_LINE {
                return Err(Error::Invalid("chunk-size line too long"));
            }
            let size = chunk_size(&buf[..end])?;
            buf.advance(end + 1);
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(Step::Again)
        }
        Chunk::Data(_) => Ok(Step::More),
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(Error::Invalid("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(Step::Again)
        }
        Chunk::Trailers => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Step::End);
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return if buf.len() > MAX_TRAILERS {
                    Err(Error::Invalid("trailer section too large"))
                } else {
                    Ok(Step::More)
                };
            };
            if end + 4 > MAX_TRAILERS {
                return Err(Error::Invalid("trailer section too large"));
            }
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let section = &buf[..end + 4];
            let Ok(httparse::Status::Complete((_, fields))) =
                httparse::parse_headers(section, &mut fields)
            else {
                return Err(Error::Invalid("malformed trailer section"));
            };
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for f in fields.iter() {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| Error::Invalid("malformed trailer field name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| Error::Invalid("malformed trailer field value"))?;
                trailers.append(name, value);
            }
            buf.advance(end + 4);
            Ok(Step::Trailers(trailers))
        }
    }
}

/// The size on a chunk-size line (without its LF): hex digits, then
/// optional extensions, then CR.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let invalid = Error::Invalid("malformed chunk-size line");
    let line = line.strip_suffix(b"\r").ok_or(invalid)?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(Error::Invalid("malformed chunk-size line"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';')
        || rest.iter().any(|&b| b.is_ascii_control() && b != b'\t')
    {
        return Err(Error::Invalid("malformed chunk extension"));
    }
    line[..digits].iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16).map(u64::from);
        v.and_then(|v| n.checked_mul(16)?.checked_add(v))
            .ok_or(Error::Invalid("malformed chunk-size line"))
    })
}

/// The request on its way out.
type Writer = http1::Writer<RequestBody>;

/// A writer for `head` and `body`, with the framing this client chooses.
fn request_writer(
    heads: &mut http1::HeadBuf,
    head: &http::request::Parts,
    added: &Added<'_>,
    body: RequestBody,
) -> Writer {
    let length = if body.is_end_stream() {
        // A method that defines a body says it has none (RFC 9110 §8.6).
        (matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
            || head.headers.contains_key(header::CONTENT_LENGTH))
        .then_some(0)
    } else {
        body.size_hint().exact()
    };
    let chunked = length.is_none() && !body.is_end_stream();
    let body = (!body.is_end_stream()).then_some(body);
    Writer::new(
        encode_head(heads, head, added, length, chunked),
        body,
        chunked,
        true,
    )
}

/// The request line and header fields, with the framing this client
/// chose: `length`, or chunked.
fn encode_head(
    heads: &mut http1::HeadBuf,
    head: &http::request::Parts,
    added: &Added<'_>,
    length: Option<u64>,
    chunked: bool,
) -> Bytes {
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    heads.encode(|out| {
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.extend_from_slice(b" ");
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        http1::encode_fields(out, &head.headers, length, chunked);
        for (name, value) in added.iter() {
            http1::encode_field(out, name, value);
        }
        out.extend_from_slice(b"\r\n");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a\r").ok(), Some(26));
        assert_eq!(chunk_size(b"0\r").ok(), Some(0));
        assert_eq!(chunk_size(b"5;name=value\r").ok(), Some(5));
        assert_eq!(chunk_size(b"5 ; a\r").ok(), Some(5));
        for bad in [
            &b"\r"[..],
            b"zz\r",
            b"5",
            b"5x\r",
            b"-5\r",
            b"11111111111111111\r",
            b"5;a\x00\r",
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn content_lengths() {
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            content_length(&h).ok()
        };
        assert_eq!(with(&[]), Some((None, false)));
        assert_eq!(with(&["42"]), Some((Some(42), false)));
        assert_eq!(with(&["5, 5"]), Some((Some(5), true)));
        assert_eq!(with(&["5", "5"]), Some((Some(5), true)));
        assert_eq!(with(&["5, 6"]), None);
        assert_eq!(with(&["5", "6"]), None);
        assert_eq!(with(&["-1"]), None);
        assert_eq!(with(&["+1"]), None);
        assert_eq!(with(&["abc"]), None);
        assert_eq!(with(&[""]), None);
        assert_eq!(with(&["99999999999999999999"]), None);
    }

    #[test]
    fn final_coding() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            chunked_last(&h)
        };
        assert!(with("chunked"));
        assert!(with("gzip, Chunked"));
        assert!(!with("chunked, gzip"));
        assert!(!with("gzip"));
    }
}
