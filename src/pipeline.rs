//! The request path, in one straight line:
//!
//! 1. request id, trace context ([`crate::observe::trace`]), and the record
//!    that the access log writes (and the span exporter sends) at the end
//! 2. limits and malformed-request checks (a refused request never goes upstream)
//! 3. route lookup on the listener's router (404 when nothing matches)
//! 4. the route's filters, in phase order ([`crate::filters`])
//! 5. the handler: proxy (the upstream gets the gateway's `traceparent`),
//!    redirect or direct response
//! 6. the response gets the request id; logging runs when its body is done

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Body as _;
use tokio::time::Instant;

use crate::error::{ErrorKind, ErrorStyle, ProxyError};
use crate::filters::Flow;
use crate::gateway::{Action, Gateway, Route};
use crate::observe::metrics::{MethodClass, Recording};
use crate::observe::trace::SpanContext;
use crate::observe::{Exchange, request_id};
use crate::proxy::body::{ClientBody, ResponseBody};
use crate::proxy::forward;
use crate::proxy::headers::{Field, Present};
use crate::routing::normalize::normalize_uri;
use crate::routing::{Params, RouteRequest};
use crate::server::h1_guard::Flaw;

/// What a connection knows about itself.
#[derive(Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The peer's IP as a header value, for X-Forwarded-For.
    pub peer_ip: HeaderValue,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The worker serving it.
    pub worker: usize,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The server's count of open connections (tunnels join it).
    pub active: Arc<AtomicUsize>,
    /// TLS details (SNI name, client certificate, HSTS); `None` on plain listeners.
    pub tls: Option<crate::tls::TlsConn>,
    /// The listener redirects every request to HTTPS.
    pub redirect_https: Option<crate::config::RedirectHttps>,
    /// The connection's slots under the listener's caps (a tunnel keeps them).
    pub slots: Arc<crate::server::conn::Slots>,
}

/// Per-request state passed to every step.
pub struct RequestCtx {
    /// The connection.
    pub conn: Arc<ConnInfo>,
    /// The request id.
    pub request_id: HeaderValue,
    /// The client address, as resolved through trusted proxies.
    pub client_ip: IpAddr,
    /// Params captured by the route's path.
    pub params: Params,
    /// A Host to send upstream instead of the upstream's rule.
    pub upstream_host: Option<HeaderValue>,
    /// The access log record.
    pub exchange: Exchange,
    /// The request's trace context, set on the upstream request.
    pub trace: SpanContext,
    /// The request's entry in the metrics (counted when dropped, also if the
    /// client abandons the request).
    pub recording: Recording,
    /// The largest request body the route accepts (0: no limit).
    pub max_body: u64,
    /// Who is calling, once a route's `auth` identified them.
    pub identity: Option<crate::auth::Identity>,
    /// Headers added to the answer whatever it is (rate-limit headers).
    pub response_headers: Option<Box<http::HeaderMap>>,
    /// Concurrency-limit slots, held until the response body is done.
    pub held: crate::ratelimit::Held,
    /// The request carried `Upgrade` when it arrived: forwarding looks for
    /// an upgrade only then.
    pub upgrade_asked: bool,
}

/// Serves one request. Never fails: errors become problem responses here.
/// `flaw` is what the HTTP/1.x guard found wrong with its head.
pub async fn handle(
    req: Request<ClientBody>,
    conn: Arc<ConnInfo>,
    gw: Arc<Gateway>,
    flaw: Option<Flaw>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let method = MethodClass::of(req.method());
    let present = Present::scan(req.headers(), &gw.request_id_header);
    let incoming_id = (gw.trust_request_id && present.has(Field::RequestId))
        .then(|| req.headers().get(&gw.request_id_header))
        .flatten();
    let request_id = match incoming_id {
        Some(v) if request_id::accept_incoming(v) => v.clone(),
        _ => request_id::generate(),
    };
    let trace = SpanContext::from_request(req.headers(), present, gw.config.tracing.sample_ratio);
    let spans = gw.spans.as_ref().filter(|_| trace.sampled).cloned();
    let mut exchange = Exchange::new(gw.access_log.clone(), spans, started);
    let client_ip = gw.trusted_proxies.client_ip(conn.peer.ip(), req.headers());
    if exchange.record().is_some() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let client = SocketAddr::new(client_ip, conn.peer.port());
        let host = request_host(&req).unwrap_or("");
        exchange.set_request(req.method(), host, pq, client, &request_id, trace);
    }
    let mut ctx = RequestCtx {
        conn,
        request_id,
        client_ip,
        params: Params::default(),
        upstream_host: None,
        exchange,
        trace,
        recording: Recording::start(method, started),
        max_body: 0,
        identity: None,
        response_headers: None,
        held: crate::ratelimit::Held::default(),
        upgrade_asked: present.has(Field::Upgrade),
    };

    // Only a request with a `Content-Type` can be gRPC.
    let error_style = if present.has(Field::ContentType) {
        ErrorStyle::of(req.headers())
    } else {
        ErrorStyle::Problem
    };
    let http1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
    // The guard stops following the framing after a head that asks to switch
    // protocols; if the switch does not happen, the connection must not carry
    // another request.
    let switch_asked = http1 && (ctx.upgrade_asked || req.method() == Method::CONNECT);
    let result = match flaw {
        None => route_and_run(&gw, req, &mut ctx).await,
        Some(flaw) => Err(flawed(flaw)),
    };
    let RequestCtx {
        request_id,
        mut exchange,
        mut recording,
        identity,
        response_headers,
        held,
        ..
    } = ctx;
    let mut resp = result.unwrap_or_else(|e| {
        match e.kind.side() {
            crate::error::Side::Client => tracing::debug!(error = %e, "request refused"),
            _ => tracing::warn!(error = %e, request_id = ?request_id, "request failed"),
        }
        exchange.note_error(format_args!("{e}"));
        e.to_response(&request_id, error_style)
    });
    if flaw.is_some() || (switch_asked && resp.status() != StatusCode::SWITCHING_PROTOCOLS) {
        // The connection's framing can no longer be trusted.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(r) = exchange.record() {
        r.status = resp.status().as_u16();
        r.consumer = identity.as_ref().and_then(crate::auth::Identity::log_name);
    }
    if let Some(extra) = response_headers {
        for (name, value) in extra.iter() {
            resp.headers_mut().append(name, value.clone());
        }
    }
    resp.headers_mut()
        .insert(gw.request_id_header.clone(), request_id);
    crate::tls::http::add_hsts(&mut resp, &ctx.conn);
    resp.body_mut().set_exchange(exchange);
    recording.answered(resp.status(), gw.metrics.unmatched());
    resp.body_mut().set_recording(recording);
    resp.body_mut().hold(held);
    Ok(resp)
}

async fn route_and_run(
    gw: &Gateway,
    mut req: Request<ClientBody>,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host_field = check_request(gw, &req)?;
    // ACME HTTP-01: answered on plain listeners before the HTTPS redirect
    // and routing.
    #[cfg(feature = "acme")]
    if ctx.conn.tls.is_none()
        && let Some(resp) = crate::acme::http01_response(&req)
    {
        return Ok(resp);
    }
    // Once, before anything reads the path: routing, every filter and the
    // upstream must see the same one (the access log keeps it as received).
    if let Some(uri) = normalize_uri(req.method(), req.uri(), &gw.config.normalize_path)
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest).context(e))?
    {
        *req.uri_mut() = uri;
    }
    if gw.client_cert_headers {
        crate::tls::http::strip_client_cert_headers(req.headers_mut());
    }
    // Redirect to HTTPS, SNI/Host binding (421), client-certificate headers:
    // before routing, so that routes can match on those headers.
    if (ctx.conn.tls.is_some() || ctx.conn.redirect_https.is_some())
        && let Some(resp) = crate::tls::http::before_routing(&mut req, &ctx.conn)?
    {
        return Ok(resp);
    }
    let route = find_route(gw, &req, host_field.as_ref(), ctx)?;
    ctx.recording.set_route(&route.metrics);
    if let Some(r) = ctx.exchange.record() {
        r.route = Some(route.name.clone());
    }
    ctx.max_body = route
        .max_body_size
        .unwrap_or(gw.config.limits.max_body_size.0);
    // A declared length over the limit is refused before anything is read or
    // sent upstream; a body without one is cut while it streams (`RequestBody`).
    if ctx.max_body != 0 && req.body().size_hint().lower() > ctx.max_body {
        return Err(ProxyError::new(ErrorKind::PayloadTooLarge));
    }
    for f in route.filters.iter() {
        if let Flow::Respond(resp) = f.on_request(&mut req, ctx).await? {
            return Ok(*resp);
        }
    }
    match &route.action {
        Action::Proxy { upstream, retry } => {
            // Not boxed: a large future allocated per request takes
            // mimalloc's slow path; the request's future is pinned in place
            // by the fast path and boxed once for hyper (`server::conn`).
            forward::forward(gw, upstream, retry.as_ref(), req, ctx).await
        }
        Action::Respond {
            status,
            headers,
            body,
        } => {
            let body = if req.method() == Method::HEAD {
                ResponseBody::empty()
            } else {
                ResponseBody::full(body.clone())
            };
            let mut resp = Response::new(body);
            *resp.status_mut() = *status;
            *resp.headers_mut() = headers.clone();
            Ok(resp)
        }
        Action::Redirect { location, status } => {
            let mut loc = String::with_capacity(128);
            let uri = req.uri();
            let host = request_host(&req).unwrap_or("");
            location.render(&mut loc, |name| match name {
                "path" => Some(uri.path()),
                "query" => uri
                    .path_and_query()
                    .map(|pq| &pq.as_str()[uri.path().len()..]),
                "host" => Some(host),
                other => ctx.params.get(other),
            });
            let value = HeaderValue::from_str(&loc)
                .map_err(|_| ProxyError::new(ErrorKind::Internal).context("redirect location"))?;
            let mut resp = Response::new(ResponseBody::empty());
            *resp.status_mut() = *status;
            resp.headers_mut().insert(header::LOCATION, value);
            Ok(resp)
        }
    }
}

/// Refuses requests that must not reach an upstream; the request's Host
/// field, if it has one.
fn check_request(
    gw: &Gateway,
    req: &Request<ClientBody>,
) -> Result<Option<HeaderValue>, ProxyError> {
    let limits = &gw.config.limits;
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len as u64 > limits.max_uri_length.0 {
        return Err(ProxyError::new(ErrorKind::UriTooLong));
    }
    if req.headers().len() > limits.max_headers {
        return Err(ProxyError::new(ErrorKind::HeadersTooLarge));
    }
    check_host(req)
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host; RFC 9113
/// §8.3.1: an HTTP/2 `host` header must agree with `:authority`. Otherwise the
/// host that routed the request and the one an upstream sees could differ.
/// The one Host field, if any.
fn check_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::new(ErrorKind::BadRequest).context("more than one Host header"));
    }
    match (req.version(), first, req.uri().authority()) {
        (Version::HTTP_11, None, _) => {
            Err(ProxyError::new(ErrorKind::BadRequest).context("HTTP/1.1 request without Host"))
        }
        (Version::HTTP_2, Some(h), Some(a)) if h.as_bytes() != a.as_str().as_bytes() => {
            Err(ProxyError::new(ErrorKind::BadRequest).context("Host differs from :authority"))
        }
        _ => Ok(first.cloned()),
    }
}

fn flawed(flaw: Flaw) -> ProxyError {
    match flaw {
        Flaw::HeadTooLarge => ProxyError::new(ErrorKind::HeadersTooLarge),
        _ => ProxyError::new(ErrorKind::BadRequest).context(flaw.reason()),
    }
}

/// The route for `req`, whose Host field (already looked up) is `host_field`.
fn find_route<'g>(
    gw: &'g Gateway,
    req: &Request<ClientBody>,
    host_field: Option<&HeaderValue>,
    ctx: &mut RequestCtx,
) -> Result<&'g Route, ProxyError> {
    let router = gw
        .router(&ctx.conn.listener)
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute).context("listener has no routes"))?;
    let raw_host = authority_or(req, || host_field).unwrap_or("");
    let host = crate::routing::host_key(strip_port(raw_host));
    let host = host.as_ref();
    let found = router
        .find(&RouteRequest {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        })
        .ok_or_else(|| ProxyError::new(ErrorKind::NoRoute))?;
    ctx.params = found.params;
    gw.routes
        .get(found.index)
        .ok_or_else(|| ProxyError::new(ErrorKind::Internal).context("route index out of range"))
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or `Host`.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    authority_or(req, || req.headers().get(header::HOST))
}

/// The URI authority, or else the Host field that `host` finds.
fn authority_or<'a, B>(
    req: &'a Request<B>,
    host: impl FnOnce() -> Option<&'a HeaderValue>,
) -> Option<&'a str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host().and_then(|h| h.to_str().ok()))
}

/// `host` without its `:port`, if any.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    // A byte loop: short hosts do not repay `rsplit_once`'s searcher setup.
    match host.bytes().rposition(|b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn a_port_is_stripped_from_names_and_addresses() {
        for (host, want) in [
            ("example.com:8080", "example.com"),
            ("example.com", "example.com"),
            ("127.0.0.1:18080", "127.0.0.1"),
            ("[::1]:443", "[::1]"),
            ("[::1]", "[::1]"),
            ("", ""),
        ] {
            assert_eq!(strip_port(host), want, "{host}");
        }
    }
}
