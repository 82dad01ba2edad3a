//! Connection pools, one per worker and endpoint: keep-alive HTTP/1.1
//! connections (idle list, idle timeout, per-endpoint cap) driven by the
//! request that holds them (see [`h1`](super::h1)), and one shared HTTP/2
//! (h2c or h2) connection.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, futures::Notified};
use tokio::time::{Instant, timeout};

use super::Upstream;
use super::h1::{self, Io};
use super::outlier::Outcome;
use super::state::{Cap, Held};
use crate::config::{BalanceConfig, PoolConfig, UpstreamProtocol};
use crate::error::{ErrorKind, ProxyError, Retry};
use crate::http1;
use crate::proxy::body::{BodyTooLarge, ClientFault, FaultSlot, IdleTimeout, RequestBody};
use crate::proxy::headers::Added;

/// A pooled HTTP/1.1 connection and what it holds for its life.
pub struct Idle {
    conn: h1::Conn,
    addr: SocketAddr,
    since: Instant,
    /// What the pool's `max_connections` counts.
    _permit: Option<OwnedSemaphorePermit>,
    /// What `circuit_breaker.max_connections` counts.
    _slot: Held<Arc<AtomicU32>>,
}

impl Idle {
    /// The connection itself.
    pub fn conn(&mut self) -> &mut h1::Conn {
        &mut self.conn
    }
}

/// Connections to one endpoint from one worker.
pub struct EndpointPool {
    idle: Mutex<VecDeque<Box<Idle>>>,
    max_idle: usize,
    /// One permit per open connection, idle ones included (`max_connections`).
    limit: Option<Arc<Semaphore>>,
    /// Signalled when a connection goes back to the idle list, so that a
    /// request waiting for a slot can take it instead of waiting for a close.
    returned: Notify,
    h2: tokio::sync::Mutex<Option<(http2::SendRequest<RequestBody>, SocketAddr)>>,
}

impl EndpointPool {
    /// An empty pool.
    pub fn new(cfg: &PoolConfig) -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            max_idle: cfg.max_idle,
            limit: (cfg.max_connections > 0).then(|| Arc::new(Semaphore::new(cfg.max_connections))),
            returned: Notify::new(),
            h2: tokio::sync::Mutex::new(None),
        }
    }

    /// The most recently used idle connection, as of `now`, that is neither
    /// past `idle_timeout` nor closed.
    fn take_idle(&self, idle_timeout: Duration, now: Instant) -> Option<Box<Idle>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Most recently used first: it is the least likely to have been closed.
        while let Some(mut c) = idle.pop_back() {
            if now.saturating_duration_since(c.since) < idle_timeout && !c.conn.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, c: Box<Idle>) {
        if self.max_idle == 0 || !c.conn.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(c);
        drop(idle);
        self.returned.notify_waiters();
    }

    /// Drops idle connections older than `idle_timeout`.
    pub fn sweep(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain_mut(|c| c.since.elapsed() < idle_timeout && !c.conn.is_closed());
    }

    /// Idle HTTP/1.1 connections kept now (for metrics; takes the pool's lock).
    pub fn idle_len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A request's claim on an endpoint: counts as in flight (for the balancer and
/// `circuit_breaker.max_requests`) until dropped, and for HTTP/1.1 holds the
/// connection until the response body has ended.
pub struct Lease {
    upstream: Arc<Upstream>,
    worker: usize,
    endpoint: usize,
    /// Boxed once per connection, so that a lease (and the response body
    /// holding it) moves as a pointer.
    conn: Option<Box<Idle>>,
    /// Counted in `stats.requests` (only with a `max_requests` cap: the sum
    /// of the endpoints' in-flight counts serves everything else).
    capped: bool,
}

impl Lease {
    /// Claims `endpoint`, unless the upstream is at `max_requests`.
    fn begin(upstream: &Arc<Upstream>, worker: usize, endpoint: usize) -> Result<Self, ProxyError> {
        let cap = upstream.config.circuit_breaker.max_requests;
        let before = (cap > 0).then(|| upstream.stats.requests.fetch_add(1, Ordering::Relaxed));
        upstream.begin(endpoint);
        let lease = Lease {
            upstream: upstream.clone(),
            worker,
            endpoint,
            conn: None,
            capped: before.is_some(),
        };
        if before.is_some_and(|n| n >= cap) {
            return Err(over_cap(upstream, Cap::Requests, cap));
        }
        Ok(lease)
    }

    /// The HTTP/1.1 connection the response is read from.
    pub fn conn(&mut self) -> Option<&mut h1::Conn> {
        self.conn.as_mut().map(|c| c.conn())
    }

    /// Ends the request. A connection whose exchange ended cleanly goes back
    /// to the pool; any other is closed.
    pub fn finish(mut self, clean: bool) {
        if let Some(mut c) = self.conn.take()
            && clean
        {
            c.since = Instant::now();
            self.upstream.pool(self.worker, self.endpoint).put_idle(c);
        }
    }

    /// The connection, for the tunnel that follows a 101 (Switching
    /// Protocols); it keeps its connection slots while the tunnel lasts.
    pub fn into_conn(mut self) -> Option<Box<Idle>> {
        self.conn.take()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.end(self.endpoint);
        if self.capped {
            self.upstream.stats.requests.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Sends the rest of a request body that the upstream answered before it had
/// it all, once the client's response is done (hyper lets go of a response
/// body as soon as its stated length is out), within `limit`; the connection
/// is closed afterwards.
pub fn finish_request(mut lease: Lease, mut decoder: h1::Decoder, limit: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let sent = timeout(
            limit,
            std::future::poll_fn(|cx| match lease.conn() {
                Some(conn) => decoder.poll_send(conn, cx),
                None => std::task::Poll::Ready(false),
            }),
        )
        .await;
        if !matches!(sent, Ok(true)) {
            tracing::debug!("request body not sent whole after an early answer");
        }
        lease.finish(false);
    });
}

/// The 503 for a request refused by a circuit-breaker cap; counted.
fn over_cap(upstream: &Upstream, cap: Cap, limit: u32) -> ProxyError {
    upstream.stats.rejected[cap as usize].fetch_add(1, Ordering::Relaxed);
    ProxyError::new(ErrorKind::Overloaded).detail(format_args!(
        "the upstream is at its circuit_breaker.{} cap ({limit})",
        cap.key()
    ))
}

/// An upstream's response body.
pub enum UpstreamBody {
    /// Read from the HTTP/1.1 connection in the lease.
    H1(h1::Decoder),
    /// A stream of the HTTP/2 connection.
    H2(Incoming),
}

impl UpstreamBody {
    /// Whether the body has ended (for HTTP/1.1, with the request all sent).
    pub fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    /// The body's length, when known.
    pub fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

/// What a sent request gives back.
pub struct Sent {
    /// The upstream's response head and body.
    pub response: Response<UpstreamBody>,
    /// The claim to release when the body is done.
    pub lease: Lease,
    /// The address the request went to.
    pub addr: SocketAddr,
}

/// One attempt on an endpoint, measured: when it started, and where its
/// request body records a client's fault.
pub struct Attempt {
    started: Instant,
    fault: FaultSlot,
}

impl Attempt {
    /// When the attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Starts an attempt that sends `body`.
    pub fn start(body: &RequestBody) -> Self {
        Self {
            started: Instant::now(),
            fault: body.fault(),
        }
    }

    /// The attempt's result from [`send`], a failure caused by the client's
    /// body made the client's; its latency and outcome go to the endpoint's
    /// EWMA, outlier detection and metrics.
    pub fn settle(
        self,
        upstream: &Upstream,
        endpoint: usize,
        mut result: Result<Sent, ProxyError>,
    ) -> Result<Sent, ProxyError> {
        let (started, fault) = (self.started, self.fault);
        if let Err(e) = &mut result
            && let Some(f) = fault.get()
        {
            // The client's body failed the exchange, whatever hyper made of it
            // (HTTP/2 turns it into a stream reset): the client's fault, never
            // retried, and nothing against the endpoint.
            *e = client_fault(f, e);
        }
        let outcome = match &result {
            Ok(sent) => {
                let rtt = started.elapsed();
                if upstream.config.balance == BalanceConfig::PeakEwma {
                    upstream.states[endpoint].observe_latency(rtt);
                }
                upstream.stats.request_duration.observe(rtt);
                Some(if sent.response.status().is_server_error() {
                    Outcome::Failure
                } else {
                    Outcome::Success
                })
            }
            Err(e) => match e.kind {
                ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout => {
                    Some(Outcome::ConnectFailure)
                }
                // A request the endpoint provably did not get (a pooled connection
                // that closed before it went out, REFUSED_STREAM, no free pool
                // slot) says nothing about the endpoint's health.
                ErrorKind::UpstreamFailed | ErrorKind::UpstreamTimeout
                    if e.retry == Retry::Safe =>
                {
                    None
                }
                ErrorKind::UpstreamFailed | ErrorKind::UpstreamTimeout => Some(Outcome::Failure),
                _ => None,
            },
        };
        if let Some(outcome) = outcome {
            upstream.record_outcome(endpoint, outcome);
        }
        result
    }
}

/// Sends `req` to `endpoint` of `upstream` over a pooled connection, for
/// the attempt that began `started`; the response head must arrive within
/// `limit`. One level of future, not several: each level's future is copied
/// whole when it starts.
pub async fn send(
    upstream: &Arc<Upstream>,
    worker: usize,
    endpoint: usize,
    req: Request<RequestBody>,
    added: &Added<'_>,
    started: Instant,
    limit: Duration,
) -> Result<Sent, ProxyError> {
    let mut lease = Lease::begin(upstream, worker, endpoint)?;
    let pool = upstream.pool(worker, endpoint);
    let stats = &upstream.stats;
    match upstream.config.protocol {
        UpstreamProtocol::Http1 => {
            let (head, body) = req.into_parts();
            // A pooled connection the upstream closed just as the request went
            // out fails with nothing received. An idempotent request without a
            // body (nothing of it consumed) then goes once more on another
            // connection (RFC 9112 §9.3.1): the upstream may also have read
            // it and closed without answering, which is why only once.
            let mut resend = body.is_end_stream() && head.method.is_idempotent();
            let mut body = Some(body);
            // The response head is due `limit` after the request is first
            // handed to a connection, whichever connection it comes over.
            let mut due = None;
            // With `max_connections`, a request that finds neither an idle
            // connection nor a free slot waits for whichever comes first: a
            // connection returned to the idle list, or a slot freed by a
            // connection closing. Bounded by the request timeout.
            let mut deadline = None;
            let mut pending = None;
            // The first look is as the attempt starts: its start saves a
            // clock read.
            let mut first = Some(started);
            let permit = loop {
                // Registered before looking, so a connection returned between
                // the look and the wait still wakes this request.
                let returned = pool.returned.notified();
                let mut now = first.take().unwrap_or_else(Instant::now);
                while let Some(mut c) = pool.take_idle(upstream.config.pool.idle_timeout.0, now) {
                    let body = body.take().unwrap_or_else(RequestBody::empty);
                    let until = *due.get_or_insert(now + limit);
                    match c.conn.send(&head, added, body, until).await {
                        Ok((parts, decoder)) => {
                            http1::recycle(head.headers);
                            let response = Response::from_parts(parts, UpstreamBody::H1(decoder));
                            stats.connections_reused.fetch_add(1, Ordering::Relaxed);
                            let addr = c.addr;
                            lease.conn = Some(c);
                            return Ok(Sent {
                                response,
                                lease,
                                addr,
                            });
                        }
                        Err(h1::Error::Closed(_)) if resend => {
                            resend = false;
                            // The failed exchange took time: the next look
                            // judges idle ages as of now.
                            now = Instant::now();
                        }
                        Err(e) => return Err(h1_failed(e)),
                    }
                }
                let Some(sem) = &pool.limit else {
                    break None;
                };
                match sem.clone().try_acquire_owned() {
                    Ok(p) => break Some(p),
                    Err(TryAcquireError::Closed) => {
                        return Err(ProxyError::new(ErrorKind::Internal));
                    }
                    Err(TryAcquireError::NoPermits) => {}
                }
                if pending.is_none() {
                    let cap = upstream.config.circuit_breaker.max_pending;
                    pending = Some(
                        Held::take(&stats.pending, cap)
                            .ok_or_else(|| over_cap(upstream, Cap::Pending, cap))?,
                    );
                }
                // The waiting and dialling below are cold paths: boxed, so their
                // state does not weigh on every request's future.
                let until = *deadline.get_or_insert_with(|| Instant::now() + limit);
                match Box::pin(wait_for_slot(returned, sem, until)).await? {
                    Some(p) => break Some(p),
                    None => continue,
                }
            };
            drop(pending);
            let (io, addr, slot) = Box::pin(open(upstream, endpoint)).await?;
            let mut c = Box::new(Idle {
                conn: h1::Conn::new(io),
                addr,
                since: Instant::now(),
                _permit: permit,
                _slot: slot,
            });
            let body = body.take().unwrap_or_else(RequestBody::empty);
            let until = *due.get_or_insert_with(|| Instant::now() + limit);
            let (parts, decoder) = c
                .conn
                .send(&head, added, body, until)
                .await
                .map_err(h1_failed)?;
            http1::recycle(head.headers);
            let response = Response::from_parts(parts, UpstreamBody::H1(decoder));
            lease.conn = Some(c);
            Ok(Sent {
                response,
                lease,
                addr,
            })
        }
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            // Boxed: hyper's HTTP/2 client futures would otherwise weigh on
            // every HTTP/1.1 request's future, copied at each `.await`.
            let mut req = req;
            added.append_to(req.headers_mut());
            Box::pin(exchange_h2(upstream, pool, lease, req, limit)).await
        }
    }
}

/// An exchange over the endpoint's shared HTTP/2 connection.
async fn exchange_h2(
    upstream: &Arc<Upstream>,
    pool: &EndpointPool,
    lease: Lease,
    req: Request<RequestBody>,
    limit: Duration,
) -> Result<Sent, ProxyError> {
    let (mut tx, addr) = {
        let mut slot = pool.h2.lock().await;
        match slot.as_ref() {
            Some((tx, addr)) if !tx.is_closed() => {
                upstream
                    .stats
                    .connections_reused
                    .fetch_add(1, Ordering::Relaxed);
                (tx.clone(), *addr)
            }
            _ => {
                let (tx, addr) = Box::pin(dial_h2(upstream, lease.endpoint)).await?;
                *slot = Some((tx.clone(), addr));
                (tx, addr)
            }
        }
    };
    let response = timeout(limit, async {
        tx.ready().await?;
        tx.send_request(req).await
    })
    .await
    .map_err(|_| ProxyError::new(ErrorKind::UpstreamTimeout))?
    .map_err(upstream_failed)?
    .map(UpstreamBody::H2);
    Ok(Sent {
        response,
        lease,
        addr,
    })
}

/// Waits for a connection to come back to the idle list (`None`: look again)
/// or for a free connection slot, until `deadline`.
async fn wait_for_slot(
    returned: Notified<'_>,
    sem: &Arc<Semaphore>,
    deadline: Instant,
) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
    tokio::select! {
        () = returned => Ok(None),
        p = sem.clone().acquire_owned() => p
            .map(Some)
            .map_err(|_| ProxyError::new(ErrorKind::Internal)),
        () = tokio::time::sleep_until(deadline) => {
            // Nothing was sent: any method may be retried, and the endpoint
            // is not to blame.
            let mut e = ProxyError::new(ErrorKind::UpstreamTimeout)
                .context("waiting for a connection slot");
            e.retry = Retry::Safe;
            Err(e)
        }
    }
}

/// Connects to an endpoint for a new pooled connection, with the TLS
/// handshake when the upstream has `tls`, unless the upstream is at
/// `circuit_breaker.max_connections`; the returned slot is held for the
/// connection's life.
async fn open(
    upstream: &Upstream,
    endpoint: usize,
) -> Result<(Io, SocketAddr, Held<Arc<AtomicU32>>), ProxyError> {
    let stats = &upstream.stats;
    let cap = upstream.config.circuit_breaker.max_connections;
    let slot = Held::take(stats.connections.clone(), cap)
        .ok_or_else(|| over_cap(upstream, Cap::Connections, cap))?;
    let started = Instant::now();
    let limit = upstream.config.timeouts.connect.0;
    let ep = &upstream.endpoints[endpoint];
    let (stream, addr) = connect(ep, limit).await?;
    let transport = if upstream.config.tls.is_none() {
        Io::Plain(stream)
    } else {
        // Never fall back to cleartext towards an upstream configured for TLS.
        let tls = upstream.tls().ok_or_else(|| {
            ProxyError::new(ErrorKind::Internal).context(format_args!(
                "upstream {}: TLS is not compiled",
                upstream.name
            ))
        })?;
        // One budget for TCP and TLS together: `timeouts.connect` is the time
        // to a usable connection.
        let left = limit.saturating_sub(started.elapsed());
        match timeout(left, tls.handshake(endpoint, &ep.address, stream)).await {
            Err(_) => {
                return Err(ProxyError::new(ErrorKind::ConnectTimeout)
                    .context(format_args!("TLS handshake with {}", ep.address)));
            }
            Ok(stream) => Io::Tls(Box::new(stream?)),
        }
    };
    stats.connect_duration.observe(started.elapsed());
    stats.connections_opened.fetch_add(1, Ordering::Relaxed);
    Ok((transport, addr, slot))
}

/// Opens a new HTTP/2 connection to `endpoint`: h2c, or h2 over TLS.
async fn dial_h2(
    upstream: &Upstream,
    endpoint: usize,
) -> Result<(http2::SendRequest<RequestBody>, SocketAddr), ProxyError> {
    let (transport, addr, slot) = open(upstream, endpoint).await?;
    let tx = match transport {
        Io::Plain(s) => handshake_h2(s, slot).await?,
        Io::Tls(s) => handshake_h2(*s, slot).await?,
    };
    Ok((tx, addr))
}

/// Starts HTTP/2 on `stream` and spawns its connection task, which holds
/// the connection `slot`.
async fn handshake_h2<S>(
    stream: S,
    slot: Held<Arc<AtomicU32>>,
) -> Result<http2::SendRequest<RequestBody>, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::new(ErrorKind::ConnectFailed).context(e))?;
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = std::pin::pin!(conn).await {
            tracing::debug!(error = %e, "upstream h2 connection ended");
        }
    });
    Ok(tx)
}

/// The error for an exchange failed by the client's body.
fn client_fault(fault: ClientFault, e: &ProxyError) -> ProxyError {
    let kind = match fault {
        ClientFault::TooLarge => ErrorKind::PayloadTooLarge,
        ClientFault::Stalled => ErrorKind::RequestTimeout,
        ClientFault::Failed => ErrorKind::ClientFailed,
    };
    let mut err = ProxyError::new(kind);
    err.retry = Retry::Never;
    err.context = e.context.clone();
    err
}

/// The error for a failed HTTP/1.1 exchange.
fn h1_failed(e: h1::Error) -> ProxyError {
    let io = match &e {
        h1::Error::TimedOut => return ProxyError::new(ErrorKind::UpstreamTimeout),
        h1::Error::Body(b) => {
            let mut err = ProxyError::new(client_body_kind(&**b)).context(&e);
            err.retry = Retry::Never;
            return err;
        }
        h1::Error::Closed(io) | h1::Error::Io(io) => Some(io),
        h1::Error::Invalid(_) => None,
    };
    if let Some(tls) = io.and_then(|io| super::tls::refused_after_handshake(io)) {
        return ProxyError::new(ErrorKind::ConnectFailed)
            .context(format_args!("TLS handshake refused by the upstream: {tls}"));
    }
    ProxyError::new(ErrorKind::UpstreamFailed).context(&e)
}

/// What a failure of the client's request body is: a stall (408), a body
/// over the route's size (413), or any other client failure.
fn client_body_kind(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    if e.is::<IdleTimeout>() {
        ErrorKind::RequestTimeout
    } else if e.is::<BodyTooLarge>() {
        ErrorKind::PayloadTooLarge
    } else {
        ErrorKind::ClientFailed
    }
}

fn upstream_failed(e: hyper::Error) -> ProxyError {
    if let Some(body) = client_body_error(&e) {
        // Reading the client's body failed (malformed chunking, a stall, a
        // reset, too large): the client's fault, not the upstream's.
        return ProxyError::new(client_body_kind(body)).context(&e);
    }
    if let Some(tls) = super::tls::refused_after_handshake(&e) {
        return ProxyError::new(ErrorKind::ConnectFailed)
            .context(format_args!("TLS handshake refused by the upstream: {tls}"));
    }
    let mut err = ProxyError::new(ErrorKind::UpstreamFailed).context(&e);
    if e.is_canceled() || refused_stream(&e) {
        // The connection closed before the request was written, or the
        // upstream refused the stream: it did not process the request.
        err.retry = Retry::Safe;
    }
    err
}

/// Whether `e` is an HTTP/2 REFUSED_STREAM (RFC 9113 §8.7: not processed).
fn refused_stream(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// The request body's error, when `e` is hyper reporting that the client's
/// body (streamed through [`RequestBody`]) failed, rather than the upstream.
fn client_body_error(e: &hyper::Error) -> Option<&(dyn std::error::Error + 'static)> {
    use std::error::Error as _;
    e.source().filter(|s| {
        e.is_user() && (s.is::<hyper::Error>() || s.is::<IdleTimeout>() || s.is::<BodyTooLarge>())
    })
}

/// Connects to the first address of `ep` that accepts, within `limit` in total.
pub(crate) async fn connect(
    ep: &super::Endpoint,
    limit: Duration,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let addrs = ep.addrs.load_full();
    if addrs.is_empty() {
        return Err(ProxyError::new(ErrorKind::NoEndpoint)
            .context(format_args!("endpoint {} has no address", ep.address)));
    }
    let attempt = async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for &addr in addrs.iter() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, addr));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match timeout(limit, attempt).await {
        Err(_) => Err(ProxyError::new(ErrorKind::ConnectTimeout)
            .context(format_args!("connecting to {}", ep.address))),
        Ok(Err(e)) => Err(ProxyError::new(ErrorKind::ConnectFailed)
            .context(format_args!("connecting to {}: {e}", ep.address))),
        Ok(Ok(s)) => Ok(s),
    }
}
