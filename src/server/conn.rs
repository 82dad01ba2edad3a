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
use super::h1;
use super::h1_guard::Guarded;
use super::limits;
use super::send_timeout::SendTimeout;
use crate::observe::metrics::OpenConnection;
use crate::pipeline::{self, ConnInfo};
use crate::proxy::body::ClientBody;

/// Where a connection arrived.
pub struct Place {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The worker that accepted it.
    pub worker: usize,
    /// The connection's slots under the listener's caps and in its gauge.
    pub slots: Arc<Slots>,
}

/// Serves `stream` until it closes, or closes it gracefully when `drain` fires.
pub async fn serve(
    stream: TcpStream,
    place: Place,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) {
    let _active = Active::track(&shared.active);
    let gw = shared.current.load_full();
    let limits = &gw.config.limits;
    let stream = SendTimeout::new(stream, limits.send_timeout.0);
    let listener = gw.listeners.iter().find(|l| l.name == place.listener);
    let Some(tls) = listener.and_then(|l| l.tls.clone()) else {
        let tls = TlsParts {
            scheme: "http",
            tls: None,
            redirect_https: listener.and_then(|l| l.redirect_https.clone()),
        };
        return serve_http(stream, place, shared, drain, gw, tls).await;
    };
    // TLS: the handshake is bounded like a request head, so that a client
    // that stalls in it cannot hold the connection.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
    let handshake = tokio::select! {
        done = tokio::time::timeout(limits.header_read_timeout.0, acceptor.accept(stream)) => done,
        () = super::drained(&mut drain) => return,
    };
    let stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, peer = %place.peer, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %place.peer, "TLS handshake timed out");
            return;
        }
    };
    let parts = TlsParts {
        scheme: "https",
        tls: Some(tls.conn_info(stream.get_ref().1)),
        redirect_https: None,
    };
    serve_http(stream, place, shared, drain, gw, parts).await;
}

/// What differs between a plain and a TLS connection once the handshake is done.
struct TlsParts {
    scheme: &'static str,
    tls: Option<crate::tls::TlsConn>,
    redirect_https: Option<crate::config::RedirectHttps>,
}

/// Serves HTTP/1.1 and HTTP/2 on `stream` (plain, or decrypted TLS).
async fn serve_http<S>(
    stream: S,
    place: Place,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
    gw: Arc<crate::gateway::Gateway>,
    parts: TlsParts,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The limits in force when the connection was accepted hold for its life.
    let limits = gw.config.limits.clone();
    drop(gw);
    let info = Arc::new(ConnInfo {
        peer: place.peer,
        peer_ip: crate::proxy::headers::ip_value(place.peer.ip()),
        listener: place.listener,
        worker: place.worker,
        scheme: parts.scheme,
        active: shared.active.clone(),
        tls: parts.tls,
        redirect_https: parts.redirect_https,
        slots: place.slots,
    });
    let fast = h1::Limits {
        max_head: usize::try_from(limits.max_header_bytes.0)
            .unwrap_or(usize::MAX)
            .min(h1::MAX_HEAD),
        header_read_timeout: limits.header_read_timeout.0,
        idle_timeout: limits.idle_timeout.0,
    };
    let (stream, read) = match h1::serve(stream, &info, &shared, &mut drain, fast).await {
        h1::Handoff::Closed => return,
        h1::Handoff::Hyper(stream, read) => (stream, read),
    };
    let (stream, verdicts) = Guarded::new(stream, read, limits.max_header_bytes.0);
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
        // The HTTP/2 abuse defences are h2's, set here explicitly rather than
        // left to defaults (see docs/configuration.md, "HTTP/2 abuse"). The
        // header list cap also bounds a CONTINUATION flood: h2 refuses more
        // CONTINUATION frames than that size needs, with ENHANCE_YOUR_CALM.
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes.0).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .max_send_buf_size(H2_MAX_SEND_BUF);
        b
    };
    let idle = limits::IdleClock::new(Arc::new(limits::InFlight::default()), limits.idle_timeout.0);
    let mut stalls = limits::StallWatch::new(idle.in_flight(), limits.send_timeout.0);
    let listener = info.listener.clone();
    let svc_shared = shared.clone();
    let in_flight = idle.in_flight();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gw = svc_shared.current.load_full();
        // HTTP/2 streams run in tasks of their own.
        let h2 = req.version() == http::Version::HTTP_2;
        let guard = in_flight.enter(h2);
        // hyper serves HTTP/1.x requests in order: the n-th verdict is this one's.
        let flaw = if h2 { None } else { verdicts.next_request() };
        // Boxed: hyper moves a service's future whole, several times per
        // request (into its HTTP/1 dispatcher, into each HTTP/2 stream's
        // task and through tokio's spawn), and the request's future is
        // several KiB. The fast path (`h1.rs`) pins it in place instead.
        let handled = Box::pin(pipeline::handle(
            req.map(ClientBody::Hyper),
            info.clone(),
            gw,
            flaw,
        ));
        async move {
            let resp = handled.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| limits::Tracked::new(b, guard)))
        }
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
    let mut idle = idle;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(Ended::Closed(res));
        }
        if idle.poll_expired(cx) {
            // Idle past `limits.idle_timeout`: HTTP/1.1 closes now, HTTP/2
            // sends GOAWAY; either way the connection future then ends.
            conn.as_mut().graceful_shutdown();
            if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                return Poll::Ready(Ended::Closed(res));
            }
        }
        if stalls.poll_stalled(cx) {
            return Poll::Ready(Ended::Stalled);
        }
        if !registered || signal.has_changed().unwrap_or(true) {
            registered = true;
            if drained.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Drain);
            }
        }
        Poll::Pending
    })
    .await;
    match ended {
        Ended::Closed(Err(e)) => {
            count_abuse(&shared, &listener, &*e);
            tracing::debug!(error = %e, "client connection ended with an error");
            return;
        }
        Ended::Closed(Ok(())) => return,
        Ended::Stalled => {
            // An HTTP/2 client takes no data of a response: no graceful
            // GOAWAY (it would wait on the stuck streams). Dropping the
            // connection drops its streams, their bodies and upstream leases.
            tracing::debug!(
                listener = &*listener,
                "client connection closed: a response stalled past limits.send_timeout"
            );
            return;
        }
        Ended::Drain => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "client connection ended with an error while draining");
    }
}

/// How the wait on a client connection ended.
enum Ended<E> {
    /// The connection future finished.
    Closed(Result<(), E>),
    /// A response stalled (see [`limits::StallWatch`]): close at once.
    Stalled,
    /// The drain signal fired.
    Drain,
}

/// Streams a client may reset before the server accepts them, over the
/// connection's life, before it gets GOAWAY(ENHANCE_YOUR_CALM): the rapid
/// reset defence (CVE-2023-44487). h2's default, stated here.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for protocol errors before the connection
/// gets GOAWAY(ENHANCE_YOUR_CALM). hyper's default, stated here.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Bytes buffered per stream for a client that does not read. hyper's default.
const H2_MAX_SEND_BUF: usize = 400 * 1024;

/// Counts a connection the gateway closed for abuse or a protocol violation.
fn count_abuse(shared: &Shared, listener: &str, e: &(dyn std::error::Error + 'static)) {
    if let Some(reason) = limits::abuse_reason(e) {
        tracing::debug!(listener, reason, "client connection closed for abuse");
        shared
            .current
            .load()
            .metrics
            .listener_aborted(listener, reason)
            .inc();
    }
}

/// A connection's slot under the listener's `max_connections` and
/// `max_connections_per_ip`, and its count in the listener's open connections
/// gauge. Shared with a WebSocket tunnel the connection's socket is handed
/// to, so that both are given back only when the socket closes.
pub struct Slots {
    _permit: limits::Permit,
    _open: OpenConnection,
}

impl Slots {
    /// Holds `permit` and counts one connection on `gauge` until dropped.
    pub fn new(permit: limits::Permit, gauge: Gauge) -> Self {
        Self {
            _permit: permit,
            _open: OpenConnection::new(gauge),
        }
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slots")
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
