//! Serving one client connection: HTTP/1.1 and h2c on the same port, with the
//! configured header limits and timeouts, and a graceful close when draining.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Shared;
use super::h1_guard::Guarded;
use super::send_timeout::SendTimeout;
use crate::observe::metrics::OpenConnection;
use crate::pipeline::{self, ConnInfo};

/// Where a connection arrived.
pub struct Place {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The worker that accepted it.
    pub worker: usize,
    /// The listener's open connections gauge.
    pub connections: Gauge,
}

/// Serves `stream` until it closes, or closes it gracefully when `drain` fires.
pub async fn serve(
    stream: TcpStream,
    place: Place,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) {
    let _active = Active::track(&shared.active);
    let _open = OpenConnection::new(place.connections);
    let gw = shared.current.load_full();
    let limits = &gw.config.limits;
    // hyper's header read timeout starts with the first byte, and protocol
    // detection waits without one: a connection that sends nothing would be
    // held forever.
    let mut first = [0u8; 1];
    tokio::select! {
        read = tokio::time::timeout(limits.header_read_timeout.0, stream.peek(&mut first)) => {
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return;
            }
        }
        () = super::drained(&mut drain) => return,
    }
    let stream = SendTimeout::new(stream, limits.send_timeout.0);
    let (stream, verdicts) = Guarded::new(stream, limits.max_header_bytes.0);
    let info = Arc::new(ConnInfo {
        peer: place.peer,
        peer_ip: crate::proxy::headers::ip_value(place.peer.ip()),
        listener: place.listener,
        worker: place.worker,
        scheme: "http",
        verdicts,
        active: shared.active.clone(),
    });
    let builder = {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout.0)
            .max_buf_size(
                usize::try_from(limits.max_header_bytes.0)
                    .unwrap_or(usize::MAX)
                    .max(8192),
            )
            .max_headers(limits.max_headers);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes.0).unwrap_or(u32::MAX));
        b
    };
    drop(gw);
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| {
        let gw = svc_shared.current.load_full();
        pipeline::handle(req, info.clone(), gw)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    if *drain.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    // Wait for the connection to end or the drain signal. The drain future is
    // polled once to register this task's waker (which never changes), and
    // after that only when the signal's version moved: a `select!` would poll
    // it on every wake-up of a busy connection.
    let signal = drain.clone();
    let mut drained = std::pin::pin!(super::drained(&mut drain));
    let mut registered = false;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(res));
        }
        if !registered || signal.has_changed().unwrap_or(true) {
            registered = true;
            if drained.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await;
    if let Some(res) = ended {
        if let Err(e) = res {
            tracing::debug!(error = %e, "client connection ended with an error");
        }
        return;
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "client connection ended with an error while draining");
    }
}

/// Counts as one open connection while alive; graceful shutdown waits for
/// the count to reach zero. An upgraded (WebSocket) tunnel holds one too, so
/// it outlives the HTTP connection that set it up but not the drain.
pub struct Active(Arc<AtomicUsize>);

impl Active {
    /// Starts counting on `counter`.
    pub fn track(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
