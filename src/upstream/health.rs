//! Active health checks: every endpoint of an upstream with `health_check` is
//! probed on the control runtime (HTTP request, TCP connect, or gRPC
//! `grpc.health.v1.Health/Check`), and its verdict is stored in the endpoint's
//! atomic state, the only thing the checks share with the request path.
//!
//! Endpoints start healthy (as in NGINX) so that a new or reloaded upstream
//! serves at once; the first check runs immediately, so an endpoint that is
//! down leaves the balancer after `unhealthy_threshold - 1` intervals. After
//! that a verdict flips only after `healthy_threshold` passes, or
//! `unhealthy_threshold` failures, in a row.
//!
//! The checkers of an upstream live as long as that exact `Arc<Upstream>` is
//! in the current snapshot: a reload that keeps the upstream (its definition
//! unchanged) keeps its checkers, streaks and verdicts; a changed upstream is a
//! new `Arc` with fresh state, and gets new checkers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST, TE, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

use super::tls::TlsClient;
use super::{Endpoint, Upstream, pool};
use crate::config::{HealthCheckConfig, HealthCheckKind, StatusRange, UpstreamProtocol};
use crate::gateway::Gateway;

/// How often the supervisor looks for upstreams added or replaced by a reload.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Most response body bytes read from an HTTP check before the connection is
/// dropped: enough for any status page, bounded against a streaming one.
const MAX_DRAIN: usize = 64 * 1024;
/// Most bytes accepted for a gRPC health response (it is a few bytes).
const MAX_GRPC_RESPONSE: usize = 4 * 1024;
/// `User-Agent` of every HTTP and gRPC check, so upstreams can tell them apart.
const USER_AGENT_VALUE: &str = "portico-health-check";
/// The gRPC health-checking method.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Keeps one checker per endpoint of every upstream in the current snapshot
/// that has `health_check`; runs for the life of the process. `snapshot`
/// returns the current snapshot.
pub async fn supervise(snapshot: impl Fn() -> Arc<Gateway> + Send) {
    // By upstream name: the upstream checked, and its checkers (dropping the
    // set aborts them).
    let mut running: HashMap<String, (Weak<Upstream>, JoinSet<()>)> = HashMap::new();
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let gw = snapshot();
        running.retain(|name, (checked, _)| {
            gw.upstreams
                .get(name)
                .is_some_and(|up| std::ptr::eq(checked.as_ptr(), Arc::as_ptr(up)))
        });
        for (name, up) in &gw.upstreams {
            if running.contains_key(name) {
                continue;
            }
            let Some(cfg) = &up.config.health_check else {
                continue;
            };
            let probe = match Probe::new(cfg, up.config.protocol) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    // Validation rules this out; the endpoints stay healthy.
                    tracing::error!(upstream = %name, error = %e, "health check not started");
                    continue;
                }
            };
            let mut checkers = JoinSet::new();
            for index in 0..up.endpoints.len() {
                checkers.spawn(check_endpoint(Arc::downgrade(up), index, probe.clone()));
            }
            tracing::debug!(
                upstream = %name,
                endpoints = up.endpoints.len(),
                "health checks started"
            );
            running.insert(name.clone(), (Arc::downgrade(up), checkers));
        }
    }
}

/// Checks one endpoint until its upstream is dropped (or the supervisor aborts
/// the task). The upstream is held only for the length of one check, which the
/// timeout bounds.
async fn check_endpoint(upstream: Weak<Upstream>, index: usize, probe: Arc<Probe>) {
    let mut streak = Streak::default();
    loop {
        let Some(up) = upstream.upgrade() else {
            return;
        };
        let (Some(endpoint), Some(state)) = (up.endpoints.get(index), up.states.get(index)) else {
            return;
        };
        let tls = up.tls();
        let verdict = probe.check_over(endpoint, index, tls.as_deref()).await;
        if let Err(reason) = &verdict {
            tracing::debug!(
                upstream = %up.name,
                endpoint = %endpoint.address,
                %reason,
                "health check failed"
            );
        }
        if let Some(healthy) = streak.record(verdict.is_ok(), state.is_healthy(), &probe.thresholds)
            && state.set_healthy(healthy)
        {
            up.stats.health_transitions.fetch_add(1, Ordering::Relaxed);
            match verdict {
                Ok(()) => tracing::info!(
                    upstream = %up.name,
                    endpoint = %endpoint.address,
                    "endpoint became healthy"
                ),
                Err(reason) => tracing::warn!(
                    upstream = %up.name,
                    endpoint = %endpoint.address,
                    %reason,
                    "endpoint became unhealthy"
                ),
            }
        }
        drop(up);
        tokio::time::sleep(probe.pause()).await;
    }
}

/// Consecutive passes and failures needed to flip a verdict.
#[derive(Debug, Clone, Copy)]
struct Thresholds {
    healthy: u32,
    unhealthy: u32,
}

/// The current run of equal results of one endpoint's checks.
#[derive(Debug, Default)]
struct Streak {
    passes: u32,
    failures: u32,
}

impl Streak {
    /// Counts one result against the endpoint's verdict `healthy`; returns the
    /// new verdict when the run has reached the threshold that flips it.
    fn record(&mut self, passed: bool, healthy: bool, t: &Thresholds) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
        }
        if healthy && self.failures >= t.unhealthy {
            Some(false)
        } else if !healthy && self.passes >= t.healthy {
            Some(true)
        } else {
            None
        }
    }
}

/// The result of one check; a failure carries its reason, for the log.
type Verdict = Result<(), String>;

/// One upstream's health check, parsed once and shared by its endpoints' checkers.
struct Probe {
    kind: ProbeKind,
    /// `Host` / `:authority`; the endpoint's address when unset.
    host: Option<Authority>,
    timeout: Duration,
    interval: Duration,
    jitter: Duration,
    thresholds: Thresholds,
}

/// What a check does, with its request prepared.
enum ProbeKind {
    Tcp,
    Http {
        method: Method,
        path: PathAndQuery,
        expected: Vec<StatusRange>,
        h2: bool,
    },
    /// The framed `HealthCheckRequest`, sent as is every time.
    Grpc {
        request: Bytes,
    },
}

impl Probe {
    fn new(cfg: &HealthCheckConfig, protocol: UpstreamProtocol) -> Result<Self, String> {
        let kind = match cfg.kind {
            HealthCheckKind::Tcp => ProbeKind::Tcp,
            HealthCheckKind::Http => ProbeKind::Http {
                method: Method::from_str(&cfg.method).map_err(|e| format!("method: {e}"))?,
                path: PathAndQuery::from_str(&cfg.path).map_err(|e| format!("path: {e}"))?,
                expected: cfg.expected_statuses.clone(),
                h2: matches!(protocol, UpstreamProtocol::H2c | UpstreamProtocol::H2),
            },
            HealthCheckKind::Grpc => ProbeKind::Grpc {
                request: grpc_request(&cfg.grpc_service)?,
            },
        };
        let host = cfg
            .host
            .as_deref()
            .map(Authority::from_str)
            .transpose()
            .map_err(|e| format!("host: {e}"))?;
        Ok(Self {
            kind,
            host,
            timeout: cfg.timeout.0,
            interval: cfg.interval.0,
            jitter: cfg.jitter.0,
            thresholds: Thresholds {
                healthy: cfg.healthy_threshold,
                unhealthy: cfg.unhealthy_threshold,
            },
        })
    }

    /// The wait before the next check: the interval plus a random share of the
    /// jitter, so that checks of many endpoints do not move in lockstep.
    fn pause(&self) -> Duration {
        self.interval + self.jitter.mul_f64(fastrand::f64())
    }

    /// Runs one check of `ep` over plain TCP.
    #[cfg(test)]
    async fn check(&self, ep: &Endpoint) -> Verdict {
        self.check_over(ep, 0, None).await
    }

    /// Runs one check of `ep` (endpoint `index` of its upstream), bounded by
    /// the timeout; HTTP and gRPC checks go over TLS when `tls` is given
    /// (a TCP check only connects). Every check opens a new connection: it
    /// tests connectivity too, and keeps nothing between checks.
    async fn check_over(&self, ep: &Endpoint, index: usize, tls: Option<&TlsClient>) -> Verdict {
        let attempt = async {
            let (stream, _) = pool::connect(ep, self.timeout)
                .await
                .map_err(|e| e.to_string())?;
            // Not the request path: one boxed stream type for both cases.
            let stream: Box<dyn Stream> = match tls {
                Some(tls) if !matches!(self.kind, ProbeKind::Tcp) => Box::new(
                    tls.handshake(index, &ep.address, stream)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                _ => Box::new(stream),
            };
            let tls = tls.is_some();
            let authority = || match &self.host {
                Some(h) => Ok(h.clone()),
                None => Authority::try_from(ep.host_header.as_bytes())
                    .map_err(|e| format!("endpoint address as authority: {e}")),
            };
            match &self.kind {
                ProbeKind::Tcp => Ok(()),
                ProbeKind::Http {
                    method,
                    path,
                    expected,
                    h2,
                } => {
                    let req = request(method.clone(), authority()?, path.clone(), *h2, tls)
                        .body(Full::default())
                        .map_err(|e| e.to_string())?;
                    let status = round_trip(stream, *h2, req, async |resp| {
                        let status = resp.status();
                        drain(resp.into_body()).await;
                        Ok(status)
                    })
                    .await?;
                    if expected.iter().any(|r| r.contains(status.as_u16())) {
                        Ok(())
                    } else {
                        Err(format!("status {}", status.as_u16()))
                    }
                }
                ProbeKind::Grpc { request: message } => {
                    let req = request(
                        Method::POST,
                        authority()?,
                        PathAndQuery::from_static(GRPC_HEALTH_CHECK),
                        true,
                        tls,
                    )
                    .header(CONTENT_TYPE, "application/grpc")
                    .header(TE, "trailers")
                    .body(Full::new(message.clone()))
                    .map_err(|e| e.to_string())?;
                    round_trip(stream, true, req, async |resp| {
                        let (head, body) = resp.into_parts();
                        let body = Limited::new(body, MAX_GRPC_RESPONSE)
                            .collect()
                            .await
                            .map_err(|e| format!("reading the response: {e}"))?;
                        let trailers = body.trailers().cloned();
                        grpc_verdict(
                            head.status,
                            &head.headers,
                            trailers.as_ref(),
                            &body.to_bytes(),
                        )
                    })
                    .await
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(verdict) => verdict,
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }
}

/// A check request's head: origin-form, `Host` and `Connection: close` for
/// HTTP/1.1 (the connection serves one check), absolute URI (hence
/// `:authority`) for HTTP/2.
fn request(
    method: Method,
    authority: Authority,
    path: PathAndQuery,
    h2: bool,
    tls: bool,
) -> http::request::Builder {
    let b = Request::builder()
        .method(method)
        .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    if h2 {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        b.version(Version::HTTP_2).uri(uri)
    } else {
        b.version(Version::HTTP_11)
            .uri(Uri::from(path))
            .header(HOST, authority.as_str())
            .header(CONNECTION, "close")
    }
}

/// Sends `req` over `stream` (HTTP/1.1, or HTTP/2 with prior knowledge) and
/// hands the response to `read`. The connection is driven in this task, not
/// spawned, so that a check dropped at its timeout closes it.
async fn round_trip<T>(
    stream: Box<dyn Stream>,
    h2: bool,
    req: Request<Full<Bytes>>,
    read: impl AsyncFnOnce(Response<Incoming>) -> Result<T, String>,
) -> Result<T, String> {
    let io = TokioIo::new(stream);
    let failed = |e: hyper::Error| e.to_string();
    if h2 {
        let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(failed)?;
        drive(conn, async {
            read(tx.send_request(req).await.map_err(failed)?).await
        })
        .await
    } else {
        let (mut tx, conn) = http1::handshake(io).await.map_err(failed)?;
        drive(conn, async {
            read(tx.send_request(req).await.map_err(failed)?).await
        })
        .await
    }
}

/// A check's connection: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// Polls the connection `conn` alongside `exchange` until the exchange is done.
/// A connection that ends first is left alone: the exchange then fails or
/// finishes with what was already received.
pub(crate) async fn drive<T, E: Display>(
    conn: impl Future<Output = Result<(), E>>,
    exchange: impl Future<Output = T>,
) -> T {
    let conn = async {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection ended");
        }
        std::future::pending::<Infallible>().await
    };
    tokio::select! {
        biased;
        out = exchange => out,
        never = conn => match never {},
    }
}

/// Reads and discards up to [`MAX_DRAIN`] body bytes, so that a small answer
/// is consumed whole before the connection closes.
async fn drain(mut body: Incoming) {
    let mut left = MAX_DRAIN;
    while left > 0 {
        match body.frame().await {
            Some(Ok(frame)) => left = left.saturating_sub(frame.data_ref().map_or(0, Bytes::len)),
            _ => return,
        }
    }
}

/// The framed gRPC message `HealthCheckRequest { string service = 1; }`.
fn grpc_request(service: &str) -> Result<Bytes, String> {
    let mut message = Vec::with_capacity(service.len() + 11);
    // proto3 leaves a default (empty) string out.
    if !service.is_empty() {
        message.push(0x0A); // field 1, wire type 2 (length-delimited)
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let len = u32::try_from(message.len()).map_err(|_| "grpc_service is too long".to_string())?;
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0); // not compressed
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&message);
    Ok(frame.into())
}

/// Whether a `grpc.health.v1.Health/Check` response says SERVING. The status
/// is in the trailers, or in the headers of a trailers-only response.
fn grpc_verdict(
    status: StatusCode,
    headers: &HeaderMap,
    trailers: Option<&HeaderMap>,
    body: &[u8],
) -> Verdict {
    if status != StatusCode::OK {
        return Err(format!("status {}", status.as_u16()));
    }
    let outcome = trailers
        .filter(|t| t.contains_key("grpc-status"))
        .unwrap_or(headers);
    let grpc_status = outcome.get("grpc-status").ok_or("no grpc-status")?;
    if grpc_status != "0" {
        let code = String::from_utf8_lossy(grpc_status.as_bytes());
        return Err(match outcome.get("grpc-message") {
            Some(m) => format!(
                "grpc-status {code}: {}",
                String::from_utf8_lossy(m.as_bytes())
            ),
            None => format!("grpc-status {code}"),
        });
    }
    let Some((&[compressed, a, b, c, d], rest)) = body.split_first_chunk::<5>() else {
        return Err("no response message".into());
    };
    if compressed != 0 {
        return Err("compressed response message".into());
    }
    let len = u32::from_be_bytes([a, b, c, d]) as usize;
    let message = rest.get(..len).ok_or("truncated response message")?;
    match serving_status(message) {
        Some(SERVING) => Ok(()),
        Some(other) => Err(format!(
            "serving status {other} ({})",
            match other {
                0 => "UNKNOWN",
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "not defined",
            }
        )),
        None => Err("malformed HealthCheckResponse".into()),
    }
}

/// `HealthCheckResponse { ServingStatus status = 1; }`: the status (0,
/// UNKNOWN, when absent), or `None` when the message is malformed.
/// Unknown fields are skipped, as protobuf requires.
fn serving_status(mut message: &[u8]) -> Option<u64> {
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        let (field, wire_type) = (key >> 3, key & 7);
        let skip = match (field, wire_type) {
            (0, _) | (1, 1..) => return None,
            (1, 0) => {
                status = read_varint(&mut message)?;
                0
            }
            (_, 0) => {
                read_varint(&mut message)?;
                0
            }
            (_, 1) => 8,
            (_, 2) => usize::try_from(read_varint(&mut message)?).ok()?,
            (_, 5) => 4,
            _ => return None,
        };
        message = message.get(skip..)?;
    }
    Some(status)
}

/// Appends `v` as a protobuf base-128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a protobuf varint off the front of `buf`: at most ten bytes, the
/// last of which may only carry bit 63.
fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::SocketAddr;

    use arc_swap::ArcSwap;
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn config(yaml: &str) -> HealthCheckConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    /// A server answering every request with `reply`, over HTTP/1.1 and h2c.
    async fn serve(reply: fn(&Request<Incoming>) -> Response<Full<Bytes>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| async move { Ok::<_, Infallible>(reply(&req)) });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// An address where nothing listens.
    async fn closed_port() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn http_check_passes_on_an_expected_status() {
        let addr = serve(|req| {
            let status = match req.uri().path() {
                "/healthz" => 204,
                "/teapot" => 418,
                _ => 404,
            };
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"body")))
                .unwrap()
        })
        .await;
        let ep = Endpoint::new(&addr.to_string());
        for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::H2c] {
            let check = |yaml: &str| Probe::new(&config(yaml), protocol).unwrap();
            assert_eq!(
                check("path: /healthz").check(&ep).await,
                Ok(()),
                "{protocol:?}"
            );
            assert_eq!(
                check("path: /other").check(&ep).await,
                Err("status 404".into()),
                "{protocol:?}"
            );
            let teapot = "path: /teapot\nexpected_statuses: [204, 400-418]";
            assert_eq!(check(teapot).check(&ep).await, Ok(()), "{protocol:?}");
        }
    }

    #[tokio::test]
    async fn tcp_check_and_missing_addresses() {
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = Probe::new(&config("type: tcp"), UpstreamProtocol::Http1).unwrap();
        let ep = Endpoint::new(&open.local_addr().unwrap().to_string());
        assert_eq!(tcp.check(&ep).await, Ok(()));
        let ep = Endpoint::new(&closed_port().await.to_string());
        let refused = tcp.check(&ep).await.unwrap_err();
        assert!(refused.contains("refused"), "{refused}");
        let unresolved = Endpoint {
            address: "nowhere.invalid:80".into(),
            host_header: HeaderValue::from_static("nowhere.invalid:80"),
            is_dns: true,
            addrs: ArcSwap::from_pointee(Vec::new()),
        };
        let no_address = tcp.check(&unresolved).await.unwrap_err();
        assert!(no_address.contains("has no address"), "{no_address}");
    }

    #[tokio::test]
    async fn a_check_past_its_timeout_fails_and_closes_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ep = Endpoint::new(&listener.local_addr().unwrap().to_string());
        let probe = Probe::new(&config("timeout: 100ms"), UpstreamProtocol::Http1).unwrap();
        let (verdict, accepted) = tokio::join!(probe.check(&ep), listener.accept());
        assert_eq!(verdict, Err("timed out after 100ms".into()));
        // The request arrived, then the connection was closed with the check.
        let (mut stream, _) = accepted.unwrap();
        let mut head = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut head));
        assert!(read.await.is_ok(), "connection left open");
        assert!(head.starts_with(b"GET / HTTP/1.1\r\n"), "{head:?}");
    }

    #[test]
    fn thresholds_count_runs_of_equal_results() {
        let t = Thresholds {
            healthy: 2,
            unhealthy: 3,
        };
        let mut s = Streak::default();
        // Two failures, a pass, then three failures: only the third in a row flips.
        assert_eq!(s.record(false, true, &t), None);
        assert_eq!(s.record(false, true, &t), None);
        assert_eq!(s.record(true, true, &t), None);
        assert_eq!(s.record(false, true, &t), None);
        assert_eq!(s.record(false, true, &t), None);
        assert_eq!(s.record(false, true, &t), Some(false));
        // Unhealthy: more failures change nothing; two passes in a row flip back.
        assert_eq!(s.record(false, false, &t), None);
        assert_eq!(s.record(true, false, &t), None);
        assert_eq!(s.record(false, false, &t), None);
        assert_eq!(s.record(true, false, &t), None);
        assert_eq!(s.record(true, false, &t), Some(true));
        assert_eq!(s.record(true, true, &t), None);
        // Thresholds of 1 flip on every change.
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        let mut s = Streak::default();
        assert_eq!(s.record(false, true, &one), Some(false));
        assert_eq!(s.record(true, false, &one), Some(true));
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut rest = &buf[..];
            assert_eq!(read_varint(&mut rest), Some(v), "{v}");
            assert!(rest.is_empty());
        }
        let mut buf = Vec::new();
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0xAC, 0x02]);
        // Truncated, and too long (an 11th byte, or bits past 64).
        assert_eq!(read_varint(&mut &[0x80][..]), None);
        assert_eq!(read_varint(&mut &[0xFF; 11][..]), None);
        let mut past_64 = [0xFF; 10];
        past_64[9] = 0x02;
        assert_eq!(read_varint(&mut &past_64[..]), None);
    }

    #[test]
    fn grpc_request_frames_the_service_name() {
        assert_eq!(&grpc_request("").unwrap()[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_request("pkg.Svc").unwrap()[..],
            [
                0, 0, 0, 0, 9, 0x0A, 7, b'p', b'k', b'g', b'.', b'S', b'v', b'c'
            ]
        );
        let long = "s".repeat(200);
        let framed = grpc_request(&long).unwrap();
        // A two-byte length: 200 = 0xC8 0x01.
        assert_eq!(&framed[..8], [0, 0, 0, 0, 203, 0x0A, 0xC8, 0x01]);
        assert_eq!(framed.len(), 5 + 203);
    }

    #[test]
    fn serving_status_decodes_and_skips_unknown_fields() {
        assert_eq!(serving_status(&[0x08, 0x01]), Some(1));
        assert_eq!(serving_status(&[0x08, 0x02]), Some(2));
        // proto3: an absent field is its default, UNKNOWN.
        assert_eq!(serving_status(&[]), Some(0));
        // Unknown fields of every wire type around it; the last value wins.
        let message = [
            0x10, 0x96, 0x01, // field 2, varint
            0x19, 1, 2, 3, 4, 5, 6, 7, 8, // field 3, fixed64
            0x08, 0x02, // status NOT_SERVING
            0x22, 2, b'h', b'i', // field 4, bytes
            0x2D, 1, 2, 3, 4, // field 5, fixed32
            0x08, 0x01, // status SERVING
        ];
        assert_eq!(serving_status(&message), Some(1));
        // Malformed: truncated, field 0, status with the wrong wire type, groups.
        for bad in [
            &[0x08][..],
            &[0x00, 0x01],
            &[0x0A, 0x01, 0x01],
            &[0x1B],
            &[0x22, 5, 1],
        ] {
            assert_eq!(serving_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_verdict_reads_status_then_message() {
        let framed = |message: &[u8]| {
            let mut b = vec![0, 0, 0, 0, message.len() as u8];
            b.extend_from_slice(message);
            b
        };
        let grpc = |code: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(code));
            h
        };
        let none = HeaderMap::new();
        let ok = StatusCode::OK;
        let serving = framed(&[0x08, 0x01]);
        assert_eq!(grpc_verdict(ok, &none, Some(&grpc("0")), &serving), Ok(()));
        assert_eq!(
            grpc_verdict(ok, &none, Some(&grpc("0")), &framed(&[0x08, 0x02])),
            Err("serving status 2 (NOT_SERVING)".into())
        );
        assert_eq!(
            grpc_verdict(ok, &none, Some(&grpc("0")), &framed(&[])),
            Err("serving status 0 (UNKNOWN)".into())
        );
        // Trailers-only: the status is in the headers.
        assert_eq!(
            grpc_verdict(ok, &grpc("5"), None, &[]),
            Err("grpc-status 5".into())
        );
        let mut failed = grpc("14");
        failed.insert("grpc-message", HeaderValue::from_static("draining"));
        assert_eq!(
            grpc_verdict(ok, &none, Some(&failed), &serving),
            Err("grpc-status 14: draining".into())
        );
        assert_eq!(
            grpc_verdict(ok, &none, None, &serving),
            Err("no grpc-status".into())
        );
        assert_eq!(
            grpc_verdict(StatusCode::NOT_FOUND, &none, Some(&grpc("0")), &serving),
            Err("status 404".into())
        );
        assert_eq!(
            grpc_verdict(ok, &none, Some(&grpc("0")), &[]),
            Err("no response message".into())
        );
        assert_eq!(
            grpc_verdict(ok, &none, Some(&grpc("0")), &serving[..6]),
            Err("truncated response message".into())
        );
        let mut compressed = serving.clone();
        compressed[0] = 1;
        assert_eq!(
            grpc_verdict(ok, &none, Some(&grpc("0")), &compressed),
            Err("compressed response message".into())
        );
    }

    /// Waits (bounded) until `cond` holds.
    async fn until(cond: impl Fn() -> bool) {
        for _ in 0..250 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("timed out");
    }

    #[tokio::test]
    async fn supervisor_follows_the_snapshot() {
        let closed = closed_port().await;
        let compile = |threshold: u32, previous: Option<&Gateway>| {
            let text = format!(
                "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\n\
                 upstreams:\n  \
                 api: {{ endpoints: [\"{closed}\"], health_check: {{ type: tcp, \
                 interval: 20ms, unhealthy_threshold: {threshold} }} }}\n"
            );
            let cfg = crate::config::load_str(&text, "t.yaml").unwrap();
            Arc::new(crate::gateway::compile(cfg, "t.yaml", 1, previous).unwrap())
        };
        let current = Arc::new(ArcSwap::new(compile(1, None)));
        let snapshot = current.clone();
        let supervisor = tokio::spawn(supervise(move || snapshot.load_full()));
        let api = || current.load().upstreams["api"].clone();
        let first = api();
        until(|| !first.states[0].is_healthy()).await;
        assert_eq!(first.stats.health_transitions.load(Ordering::Relaxed), 1);

        // Unchanged: the same upstream, still unhealthy, checked by the same task.
        current.store(compile(1, Some(&current.load())));
        assert!(Arc::ptr_eq(&first, &api()));
        tokio::time::sleep(SUPERVISE_EVERY + Duration::from_millis(200)).await;
        assert!(!first.states[0].is_healthy());
        assert_eq!(first.stats.health_transitions.load(Ordering::Relaxed), 1);
        assert_eq!(
            Arc::weak_count(&first),
            2,
            "the supervisor's entry and one checker"
        );

        // Changed: a new upstream, healthy until its own checks say otherwise;
        // the old one's checkers stop.
        current.store(compile(2, Some(&current.load())));
        let second = api();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(second.states[0].is_healthy());
        until(|| !second.states[0].is_healthy()).await;
        until(|| Arc::weak_count(&first) == 0).await;
        supervisor.abort();
    }
}
