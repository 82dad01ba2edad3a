//! A read-side guard for HTTP/1.x connections: it follows the message framing
//! of the bytes hyper reads and flags request heads that hyper would repair
//! rather than refuse, so the pipeline can answer them with an error instead
//! of forwarding them.
//!
//! hyper, as RFC 9112 §6.3 allows, drops `Content-Length` when
//! `Transfer-Encoding` is also present and forwards the message as chunked.
//! A gateway must refuse it: the two fields together are the classic
//! request-smuggling vector. hyper also accepts, and the guard refuses, a
//! `Content-Length` given twice with the same value, a `Transfer-Encoding`
//! that lists codings before `chunked` (`gzip, chunked`, `chunked, chunked`)
//! or is split over several lines, and `Content_Length` / `Transfer_Encoding`
//! spelled with an underscore (which some servers read as the real field).
//! Everything else that makes framing ambiguous (obs-fold, space before the
//! colon, NUL, bare CR and other control bytes, invalid name characters, a
//! final coding other than `chunked`, `Transfer-Encoding` in HTTP/1.0, a
//! malformed chunk) hyper refuses on its own; the guard only keeps following
//! the framing there. The guard also measures each head exactly, since hyper
//! cannot enforce a head limit below its 8 KiB read buffer.
//!
//! The scanner is a byte state machine: no buffering, no allocation. It stops
//! scanning (passes bytes through) on HTTP/2, on upgrades and on CONNECT.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the guard found wrong with a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// Content-Length with Transfer-Encoding, or Content-Length given twice
    /// (even with equal values: RFC 9112 §6.3 lets a recipient merge them,
    /// but a gateway cannot know that every server behind it does the same).
    AmbiguousLength,
    /// The head is larger than the configured limit.
    HeadTooLarge,
    /// A Content-Length that is not one decimal number.
    InvalidLength,
    /// A Transfer-Encoding other than exactly one `chunked` on one line.
    BadTransferEncoding,
    /// `Content_Length` or `Transfer_Encoding`: a look-alike of a framing
    /// field that servers mapping `_` to `-` (CGI-style) would obey.
    LookalikeFraming,
}

impl Flaw {
    const ALL: [Flaw; 5] = [
        Flaw::AmbiguousLength,
        Flaw::HeadTooLarge,
        Flaw::InvalidLength,
        Flaw::BadTransferEncoding,
        Flaw::LookalikeFraming,
    ];

    /// Why the head is refused, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            Flaw::AmbiguousLength => {
                "ambiguous length: Content-Length with Transfer-Encoding, or given twice"
            }
            Flaw::HeadTooLarge => "request head larger than limits.max_header_bytes",
            Flaw::InvalidLength => "Content-Length is not a decimal number",
            Flaw::BadTransferEncoding => {
                "Transfer-Encoding must be exactly one `chunked` (no other coding, no repeat)"
            }
            Flaw::LookalikeFraming => "Content_Length or Transfer_Encoding field name",
        }
    }
}

const NONE: u64 = u64::MAX;
/// Bits of a verdict code that hold the flaw (its position in [`Flaw::ALL`]).
const FLAW_BITS: u32 = 3;

/// Shared between a connection's stream and its requests.
#[derive(Debug)]
pub struct Verdicts {
    /// `index << FLAW_BITS | flaw` of the first flawed head, or `NONE`.
    first: AtomicU64,
    /// Requests handed to the service so far.
    served: AtomicU64,
}

impl Verdicts {
    fn new() -> Self {
        Self {
            first: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
        }
    }

    fn flag(&self, index: u64, flaw: Flaw) {
        let code = index << FLAW_BITS | flaw as u64;
        let _ = self
            .first
            .compare_exchange(NONE, code, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Called once per request, in order: the flaw of this request's head, if any.
    /// hyper serves HTTP/1.x requests strictly in order, so the n-th call is
    /// the n-th head.
    pub fn next_request(&self) -> Option<Flaw> {
        let index = self.served.fetch_add(1, Ordering::Relaxed);
        let first = self.first.load(Ordering::Relaxed);
        if first == NONE || first >> FLAW_BITS != index {
            return None;
        }
        let flaw = first & ((1 << FLAW_BITS) - 1);
        Flaw::ALL.get(flaw as usize).copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    ContentLength,
    TransferEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Between messages (leading empty lines are skipped).
    Idle,
    RequestLine,
    LineStart,
    Name,
    Value(Field),
    HeadEnd,
    Fixed(u64),
    ChunkSize,
    ChunkExt,
    ChunkData(u64),
    ChunkDataEnd,
    TrailerStart,
    TrailerLine,
    TrailerEnd,
    /// Not HTTP/1.x framing any more (HTTP/2, upgrade, CONNECT, or confusion).
    Pass,
}

/// The framing scanner.
#[derive(Debug)]
struct Scanner {
    st: St,
    heads: u64,
    head_bytes: u64,
    max_head: u64,
    start: [u8; 8],
    start_len: u8,
    name: [u8; 17],
    name_len: u8,
    cl: Option<u64>,
    cl_lines: u8,
    /// Where the current Content-Length value is ([`Num`]).
    cl_at: Num,
    /// A Content-Length value of this head was not a number.
    cl_bad: bool,
    te_lines: u8,
    /// How much of `chunked` the current Transfer-Encoding value matched:
    /// 0..=7 bytes, [`TE_AFTER`] (trailing whitespace) or [`TE_BAD`].
    te_at: u8,
    te_bad: bool,
    lookalike: bool,
    upgrade: bool,
    size: u64,
}

/// Progress through a Content-Length value: `OWS 1*DIGIT OWS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Before,
    Digits,
    After,
    Bad,
}

const CHUNKED: &[u8; 7] = b"chunked";
const TE_AFTER: u8 = 8;
const TE_BAD: u8 = 9;

/// Whitespace around a field value. CR is counted too: it only ever reaches
/// here right before LF, since hyper refuses a bare CR in a head.
fn ows(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

impl Scanner {
    fn new(max_head: u64) -> Self {
        Self {
            st: St::Idle,
            heads: 0,
            head_bytes: 0,
            max_head,
            start: [0; 8],
            start_len: 0,
            name: [0; 17],
            name_len: 0,
            cl: None,
            cl_lines: 0,
            cl_at: Num::Before,
            cl_bad: false,
            te_lines: 0,
            te_at: 0,
            te_bad: false,
            lookalike: false,
            upgrade: false,
            size: 0,
        }
    }

    fn scan(&mut self, mut bytes: &[u8], verdicts: &Verdicts) {
        while !bytes.is_empty() {
            match self.st {
                St::Pass => return,
                St::Fixed(n) => {
                    let left = skip(&mut bytes, n);
                    self.st = if left == 0 { St::Idle } else { St::Fixed(left) };
                }
                St::ChunkData(n) => {
                    let left = skip(&mut bytes, n);
                    self.st = if left == 0 {
                        St::ChunkDataEnd
                    } else {
                        St::ChunkData(left)
                    };
                }
                St::LineStart if !matches!(bytes[0], b'\r' | b'\n') => {
                    // A whole header name in this read: classify it at once.
                    match memchr::memchr2(b':', b'\n', bytes) {
                        Some(i) if bytes[i] == b':' => {
                            self.head_bytes += i as u64 + 1;
                            self.st = St::Value(self.classify(&bytes[..i]));
                            bytes = &bytes[i + 1..];
                        }
                        _ => {
                            self.step(bytes[0], verdicts);
                            bytes = &bytes[1..];
                        }
                    }
                }
                st if self.skips_to_newline(st) => {
                    // Nothing before the end of this line matters: jump to it.
                    let n = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
                    if Self::in_head(st) {
                        self.head_bytes += n as u64;
                    }
                    bytes = &bytes[n..];
                    if let Some((&b, rest)) = bytes.split_first() {
                        self.step(b, verdicts);
                        bytes = rest;
                    }
                }
                _ => {
                    self.step(bytes[0], verdicts);
                    bytes = &bytes[1..];
                }
            }
        }
    }

    /// States in which every byte up to the next `\n` is skipped.
    fn skips_to_newline(&self, st: St) -> bool {
        match st {
            St::RequestLine => usize::from(self.start_len) == self.start.len(),
            St::Value(Field::Other) | St::TrailerLine | St::ChunkExt | St::ChunkDataEnd => true,
            St::Value(Field::TransferEncoding) => self.te_at == TE_BAD,
            _ => false,
        }
    }

    /// States that read the request head (counted against the head limit).
    fn in_head(st: St) -> bool {
        matches!(
            st,
            St::RequestLine | St::LineStart | St::Name | St::Value(_) | St::HeadEnd
        )
    }

    fn step(&mut self, b: u8, verdicts: &Verdicts) {
        if Self::in_head(self.st) {
            self.head_bytes += 1;
        }
        self.st = match self.st {
            St::Idle if b == b'\r' || b == b'\n' => St::Idle,
            St::Idle => {
                self.heads += 1;
                self.head_bytes = 1;
                self.start = [0; 8];
                self.start[0] = b;
                self.start_len = 1;
                self.cl = None;
                self.cl_lines = 0;
                self.cl_bad = false;
                self.te_lines = 0;
                self.te_bad = false;
                self.lookalike = false;
                self.upgrade = false;
                St::RequestLine
            }
            St::RequestLine => {
                if usize::from(self.start_len) < self.start.len() {
                    self.start[usize::from(self.start_len)] = b;
                    self.start_len += 1;
                    // hyper-util switches to HTTP/2 only on the preface, and only
                    // at the start of the connection.
                    if self.heads == 1 && self.start == *b"PRI * HT" {
                        return self.st = St::Pass;
                    }
                }
                if b == b'\n' {
                    St::LineStart
                } else {
                    St::RequestLine
                }
            }
            St::LineStart => match b {
                b'\r' => St::HeadEnd,
                b'\n' => self.end_head(verdicts),
                _ => {
                    self.name_len = 0;
                    self.push_name(b);
                    St::Name
                }
            },
            St::Name => match b {
                b':' => St::Value(self.field()),
                b'\n' => St::LineStart,
                _ => {
                    self.push_name(b);
                    St::Name
                }
            },
            St::Value(field) => {
                match field {
                    Field::ContentLength => self.length_byte(b),
                    Field::TransferEncoding => self.coding_byte(b),
                    Field::Other => {}
                }
                if b == b'\n' {
                    St::LineStart
                } else {
                    St::Value(field)
                }
            }
            St::HeadEnd => self.end_head(verdicts),
            St::ChunkSize => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    match self.size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                        Some(s) => {
                            self.size = s;
                            St::ChunkSize
                        }
                        None => St::Pass,
                    }
                }
                b'\n' => self.chunk_start(),
                _ => St::ChunkExt,
            },
            St::ChunkExt => {
                if b == b'\n' {
                    self.chunk_start()
                } else {
                    St::ChunkExt
                }
            }
            St::ChunkDataEnd => {
                if b == b'\n' {
                    self.size = 0;
                    St::ChunkSize
                } else {
                    St::ChunkDataEnd
                }
            }
            St::TrailerStart => match b {
                b'\r' => St::TrailerEnd,
                b'\n' => St::Idle,
                _ => St::TrailerLine,
            },
            St::TrailerLine => {
                if b == b'\n' {
                    St::TrailerStart
                } else {
                    St::TrailerLine
                }
            }
            St::TrailerEnd => St::Idle,
            St::Fixed(_) | St::ChunkData(_) | St::Pass => self.st,
        };
    }

    fn push_name(&mut self, b: u8) {
        if let Some(slot) = self.name.get_mut(usize::from(self.name_len)) {
            *slot = b.to_ascii_lowercase();
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    fn field(&mut self) -> Field {
        let len = usize::from(self.name_len);
        if len > self.name.len() {
            return Field::Other;
        }
        let name = self.name;
        self.classify(&name[..len])
    }

    /// The field a header name announces (any case).
    fn classify(&mut self, name: &[u8]) -> Field {
        if name.eq_ignore_ascii_case(b"content-length") {
            self.cl_lines = self.cl_lines.saturating_add(1);
            self.cl_at = Num::Before;
            Field::ContentLength
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te_lines = self.te_lines.saturating_add(1);
            self.te_at = 0;
            Field::TransferEncoding
        } else {
            if name.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if name.eq_ignore_ascii_case(b"content_length")
                || name.eq_ignore_ascii_case(b"transfer_encoding")
            {
                self.lookalike = true;
            }
            Field::Other
        }
    }

    /// One byte of a Content-Length value (`\n` ends it): `OWS 1*DIGIT OWS`,
    /// no sign, no list, no overflow (hyper refuses those too; the guard must
    /// not frame the body differently from hyper before it does).
    fn length_byte(&mut self, b: u8) {
        self.cl_at = match (self.cl_at, b) {
            (Num::Before | Num::Digits, b'0'..=b'9') => {
                let v = self.cl.unwrap_or(0);
                match v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                {
                    Some(v) => {
                        self.cl = Some(v);
                        Num::Digits
                    }
                    None => Num::Bad,
                }
            }
            (Num::Before, b'\n') => Num::Bad,
            (at, b'\n') => at,
            (Num::Before, _) if ows(b) => Num::Before,
            (Num::Digits | Num::After, _) if ows(b) => Num::After,
            _ => Num::Bad,
        };
        if self.cl_at == Num::Bad {
            self.cl_bad = true;
        }
    }

    /// One byte of a Transfer-Encoding value (`\n` ends it): it must be
    /// `OWS chunked OWS`, in any case. hyper only checks the last coding and
    /// would take `gzip, chunked` or `chunked, chunked` as plain chunked,
    /// silently changing what the upstream gets.
    fn coding_byte(&mut self, b: u8) {
        self.te_at = match self.te_at {
            _ if b == b'\n' => {
                if self.te_at < 7 || self.te_at == TE_BAD {
                    self.te_bad = true;
                }
                self.te_at
            }
            0 if ows(b) => 0,
            at @ 0..7 if CHUNKED.get(usize::from(at)) == Some(&b.to_ascii_lowercase()) => at + 1,
            7 | TE_AFTER if ows(b) => TE_AFTER,
            _ => TE_BAD,
        };
    }

    fn end_head(&mut self, verdicts: &Verdicts) -> St {
        let index = self.heads - 1;
        if self.head_bytes > self.max_head {
            verdicts.flag(index, Flaw::HeadTooLarge);
        }
        // Both framings, or the length given twice (hyper would merge equal
        // values; a second length is refused, as NGINX does).
        if (self.te_lines > 0 && self.cl_lines > 0) || self.cl_lines > 1 {
            verdicts.flag(index, Flaw::AmbiguousLength);
        }
        if self.cl_bad {
            verdicts.flag(index, Flaw::InvalidLength);
        }
        if self.te_bad || self.te_lines > 1 {
            verdicts.flag(index, Flaw::BadTransferEncoding);
        }
        if self.lookalike {
            verdicts.flag(index, Flaw::LookalikeFraming);
        }
        if self.upgrade || self.start.starts_with(b"CONNECT ") {
            return St::Pass;
        }
        self.size = 0;
        match (self.te_lines > 0, self.cl) {
            (true, _) => St::ChunkSize,
            (false, Some(n)) if n > 0 => St::Fixed(n),
            _ => St::Idle,
        }
    }

    fn chunk_start(&mut self) -> St {
        if self.size == 0 {
            St::TrailerStart
        } else {
            St::ChunkData(self.size)
        }
    }
}

/// Consumes up to `n` body bytes from `bytes`; returns how many are still due.
fn skip(bytes: &mut &[u8], n: u64) -> u64 {
    let take = n.min(bytes.len() as u64);
    *bytes = &bytes[take as usize..];
    n - take
}

/// A client stream whose reads are scanned by the guard.
pub struct Guarded<S> {
    inner: S,
    /// Bytes read from `inner` before the guard took over, read first.
    prefix: Bytes,
    scanner: Scanner,
    verdicts: Arc<Verdicts>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`, whose next bytes are `prefix` (read already, at the
    /// start of a request head); heads larger than `max_head` bytes are flagged.
    pub fn new(inner: S, prefix: Bytes, max_head: u64) -> (Self, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts::new());
        (
            Self {
                inner,
                prefix,
                scanner: Scanner::new(max_head),
                verdicts: verdicts.clone(),
            },
            verdicts,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = if this.prefix.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
        if res.is_ready() && this.scanner.st != St::Pass {
            this.scanner.scan(&buf.filled()[before..], &this.verdicts);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(input: &[u8], split: usize, max_head: u64) -> Vec<Option<Flaw>> {
        let v = Verdicts::new();
        let mut s = Scanner::new(max_head);
        for chunk in input.chunks(split) {
            s.scan(chunk, &v);
        }
        (0..s.heads).map(|_| v.next_request()).collect()
    }

    #[test]
    fn follows_keep_alive_framing() {
        let input = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nPOST /d HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for split in [1, 3, 7, input.len()] {
            let got = scan_all(input, split, 1 << 20);
            assert_eq!(
                got,
                [None, None, None, Some(Flaw::AmbiguousLength)],
                "split {split}"
            );
        }
    }

    #[test]
    fn body_bytes_are_not_taken_for_headers() {
        let body = b"\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        assert_eq!(scan_all(&input, 5, 1 << 20), [None, None]);
    }

    #[test]
    fn head_size_is_measured() {
        let input =
            b"GET / HTTP/1.1\r\nX-Big: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        assert_eq!(scan_all(input, 4, 32), [Some(Flaw::HeadTooLarge)]);
        assert_eq!(scan_all(input, 4, 1024), [None]);
    }

    #[test]
    fn a_repeated_length_is_flagged_and_pri_later_is_http1() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc";
        assert_eq!(scan_all(input, 5, 1024), [Some(Flaw::AmbiguousLength)]);
        let v = Verdicts::new();
        let mut s = Scanner::new(1024);
        s.scan(b"GET / HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\n", &v);
        assert_ne!(
            s.st,
            St::Pass,
            "only the connection's first bytes can switch to HTTP/2"
        );
    }

    /// One head with `headers`, scanned whole and byte by byte.
    fn verdict(headers: &str) -> Option<Flaw> {
        let input = format!("POST /x HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
        let whole = scan_all(input.as_bytes(), input.len(), 1 << 20);
        let bytewise = scan_all(input.as_bytes(), 1, 1 << 20);
        assert_eq!(whole, bytewise, "{headers:?}");
        whole.first().copied().flatten()
    }

    #[test]
    fn transfer_encoding_must_be_one_chunked() {
        for ok in [
            "Transfer-Encoding: chunked\r\n",
            "transfer-encoding:CHUNKED\r\n",
            "Transfer-Encoding: \t chunked \t\r\n",
            "Transfer-Encoding: chunked\n",
        ] {
            assert_eq!(verdict(ok), None, "{ok:?}");
        }
        for bad in [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: , chunked\r\n",
            "Transfer-Encoding: chunked,\r\n",
            "Transfer-Encoding: identity\r\n",
            "Transfer-Encoding: chunk\r\n",
            "Transfer-Encoding: chunkedx\r\n",
            "Transfer-Encoding: \"chunked\"\r\n",
            "Transfer-Encoding:\r\n",
            "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        ] {
            assert_eq!(verdict(bad), Some(Flaw::BadTransferEncoding), "{bad:?}");
        }
    }

    #[test]
    fn content_length_must_be_one_number() {
        assert_eq!(verdict("Content-Length: 0\r\n"), None);
        assert_eq!(verdict("Content-Length:  0 \r\n"), None);
        for bad in [
            "Content-Length: +0\r\n",
            "Content-Length: -0\r\n",
            "Content-Length: 0x0\r\n",
            "Content-Length: 0 0\r\n",
            "Content-Length: 0, 0\r\n",
            "Content-Length:\r\n",
            "Content-Length: 99999999999999999999999\r\n",
        ] {
            assert_eq!(verdict(bad), Some(Flaw::InvalidLength), "{bad:?}");
        }
        for bad in [
            "Content-Length: 0\r\nContent-Length: 0\r\n",
            "Content-Length: 0\r\nContent-Length: 1\r\n",
            "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: x\r\n",
        ] {
            assert_eq!(verdict(bad), Some(Flaw::AmbiguousLength), "{bad:?}");
        }
    }

    #[test]
    fn lookalike_framing_names_are_flagged() {
        assert_eq!(
            verdict("Transfer_Encoding: chunked\r\n"),
            Some(Flaw::LookalikeFraming)
        );
        assert_eq!(
            verdict("content_length: 0\r\n"),
            Some(Flaw::LookalikeFraming)
        );
        assert_eq!(verdict("X-Content_Length: 0\r\n"), None);
    }

    #[test]
    fn every_flaw_survives_its_code() {
        for (i, flaw) in Flaw::ALL.into_iter().enumerate() {
            let v = Verdicts::new();
            v.flag(i as u64, flaw);
            for _ in 0..i {
                assert_eq!(v.next_request(), None);
            }
            assert_eq!(v.next_request(), Some(flaw));
            assert!(!flaw.reason().is_empty());
        }
    }

    #[test]
    fn a_flawed_chunked_head_later_on_the_connection_is_found() {
        let input =
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
            POST /b HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        for split in [1, 2, 9, input.len()] {
            assert_eq!(
                scan_all(input, split, 1 << 20),
                [None, Some(Flaw::BadTransferEncoding)],
                "split {split}"
            );
        }
    }

    #[test]
    fn stops_at_http2_and_upgrades() {
        let v = Verdicts::new();
        let mut s = Scanner::new(1024);
        s.scan(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &v);
        assert_eq!(s.st, St::Pass);
        let mut s = Scanner::new(1024);
        s.scan(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            &v,
        );
        assert_eq!(s.st, St::Pass);
    }
}
