//! Body types of the request path: bodies stream as `Bytes` frames, never copied.
//!
//! [`ResponseBody`] also carries the per-request [`Exchange`] record and the
//! upstream connection [`Lease`]: when the body ends or is dropped, the
//! connection goes back to its pool (if it finished cleanly) and the access
//! log line is written. That is how logging always runs, for early answers too.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::observe::Exchange;
use crate::observe::metrics::Recording;
use crate::upstream::pool::{Lease, UpstreamBody};

/// The error type of bodies on the request path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body: hyper's, or none at all (a request the
/// HTTP/1.1 fast path served, see [`crate::server::h1`]).
#[derive(Debug)]
pub enum ClientBody {
    /// No body.
    Empty,
    /// A body hyper's server reads.
    Hyper(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// A body stalled longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// A client's request body grew past its route's `max_body_size`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A client's fault that failed its request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Over the route's `max_body_size` ([`BodyTooLarge`]).
    TooLarge = 1,
    /// Stalled past `limits.body_read_timeout` ([`IdleTimeout`]).
    Stalled = 2,
    /// Reading it failed (a reset, malformed chunking).
    Failed = 3,
}

/// Where a request body records a [`ClientFault`], for the sender to read
/// after a failed exchange: hyper's HTTP/2 client turns a body's error into
/// a stream reset, which no longer carries the error itself. Allocated only
/// for bodies that are not empty.
#[derive(Clone, Default)]
pub struct FaultSlot(Option<Arc<AtomicU8>>);

impl FaultSlot {
    fn new() -> Self {
        Self(Some(Arc::new(AtomicU8::new(0))))
    }

    /// Records `fault`, unless one is recorded already.
    fn set(&self, fault: ClientFault) {
        if let Some(s) = &self.0 {
            let _ = s.compare_exchange(0, fault as u8, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The fault recorded, if any.
    pub fn get(&self) -> Option<ClientFault> {
        match self.0.as_ref()?.load(Ordering::Acquire) {
            1 => Some(ClientFault::TooLarge),
            2 => Some(ClientFault::Stalled),
            3 => Some(ClientFault::Failed),
            _ => None,
        }
    }
}

/// Adds `frame`'s data to `read`; true once `read` is over `max` (0: no limit).
fn over_limit(read: &mut u64, max: u64, frame: &Frame<Bytes>) -> bool {
    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
    *read = read.saturating_add(len);
    max != 0 && *read > max
}

/// Fails a stream that waits `timeout` for a frame. The wait counts from the
/// first poll that finds nothing, so that a frame costs no clock read; the
/// timer itself is created only when the stream first waits, and re-armed
/// only when it fires.
pub struct IdleTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    waiting_since: Option<Instant>,
}

impl IdleTimer {
    /// A timer; `Duration::ZERO` disables it.
    pub fn new(timeout: Duration) -> Self {
        Self {
            sleep: None,
            timeout,
            waiting_since: None,
        }
    }

    /// Records activity: the next wait starts a new count.
    fn touch(&mut self) {
        self.waiting_since = None;
    }

    /// True when the stream has been idle for the whole timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        let deadline = *self.waiting_since.get_or_insert_with(Instant::now) + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// A client's request body on its way upstream, counted and idle-timed.
pub struct RequestBody {
    source: Source,
    counter: Option<Arc<AtomicU64>>,
    idle: IdleTimer,
    /// Largest body allowed (0: no limit); a `Replay` source counts in its `Tee`.
    max: u64,
    read: u64,
    /// Where a client fault is recorded.
    fault: FaultSlot,
}

enum Source {
    None,
    Direct(ClientBody),
    /// One attempt's view of a body kept for retries.
    Replay {
        tee: Arc<Mutex<Tee>>,
        /// Next recorded frame to send again.
        pos: usize,
        /// The attempt this body belongs to; an older attempt's body stops.
        generation: u32,
        hint: SizeHint,
    },
}

impl RequestBody {
    /// Wraps a client body; `counter` receives the bytes read; more than
    /// `max` bytes (0: no limit) fails it with [`BodyTooLarge`].
    pub fn new(
        inner: ClientBody,
        counter: Option<Arc<AtomicU64>>,
        idle: Duration,
        max: u64,
    ) -> Self {
        if inner.is_end_stream() {
            return Self::empty();
        }
        Self {
            source: Source::Direct(inner),
            counter,
            idle: IdleTimer::new(idle),
            max,
            read: 0,
            fault: FaultSlot::new(),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self {
            source: Source::None,
            counter: None,
            idle: IdleTimer::new(Duration::ZERO),
            max: 0,
            read: 0,
            fault: FaultSlot::default(),
        }
    }

    /// Where this body records a client fault (shared by a body's attempts).
    pub fn fault(&self) -> FaultSlot {
        self.fault.clone()
    }
}

/// A client body that can be sent again on a retry. Its frames are kept as
/// they stream (shared `Bytes`, not copies) until more than the replay buffer
/// has been read; from then on it can only be sent once.
pub struct Replayable {
    tee: Arc<Mutex<Tee>>,
    hint: SizeHint,
    counter: Option<Arc<AtomicU64>>,
    fault: FaultSlot,
}

struct Tee {
    /// The client's body; `None` once it ended.
    source: Option<ClientBody>,
    recorded: Vec<Recorded>,
    recorded_len: usize,
    cap: usize,
    /// More than `cap` was read: nothing is kept any more.
    overflowed: bool,
    generation: u32,
    /// Largest body allowed (0: no limit), and the bytes read from the client.
    max: u64,
    read: u64,
    /// The body went over `max`: every attempt fails from now on.
    too_large: bool,
}

enum Recorded {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

impl Recorded {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Recorded::Data(d) => Frame::data(d.clone()),
            Recorded::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

impl Replayable {
    /// Keeps up to `cap` bytes of `inner` for replay; `counter` receives the
    /// bytes read from the client (once, however often they are sent); more
    /// than `max` bytes (0: no limit) fails it with [`BodyTooLarge`].
    pub fn new(inner: ClientBody, cap: usize, counter: Option<Arc<AtomicU64>>, max: u64) -> Self {
        let hint = inner.size_hint();
        let source = (!inner.is_end_stream()).then_some(inner);
        let fault = if source.is_some() {
            FaultSlot::new()
        } else {
            FaultSlot::default()
        };
        Self {
            tee: Arc::new(Mutex::new(Tee {
                source,
                recorded: Vec::new(),
                recorded_len: 0,
                cap,
                overflowed: false,
                generation: 0,
                max,
                read: 0,
                too_large: false,
            })),
            hint,
            counter,
            fault,
        }
    }

    /// The body for the next attempt; the previous attempt's body stops
    /// yielding. `None` when the body can no longer be replayed.
    pub fn attempt(&self, idle: Duration) -> Option<RequestBody> {
        let mut tee = lock(&self.tee);
        if tee.overflowed {
            return None;
        }
        tee.generation += 1;
        Some(RequestBody {
            source: Source::Replay {
                tee: self.tee.clone(),
                pos: 0,
                generation: tee.generation,
                hint: self.hint,
            },
            counter: self.counter.clone(),
            idle: IdleTimer::new(idle),
            // Counted in the tee, once for all attempts.
            max: 0,
            read: 0,
            fault: self.fault.clone(),
        })
    }
}

fn lock(tee: &Mutex<Tee>) -> std::sync::MutexGuard<'_, Tee> {
    tee.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A retry started; an earlier attempt's body must not take the client's frames.
#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
struct Superseded;

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.source {
            Source::None => return Poll::Ready(None),
            Source::Direct(inner) => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => this.source = Source::None,
                    Poll::Ready(Some(Ok(f))) if over_limit(&mut this.read, this.max, f) => {
                        // Dropping the client's body stops reading it.
                        this.source = Source::None;
                        this.fault.set(ClientFault::TooLarge);
                        return Poll::Ready(Some(Err(BodyTooLarge(this.max).into())));
                    }
                    _ => {}
                }
                polled
            }
            Source::Replay {
                tee,
                pos,
                generation,
                ..
            } => {
                let mut tee = lock(tee);
                if tee.generation != *generation {
                    return Poll::Ready(Some(Err(Superseded.into())));
                }
                if tee.too_large {
                    this.fault.set(ClientFault::TooLarge);
                    return Poll::Ready(Some(Err(BodyTooLarge(tee.max).into())));
                }
                if let Some(r) = tee.recorded.get(*pos) {
                    *pos += 1;
                    this.idle.touch();
                    return Poll::Ready(Some(Ok(r.frame())));
                }
                let Some(inner) = tee.source.as_mut() else {
                    return Poll::Ready(None);
                };
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &polled {
                    let max = tee.max;
                    if over_limit(&mut tee.read, max, f) {
                        tee.too_large = true;
                        tee.source = None;
                        tee.recorded = Vec::new();
                        this.fault.set(ClientFault::TooLarge);
                        return Poll::Ready(Some(Err(BodyTooLarge(max).into())));
                    }
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) if !tee.overflowed => {
                        let len = frame.data_ref().map_or(0, Bytes::len);
                        if tee.recorded_len + len > tee.cap {
                            tee.overflowed = true;
                            tee.recorded = Vec::new();
                        } else {
                            tee.recorded_len += len;
                            let kept = match (frame.data_ref(), frame.trailers_ref()) {
                                (Some(d), _) => Some(Recorded::Data(d.clone())),
                                (None, Some(t)) => Some(Recorded::Trailers(t.clone())),
                                (None, None) => None,
                            };
                            tee.recorded.extend(kept);
                            *pos = tee.recorded.len();
                        }
                    }
                    Poll::Ready(None) => tee.source = None,
                    _ => {}
                }
                polled
            }
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.touch();
                if let (Some(c), Some(d)) = (this.counter.as_ref(), frame.data_ref()) {
                    c.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fault.set(ClientFault::Failed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.idle.poll_expired(cx) {
                    this.fault.set(ClientFault::Stalled);
                    return Poll::Ready(Some(Err(IdleTimeout(this.idle.timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::None => true,
            Source::Direct(b) => b.is_end_stream(),
            Source::Replay { tee, pos, .. } => {
                let tee = lock(tee);
                tee.source.is_none() && *pos >= tee.recorded.len()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::None => SizeHint::with_exact(0),
            Source::Direct(b) => b.size_hint(),
            Source::Replay { hint, .. } => *hint,
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// A response body: made by the gateway, or streamed from an upstream.
/// Boxed: a response passes through several layers by value, and a small
/// one (its head and a pointer) moves in a few registers where the body's
/// 200 bytes inline cost a `memcpy` call at each move.
pub struct ResponseBody(Box<Inner>);

/// What a [`ResponseBody`] holds.
struct Inner {
    kind: Kind,
    idle: IdleTimer,
    lease: Option<Lease>,
    exchange: Exchange,
    /// Counts the request in its route's metrics when the body is dropped.
    recording: Option<Recording>,
    /// Concurrency-limit slots, given back when the body is dropped.
    held: crate::ratelimit::Held,
    ended: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Kind::Upstream(UpstreamBody::H1(d)) = &self.kind
            && d.sending()
            && let Some(lease) = self.lease.take()
            && let Kind::Upstream(UpstreamBody::H1(decoder)) =
                std::mem::replace(&mut self.kind, Kind::Full(None))
        {
            let limit = match self.idle.timeout {
                Duration::ZERO => Duration::from_secs(60),
                t => t,
            };
            crate::upstream::pool::finish_request(lease, decoder, limit);
        }
        let clean = self.ended
            || match &self.kind {
                Kind::Full(_) => true,
                Kind::Upstream(b) => b.is_end_stream(),
            };
        if let Some(lease) = self.lease.take() {
            lease.finish(clean);
        }
        self.exchange.set_completed(clean);
    }
}

impl ResponseBody {
    /// A body made by the gateway.
    pub fn full(bytes: Bytes) -> Self {
        Self::new(
            Kind::Full((!bytes.is_empty()).then_some(bytes)),
            Duration::ZERO,
        )
    }

    /// No body.
    pub fn empty() -> Self {
        Self::new(Kind::Full(None), Duration::ZERO)
    }

    /// An upstream's body, with its connection lease and idle timeout.
    pub fn upstream(body: UpstreamBody, lease: Option<Lease>, idle: Duration) -> Self {
        let mut b = Self::new(Kind::Upstream(body), idle);
        b.0.lease = lease;
        b
    }

    fn new(kind: Kind, idle: Duration) -> Self {
        Self(Box::new(Inner {
            kind,
            idle: IdleTimer::new(idle),
            lease: None,
            exchange: Exchange::default(),
            recording: None,
            held: crate::ratelimit::Held::default(),
            ended: false,
        }))
    }

    /// Attaches the request's record; it is logged when this body is done.
    pub fn set_exchange(&mut self, exchange: Exchange) {
        self.0.exchange = exchange;
    }

    /// Attaches the request's metrics entry; it is recorded when this body is done.
    pub fn set_recording(&mut self, recording: Recording) {
        self.0.recording = Some(recording);
    }

    /// Keeps the request's concurrency-limit slots until this body is dropped.
    pub fn hold(&mut self, held: crate::ratelimit::Held) {
        self.0.held = held;
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self.get_mut().0;
        match &mut this.kind {
            Kind::Full(data) => {
                let next = data.take();
                if let Some(d) = &next {
                    this.exchange.add_bytes_out(d.len());
                } else {
                    this.ended = true;
                }
                Poll::Ready(next.map(|d| Ok(Frame::data(d))))
            }
            Kind::Upstream(body) => match poll_upstream(body, this.lease.as_mut(), cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.touch();
                    if let Some(d) = frame.data_ref() {
                        this.exchange.add_bytes_out(d.len());
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.exchange.note_error(format_args!("upstream body: {e}"));
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    if let Some(lease) = this.lease.take() {
                        lease.finish(true);
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    if this.idle.poll_expired(cx) {
                        let timeout = this.idle.timeout;
                        this.exchange
                            .note_error(format_args!("upstream body idle for {timeout:?}"));
                        return Poll::Ready(Some(Err(IdleTimeout(timeout).into())));
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0.kind {
            Kind::Full(d) => d.is_none(),
            Kind::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0.kind {
            Kind::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(b) => b.size_hint(),
        }
    }
}

/// The next frame of an upstream's body: an HTTP/1.1 body is read from the
/// connection in the lease.
fn poll_upstream(
    body: &mut UpstreamBody,
    lease: Option<&mut Lease>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    match body {
        UpstreamBody::H1(decoder) => match lease.and_then(Lease::conn) {
            Some(conn) => decoder
                .poll_frame(conn, cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            None => Poll::Ready(Some(Err("the response's connection is gone".into()))),
        },
        UpstreamBody::H2(b) => Pin::new(b)
            .poll_frame(cx)
            .map(|f| f.map(|f| f.map_err(Into::into))),
    }
}
