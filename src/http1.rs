//! HTTP/1.1 wire pieces shared by the server's fast path and the upstream
//! client (RFC 9112): a parsed header block turned into a `HeaderMap` whose
//! values share the read buffer, header fields encoded, and a message body
//! written with its framing.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body::{Body, Frame};
use smallvec::SmallVec;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::proxy::body::BoxError;
use crate::proxy::headers::list_elements;

/// Where a field's name and value lie in a head: offsets and lengths.
pub type Span = (u32, u32, u32, u32);

/// Most header fields in a request head that the server's fast path takes
/// (more: hyper's).
pub const MAX_PLAIN_FIELDS: usize = 64;

/// The spans of a head's fields: inline up to [`MAX_PLAIN_FIELDS`] (an
/// upstream's head may have more, kept on the heap), never zeroed first
/// (filling a fixed array cost more than the spans themselves).
pub type Spans = SmallVec<[Span; MAX_PLAIN_FIELDS]>;

/// The spans of `fields`, parsed out of `base` (a head of at most 4 GiB).
pub fn spans(base: &[u8], fields: &[httparse::Header<'_>], out: &mut Spans) {
    let start = base.as_ptr() as usize;
    out.extend(fields.iter().map(|f| {
        (
            (f.name.as_ptr() as usize - start) as u32,
            f.name.len() as u32,
            (f.value.as_ptr() as usize - start) as u32,
            f.value.len() as u32,
        )
    }));
}

/// Which of the fields that decide a message's framing and its connection's
/// fate a head has, noted while its map is built: a head without them (most)
/// is spared looking them up.
#[derive(Debug, Default, Clone, Copy)]
pub struct Notable {
    /// `Connection`.
    pub connection: bool,
    /// `Transfer-Encoding`.
    pub transfer_encoding: bool,
}

/// The fields at `spans` of `head`, as a map whose values share its bytes,
/// with room for `extra` more fields (what the gateway adds, so that adding
/// them does not grow the map again).
pub fn header_map(
    head: &Bytes,
    spans: &[Span],
    extra: usize,
) -> Result<(HeaderMap, Notable), &'static str> {
    let mut headers = spare_map(spans.len() + extra);
    let mut notable = Notable::default();
    for &(n, nl, v, vl) in spans {
        let name = head
            .get(n as usize..(n + nl) as usize)
            .and_then(field_name)
            .ok_or("malformed header field name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(v as usize..(v + vl) as usize))
            .map_err(|_| "malformed header field value")?;
        notable.connection |= name == header::CONNECTION;
        notable.transfer_encoding |= name == header::TRANSFER_ENCODING;
        headers.append(name, value);
    }
    Ok((headers, notable))
}

/// A field's name. The names most heads carry, in their usual spellings,
/// are found by a compare rather than `HeaderName::from_bytes`, which checks
/// and lower-cases every byte before its own lookup.
fn field_name(bytes: &[u8]) -> Option<HeaderName> {
    Some(match bytes {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Connection" | b"connection" => header::CONNECTION,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        _ => return HeaderName::from_bytes(bytes).ok(),
    })
}

/// How many emptied maps a thread keeps for later messages.
const SPARE_MAPS: usize = 64;

/// The most fields a kept map may have room for: a map grown by an unusual
/// message is let go of rather than kept.
const SPARE_MAP_ROOM: usize = 64;

thread_local! {
    /// Emptied maps, kept with their room: a message's map is most of the
    /// allocations a proxied request makes.
    static SPARES: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `fields`, a kept one if the thread has one.
fn spare_map(fields: usize) -> HeaderMap {
    match SPARES.with_borrow_mut(Vec::pop) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Empties `map` and keeps it for a later message's [`header_map`].
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() > SPARE_MAP_ROOM {
        return;
    }
    map.clear();
    SPARES.with_borrow_mut(|spares| {
        if spares.len() < SPARE_MAPS {
            spares.push(map);
        }
    });
}

/// The most room [`HeadBuf`] keeps between heads.
const HEAD_ROOM_KEPT: usize = 4096;

/// A connection's room for the heads it writes. Each head is split off it;
/// once that head is written and let go, its room serves the next one, so
/// that a head costs no allocation.
#[derive(Default)]
pub struct HeadBuf(BytesMut);

impl HeadBuf {
    /// The head that `encode` writes.
    pub fn encode(&mut self, encode: impl FnOnce(&mut BytesMut)) -> Bytes {
        // Room for most heads, not measured first: a longer one grows the
        // room, which then serves the connection's next heads as they are.
        self.0.reserve(512);
        encode(&mut self.0);
        let room = self.0.len() + self.0.capacity();
        let head = self.0.split().freeze();
        if room > HEAD_ROOM_KEPT {
            // Let go of with the head: one large head must not weigh on a
            // connection for the rest of its life.
            self.0 = BytesMut::new();
        }
        head
    }
}

/// Appends `headers` as header fields, except the framing ones, then the
/// framing the sender chose: `content-length: length`, or chunked.
pub fn encode_fields(out: &mut BytesMut, headers: &HeaderMap, length: Option<u64>, chunked: bool) {
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        encode_field(out, name, value);
    }
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
}

/// Appends one header field.
pub fn encode_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What a message's `Connection` field says (RFC 9112 §9.3, §9.6).
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnectionOptions {
    /// The field is there.
    pub present: bool,
    /// It names `close`.
    pub close: bool,
    /// It names `keep-alive`.
    pub keep_alive: bool,
}

impl ConnectionOptions {
    /// Reads `Connection` over all of its lines.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut found = Self::default();
        for t in list_elements(headers, header::CONNECTION) {
            found.present = true;
            found.close |= t.eq_ignore_ascii_case(b"close");
            found.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
        }
        found
    }
}

/// `n` in decimal, written into `buf`.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// One timer for a connection's successive deadlines: armed at the first
/// and moved only when it fires before the current one, so that a message
/// costs a clock read rather than a timer registered and removed.
#[derive(Default)]
pub struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waker the timer last registered, when kept ([`Deadline::in_task`]).
    waker: Option<Waker>,
    /// Whether the deadline stays with one task and keeps its waker.
    in_task: bool,
}

impl Deadline {
    /// A deadline that stays with the task that owns it (a client
    /// connection's): while it is armed for that task, no later than asked,
    /// a wait costs no timer poll. (An upstream connection moves between
    /// tasks, and must not keep one alive from a pool.)
    pub fn in_task() -> Self {
        Self {
            in_task: true,
            ..Self::default()
        }
    }

    /// Whether `at` has passed; otherwise the task wakes when it does (or
    /// before, harmlessly).
    pub fn poll_passed(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        // Armed for this task, no later than `at`, and not fired: nothing
        // to do (polling it again would only register the same waker).
        if sleep.deadline() <= at
            && !sleep.is_elapsed()
            && self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            return false;
        }
        loop {
            if sleep.deadline() > at {
                sleep.as_mut().reset(at);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                if self.in_task && !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    self.waker = Some(cx.waker().clone());
                }
                return false;
            }
            if Instant::now() >= at {
                return true;
            }
            sleep.as_mut().reset(at);
        }
    }
}

/// Why writing a message failed.
#[derive(Debug)]
pub enum WriteError {
    /// The peer's side: the write failed.
    Io(io::Error),
    /// The body being sent failed.
    Body(BoxError),
}

/// A message on its way out: the encoded head, then the body, chunked when
/// its length was not known.
pub struct Writer<B> {
    /// What is being written: `out[next..len]`.
    out: [Bytes; 4],
    next: usize,
    len: usize,
    body: Option<B>,
    chunked: bool,
    /// Whether trailers are sent (chunked only); otherwise they end the body.
    trailers: bool,
    /// Whether the body's first frame was looked for before the head went.
    started: bool,
}

impl<B> Writer<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Writes `head`, then `body` (if any) in the framing the head states.
    pub fn new(head: Bytes, body: Option<B>, chunked: bool, trailers: bool) -> Self {
        Writer {
            out: [head, Bytes::new(), Bytes::new(), Bytes::new()],
            next: 0,
            len: 1,
            body,
            chunked,
            trailers,
            started: false,
        }
    }

    /// Writes what can be written; ready once the whole message is out.
    pub fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        if !self.started {
            self.started = true;
            // The head waits for a first frame that is already at hand: one
            // write for both, and nothing at all sent for a body that fails
            // at once (a malformed first chunk).
            if let Some(body) = &mut self.body
                && let Poll::Ready(frame) = Pin::new(body).poll_frame(cx)
            {
                self.take(frame)?;
            }
        }
        loop {
            ready!(self.poll_out(io, cx)).map_err(WriteError::Io)?;
            // Out before waiting for more: TLS may still hold records that
            // the socket did not take.
            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
            let Some(body) = &mut self.body else {
                return Poll::Ready(Ok(()));
            };
            let frame = ready!(Pin::new(body).poll_frame(cx));
            self.take(frame)?;
        }
    }

    /// Queues a frame of the body (or its end) in the message's coding. A
    /// body that ends with a frame is let go of (with what it holds, such as
    /// an upstream connection) before that frame is written, not after.
    fn take(&mut self, frame: Option<Result<Frame<Bytes>, B::Error>>) -> Result<(), WriteError> {
        let frame = match frame {
            None => {
                self.body = None;
                if self.chunked {
                    self.push(Bytes::from_static(b"0\r\n\r\n"));
                }
                return Ok(());
            }
            Some(Err(e)) => {
                self.body = None;
                return Err(WriteError::Body(e.into()));
            }
            Some(Ok(frame)) => frame,
        };
        let ended = self.body.as_ref().is_none_or(B::is_end_stream);
        if ended {
            self.body = None;
        }
        match frame.into_data() {
            Ok(d) if self.chunked => {
                if !d.is_empty() {
                    self.push(Bytes::from(format!("{:x}\r\n", d.len())));
                    self.push(d);
                    self.push(Bytes::from_static(if ended {
                        b"\r\n0\r\n\r\n"
                    } else {
                        b"\r\n"
                    }));
                } else if ended {
                    self.push(Bytes::from_static(b"0\r\n\r\n"));
                }
            }
            Ok(d) => self.push(d),
            Err(frame) => {
                // Trailers end the body; only chunked coding can carry them.
                self.body = None;
                if self.chunked {
                    let mut last = b"0\r\n".to_vec();
                    let fields = frame.trailers_ref().filter(|_| self.trailers);
                    for (name, value) in fields.into_iter().flatten() {
                        last.extend_from_slice(name.as_str().as_bytes());
                        last.extend_from_slice(b": ");
                        last.extend_from_slice(value.as_bytes());
                        last.extend_from_slice(b"\r\n");
                    }
                    last.extend_from_slice(b"\r\n");
                    self.push(Bytes::from(last));
                }
            }
        }
        Ok(())
    }

    /// Adds to what is to be written; called only once `out` is written
    /// out, or right after the head (at most four pieces in all).
    fn push(&mut self, b: Bytes) {
        if self.next == self.len {
            (self.next, self.len) = (0, 0);
        }
        if let Some(slot) = self.out.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn poll_out<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            while self.next < self.len && self.out[self.next].is_empty() {
                self.next += 1;
            }
            if self.next == self.len {
                return Poll::Ready(Ok(()));
            }
            let piece =
                |i: usize| IoSlice::new(self.out[..self.len].get(i).map_or(&[], |b| &b[..]));
            let slices = [
                piece(self.next),
                piece(self.next + 1),
                piece(self.next + 2),
                piece(self.next + 3),
            ];
            let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            for part in &mut self.out[self.next..self.len] {
                let take = n.min(part.len());
                part.advance(take);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Waker;

    use super::*;

    /// A deadline kept armed at an earlier time while later ones are asked
    /// for still wakes its task, and answers for the deadline asked.
    #[tokio::test]
    async fn a_deadline_kept_armed_wakes_its_task_for_later_ones() {
        use std::time::Duration;
        for mut deadline in [Deadline::in_task(), Deadline::default()] {
            let start = Instant::now();
            let first = start + Duration::from_millis(30);
            let later = start + Duration::from_millis(90);
            std::future::poll_fn(|cx| {
                assert!(!deadline.poll_passed(first, cx));
                Poll::Ready(())
            })
            .await;
            let waited = tokio::time::timeout(
                Duration::from_secs(10),
                std::future::poll_fn(|cx| {
                    if deadline.poll_passed(later, cx) {
                        Poll::Ready(Instant::now())
                    } else {
                        Poll::Pending
                    }
                }),
            )
            .await;
            let passed_at = waited.expect("the task was never woken");
            assert!(passed_at >= later);
        }
    }

    /// One data frame; records when it is dropped.
    struct Once(Option<Bytes>, Arc<AtomicBool>);

    impl Body for Once {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_none()
        }
    }

    impl Drop for Once {
        fn drop(&mut self) {
            self.1.store(true, Ordering::Relaxed);
        }
    }

    /// Takes every write whole; records what it got and whether the body
    /// had been let go of by then.
    struct Probe(Vec<u8>, Vec<bool>, Arc<AtomicBool>);

    impl AsyncWrite for Probe {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.1.push(this.2.load(Ordering::Relaxed));
            this.0.extend_from_slice(b);
            Poll::Ready(Ok(b.len()))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.1.push(this.2.load(Ordering::Relaxed));
            let mut n = 0;
            for b in bufs {
                this.0.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn field_names_are_the_same_by_either_road() {
        for name in [
            "Host",
            "host",
            "HOST",
            "Date",
            "Server",
            "Accept",
            "Cookie",
            "Connection",
            "user-agent",
            "Content-Type",
            "content-length",
            "Content-Length",
            "X-Custom",
            "x-forwarded-for",
            "Accept-Encoding",
        ] {
            assert_eq!(
                field_name(name.as_bytes()),
                HeaderName::from_bytes(name.as_bytes()).ok(),
                "{name}"
            );
        }
        assert_eq!(field_name(b"bad name"), None);
        assert_eq!(field_name(b""), None);
    }

    #[test]
    fn a_kept_map_comes_back_empty() {
        let head = Bytes::from_static(b"X-Old: 1\r\nHost: a\r\n");
        let (map, _) = header_map(&head, &[(0, 5, 7, 1), (10, 4, 16, 1)], 0).unwrap();
        assert_eq!(map.len(), 2);
        recycle(map);
        let head = Bytes::from_static(b"Host: b\r\n");
        let (map, notable) = header_map(&head, &[(0, 4, 6, 1)], 4).unwrap();
        assert_eq!(map.len(), 1, "{map:?}");
        assert_eq!(map["host"], "b");
        assert!(map.get("x-old").is_none());
        assert!(!notable.connection && !notable.transfer_encoding);
    }

    #[test]
    fn a_head_let_go_of_lends_its_room_to_the_next() {
        let mut heads = HeadBuf::default();
        let first = heads.encode(|o| o.extend_from_slice(b"first"));
        let room = first.as_ptr();
        drop(first);
        let second = heads.encode(|o| o.extend_from_slice(b"second"));
        assert_eq!(second.as_ptr(), room, "the room was not used again");
        // A head still held is never written over.
        let third = heads.encode(|o| o.extend_from_slice(b"third"));
        assert_eq!(&second[..], b"second");
        assert_eq!(&third[..], b"third");
        let longer = heads.encode(|o| o.extend_from_slice(&[b'x'; 1500]));
        assert_eq!(longer.len(), 1500);
        assert_eq!(&second[..], b"second");
        // The grown room serves the next heads once the longer one is gone.
        let room = longer.as_ptr();
        drop((longer, second, third));
        let next = heads.encode(|o| o.extend_from_slice(&[b'y'; 1200]));
        assert_eq!(next.as_ptr(), room, "the grown room was not used again");
        // A head over the kept room takes its room with it.
        let big = heads.encode(|o| o.extend_from_slice(&[b'z'; 3 * HEAD_ROOM_KEPT]));
        assert_eq!(big.len(), 3 * HEAD_ROOM_KEPT);
        assert_eq!(heads.0.capacity(), 0, "a large head's room was kept");
        assert_eq!(&next[..], &[b'y'; 1200][..]);
    }

    /// A body that ends with its frame is let go of (with the upstream
    /// connection it holds) before the frame is written, in one write with
    /// the head, in either framing.
    #[test]
    fn a_body_is_let_go_of_before_its_last_frame_is_written() {
        for (chunked, wire) in [
            (false, &b"HEAD\r\n\r\nhello"[..]),
            (true, b"HEAD\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        ] {
            let dropped = Arc::new(AtomicBool::new(false));
            let body = Once(Some(Bytes::from_static(b"hello")), dropped.clone());
            let mut w = Writer::new(
                Bytes::from_static(b"HEAD\r\n\r\n"),
                Some(body),
                chunked,
                false,
            );
            let mut probe = Probe(Vec::new(), Vec::new(), dropped);
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(w.poll(&mut probe, &mut cx), Poll::Ready(Ok(()))));
            assert_eq!(probe.0, wire, "chunked: {chunked}");
            assert_eq!(probe.1, [true], "chunked: {chunked}");
        }
    }

    #[test]
    fn decimal() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
