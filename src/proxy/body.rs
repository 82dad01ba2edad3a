//! Body types of the request path: bodies stream as `Bytes` frames, never copied.
//!
//! [`ResponseBody`] also carries the per-request [`Exchange`] record and the
//! upstream connection [`Lease`]: when the body ends or is dropped, the
//! connection goes back to its pool (if it finished cleanly) and the access
//! log line is written. That is how logging always runs, for early answers too.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::observe::Exchange;
use crate::upstream::pool::Lease;

/// The error type of bodies on the request path.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body stalled longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body idle for longer than {0:?}")]
pub struct IdleTimeout(pub Duration);

/// Fails a stream that sees no frame for `timeout`. Activity costs one
/// `Instant::now()`; the timer itself is created only when the stream first
/// waits, and re-armed only when it fires.
pub struct IdleTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    last: Instant,
}

impl IdleTimer {
    /// A timer; `Duration::ZERO` disables it.
    pub fn new(timeout: Duration) -> Self {
        Self {
            sleep: None,
            timeout,
            last: Instant::now(),
        }
    }

    /// Records activity.
    fn touch(&mut self) {
        if !self.timeout.is_zero() {
            self.last = Instant::now();
        }
    }

    /// True when the stream has been idle for the whole timeout.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout.is_zero() {
            return false;
        }
        let deadline = self.last + self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last + self.timeout;
            if Instant::now() >= deadline {
                return true;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// A client's request body on its way upstream, counted and idle-timed.
pub struct RequestBody {
    inner: Option<Incoming>,
    counter: Option<Arc<AtomicU64>>,
    idle: IdleTimer,
}

impl RequestBody {
    /// Wraps a client body; `counter` receives the bytes read.
    pub fn new(inner: Incoming, counter: Option<Arc<AtomicU64>>, idle: Duration) -> Self {
        let empty = inner.is_end_stream();
        Self {
            inner: (!empty).then_some(inner),
            counter,
            idle: IdleTimer::new(if empty { Duration::ZERO } else { idle }),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self {
            inner: None,
            counter: None,
            idle: IdleTimer::new(Duration::ZERO),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.touch();
                if let (Some(c), Some(d)) = (this.counter.as_ref(), frame.data_ref()) {
                    c.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.poll_expired(cx) {
                    return Poll::Ready(Some(Err(IdleTimeout(this.idle.timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// A response body: made by the gateway, or streamed from an upstream.
pub struct ResponseBody {
    kind: Kind,
    idle: IdleTimer,
    lease: Option<Lease>,
    exchange: Exchange,
    ended: bool,
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
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
    pub fn upstream(body: Incoming, lease: Option<Lease>, idle: Duration) -> Self {
        let mut b = Self::new(Kind::Upstream(body), idle);
        b.lease = lease;
        b
    }

    fn new(kind: Kind, idle: Duration) -> Self {
        Self {
            kind,
            idle: IdleTimer::new(idle),
            lease: None,
            exchange: Exchange::default(),
            ended: false,
        }
    }

    /// Attaches the request's record; it is logged when this body is done.
    pub fn set_exchange(&mut self, exchange: Exchange) {
        self.exchange = exchange;
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
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
            Kind::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle.touch();
                    if let Some(d) = frame.data_ref() {
                        this.exchange.add_bytes_out(d.len());
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.exchange.note_error(format_args!("upstream body: {e}"));
                    Poll::Ready(Some(Err(e.into())))
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
        match &self.kind {
            Kind::Full(d) => d.is_none(),
            Kind::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(b) => b.size_hint(),
        }
    }
}
