//! Connection pools, one per worker and endpoint: keep-alive HTTP/1.1
//! connections (idle list, idle timeout, per-endpoint cap) and one shared
//! HTTP/2 (h2c) connection.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, futures::Notified};
use tokio::time::{Instant, timeout};

use super::Upstream;
use crate::config::{PoolConfig, UpstreamProtocol};
use crate::error::{ErrorKind, ProxyError, Retry};
use crate::proxy::body::RequestBody;

struct Idle {
    tx: http1::SendRequest<RequestBody>,
    addr: SocketAddr,
    since: Instant,
    /// Held for the connection's life: it is what `max_connections` counts.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Connections to one endpoint from one worker.
pub struct EndpointPool {
    idle: Mutex<VecDeque<Idle>>,
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

    fn take_idle(&self, idle_timeout: Duration) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Most recently used first: it is the least likely to have been closed.
        while let Some(c) = idle.pop_back() {
            if !c.tx.is_closed() && c.since.elapsed() < idle_timeout {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, c: Idle) {
        if self.max_idle == 0 || c.tx.is_closed() {
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
        idle.retain(|c| !c.tx.is_closed() && c.since.elapsed() < idle_timeout);
    }
}

/// A request's claim on an endpoint: counts as in flight until finished, and
/// for HTTP/1.1 holds the connection until the response body has ended.
pub struct Lease {
    upstream: Arc<Upstream>,
    worker: usize,
    endpoint: usize,
    conn: Option<Idle>,
}

impl Lease {
    /// Ends the request. A connection whose exchange ended cleanly goes back
    /// to the pool; any other is closed.
    pub fn finish(mut self, clean: bool) {
        if let Some(c) = self.conn.take()
            && clean
        {
            self.upstream
                .pool(self.worker, self.endpoint)
                .put_idle(Idle {
                    since: Instant::now(),
                    ..c
                });
        }
    }

    /// Closes the connection instead of pooling it (after an upgrade).
    pub fn detach(mut self) {
        self.conn = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.upstream.end(self.endpoint);
    }
}

/// What a sent request gives back.
pub struct Sent {
    /// The upstream's response head and body.
    pub response: Response<Incoming>,
    /// The claim to release when the body is done.
    pub lease: Lease,
    /// The address the request went to.
    pub addr: SocketAddr,
}

/// Sends `req` to `endpoint` of `upstream` over a pooled connection.
pub async fn send(
    upstream: &Arc<Upstream>,
    worker: usize,
    endpoint: usize,
    req: Request<RequestBody>,
) -> Result<Sent, ProxyError> {
    upstream.begin(endpoint);
    let mut lease = Lease {
        upstream: upstream.clone(),
        worker,
        endpoint,
        conn: None,
    };
    let timeouts = &upstream.config.timeouts;
    let ep = &upstream.endpoints[endpoint];
    let pool = upstream.pool(worker, endpoint);
    match upstream.config.protocol {
        UpstreamProtocol::Http1 => {
            let mut req = req;
            // With `max_connections`, a request that finds neither an idle
            // connection nor a free slot waits for whichever comes first: a
            // connection returned to the idle list, or a slot freed by a
            // connection closing. Bounded by the request timeout.
            let mut deadline = None;
            let permit = loop {
                // Registered before looking, so a connection returned between
                // the look and the wait still wakes this request.
                let returned = pool.returned.notified();
                // A pooled connection may have been closed by the upstream just
                // now; hyper hands the request back when it was not sent, so try
                // the next.
                while let Some(mut c) = pool.take_idle(upstream.config.pool.idle_timeout.0) {
                    if c.tx.ready().await.is_err() {
                        continue;
                    }
                    let addr = c.addr;
                    match timeout(timeouts.request.0, c.tx.try_send_request(req)).await {
                        Err(_) => return Err(ProxyError::new(ErrorKind::UpstreamTimeout)),
                        Ok(Ok(response)) => {
                            lease.conn = Some(c);
                            return Ok(Sent {
                                response,
                                lease,
                                addr,
                            });
                        }
                        Ok(Err(mut e)) => match e.take_message() {
                            Some(r) => req = r,
                            None => return Err(upstream_failed(e.into_error())),
                        },
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
                // The waiting and dialling below are cold paths: boxed, so their
                // state does not weigh on every request's future.
                let until = *deadline.get_or_insert_with(|| Instant::now() + timeouts.request.0);
                match Box::pin(wait_for_slot(returned, sem, until)).await? {
                    Some(p) => break Some(p),
                    None => continue,
                }
            };
            let (mut tx, addr) = Box::pin(dial_h1(ep, timeouts.connect.0)).await?;
            let response = match timeout(timeouts.request.0, tx.send_request(req)).await {
                Err(_) => return Err(ProxyError::new(ErrorKind::UpstreamTimeout)),
                Ok(Err(e)) => return Err(upstream_failed(e)),
                Ok(Ok(r)) => r,
            };
            lease.conn = Some(Idle {
                tx,
                addr,
                since: Instant::now(),
                _permit: permit,
            });
            Ok(Sent {
                response,
                lease,
                addr,
            })
        }
        UpstreamProtocol::H2c => {
            let (mut tx, addr) = {
                let mut slot = pool.h2.lock().await;
                match slot.as_ref() {
                    Some((tx, addr)) if !tx.is_closed() => (tx.clone(), *addr),
                    _ => {
                        let (tx, addr) = Box::pin(dial_h2(ep, timeouts.connect.0)).await?;
                        *slot = Some((tx.clone(), addr));
                        (tx, addr)
                    }
                }
            };
            let response = timeout(timeouts.request.0, async {
                tx.ready().await?;
                tx.send_request(req).await
            })
            .await
            .map_err(|_| ProxyError::new(ErrorKind::UpstreamTimeout))?
            .map_err(upstream_failed)?;
            Ok(Sent {
                response,
                lease,
                addr,
            })
        }
    }
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
        () = tokio::time::sleep_until(deadline) => Err(ProxyError::new(ErrorKind::UpstreamTimeout)
            .context("waiting for a connection slot")),
    }
}

/// Opens a new HTTP/1.1 connection to `ep`.
async fn dial_h1(
    ep: &super::Endpoint,
    connect_timeout: Duration,
) -> Result<(http1::SendRequest<RequestBody>, SocketAddr), ProxyError> {
    let (stream, addr) = connect(ep, connect_timeout).await?;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::new(ErrorKind::ConnectFailed).context(e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok((tx, addr))
}

/// Opens a new h2c connection to `ep`.
async fn dial_h2(
    ep: &super::Endpoint,
    connect_timeout: Duration,
) -> Result<(http2::SendRequest<RequestBody>, SocketAddr), ProxyError> {
    let (stream, addr) = connect(ep, connect_timeout).await?;
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::new(ErrorKind::ConnectFailed).context(e))?;
    tokio::spawn(async move {
        if let Err(e) = std::pin::pin!(conn).await {
            tracing::debug!(error = %e, "upstream h2 connection ended");
        }
    });
    Ok((tx, addr))
}

fn upstream_failed(e: hyper::Error) -> ProxyError {
    if client_body_failed(&e) {
        // Reading the client's body failed (malformed chunking, a stall, a reset):
        // the client's fault, not the upstream's.
        return ProxyError::new(ErrorKind::ClientFailed).context(&e);
    }
    let mut err = ProxyError::new(ErrorKind::UpstreamFailed).context(&e);
    if e.is_canceled() {
        // The connection closed before the request was written.
        err.retry = Retry::Safe;
    }
    err
}

/// Whether `e` is hyper reporting that the request body (the client's body,
/// streamed through [`RequestBody`]) failed, rather than the upstream.
fn client_body_failed(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    e.is_user()
        && e.source()
            .is_some_and(|s| s.is::<hyper::Error>() || s.is::<crate::proxy::body::IdleTimeout>())
}

/// Connects to the first address of `ep` that accepts, within `limit` in total.
async fn connect(
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
