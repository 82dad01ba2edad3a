//! Builds the upstream request, sends it over a pooled connection, and turns
//! the upstream's answer into the client's, including WebSocket upgrades.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::{ClientBody, Replayable, RequestBody, ResponseBody};
use super::headers::{Added, Field, Present, list_elements, remove_hop_by_hop, set_forwarded};
use super::retry::{self, RetryPolicy};
use crate::config::{HashKey, HostHeader, UpstreamProtocol};
use crate::error::{ErrorKind, ProxyError};
use crate::gateway::Gateway;
use crate::pipeline::RequestCtx;
use crate::upstream::{Upstream, pool};

/// Forwards `req` to `upstream` and returns the response to send back,
/// retrying failed attempts as `retry` allows.
pub async fn forward(
    gw: &Gateway,
    upstream: &Arc<Upstream>,
    retry: Option<&RetryPolicy>,
    mut req: Request<ClientBody>,
    ctx: &mut RequestCtx,
) -> Result<Response<ResponseBody>, ProxyError> {
    let key = hash_key(upstream.hash_key(), &req, ctx);
    let upgrading = ctx.upgrade_asked && wants_upgrade(&req);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let h2 = matches!(
        upstream.config.protocol,
        UpstreamProtocol::H2c | UpstreamProtocol::H2
    );
    let limit = match retry {
        Some(p) if !p.per_try_timeout.is_zero() => {
            p.per_try_timeout.min(upstream.config.timeouts.request.0)
        }
        _ => upstream.config.timeouts.request.0,
    };
    // An upgrade hands the connection over: nothing to retry.
    let retry = retry.filter(|p| p.attempts > 1 && !upgrading);

    // The same host that routed the request: the authority of an absolute-form
    // or HTTP/2 target first, else Host, whose value is shared, not copied.
    let client_host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    // `None`: the endpoint's address, known once one is picked. Whether it
    // is the client's own Host field, which can then stay as it is.
    let (host, host_is_clients) = match (&ctx.upstream_host, &upstream.config.host) {
        (Some(h), _) => (Some(h.clone()), false),
        (None, HostHeader::Preserve) => (
            client_host.clone(),
            client_host.is_some() && req.uri().authority().is_none(),
        ),
        (None, HostHeader::Endpoint) => (None, false),
        (None, HostHeader::Fixed(_)) => (upstream.fixed_host.clone(), false),
    };

    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
    let mut present = Present::scan(headers, &gw.request_id_header);
    let upgrading_h1 = upgrading && !h2;
    let stripped =
        (upgrading_h1 || present.has_hop_by_hop()) && remove_hop_by_hop(headers, upgrading_h1);
    if stripped {
        // `Connection` may have named any of the fields looked for below.
        present = Present::scan(headers, &gw.request_id_header);
    }
    // The client's Host goes upstream as it is, unless a hop-by-hop
    // removal took it (`Connection: host`).
    let keep_host = host_is_clients && !stripped;
    // The fields the gateway sets (trace context, X-Forwarded-*, Forwarded,
    // the request id) go beside the map, the client's copies out of it.
    let mut added = Added::default();
    ctx.trace.propagate(headers, present, &mut added);
    present.remove(headers, Field::Expect, &header::EXPECT);
    set_forwarded(
        headers,
        ctx.conn.peer,
        &ctx.conn.peer_ip,
        ctx.conn.scheme,
        client_host.as_ref(),
        &gw.trusted_proxies,
        gw.forwarded_header,
        present,
        &mut added,
    );
    present.remove(headers, Field::RequestId, &gw.request_id_header);
    added.request_id = Some((&gw.request_id_header, ctx.request_id.clone()));
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.version = if h2 {
        headers.remove(header::HOST);
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let counter = if body.is_end_stream() {
        None
    } else {
        ctx.exchange.bytes_in_counter()
    };
    // A stall in the client's body is the client's: its own timeout applies.
    let idle = gw.config.limits.body_read_timeout.0;
    let max_body = ctx.max_body;
    let mut body = match retry {
        Some(p) if !body.is_end_stream() => {
            Outgoing::Replay(Replayable::new(body, p.replay_buffer, counter, max_body))
        }
        Some(_) => Outgoing::Empty,
        None => Outgoing::Once(Some(RequestBody::new(body, counter, idle, max_body))),
    };
    let method = retry.map(|_| parts.method.clone());

    let mut head = Some(parts);
    let mut tried = Vec::new();
    let mut attempt = 1;
    let mut retry_slot = None;
    let worker = ctx.conn.worker;
    let mut endpoint = upstream
        .pick(worker, key.as_deref(), &tried)
        .ok_or_else(|| ProxyError::new(ErrorKind::NoEndpoint))?;
    let mut attempt_body = body
        .next(idle)
        .ok_or_else(|| ProxyError::new(ErrorKind::Internal).context("request body"))?;
    let sent = loop {
        let last = retry.is_none_or(|p| attempt >= p.attempts);
        let mut parts = match (&head, last) {
            (Some(h), false) => copy_head(h),
            _ => head
                .take()
                .ok_or_else(|| ProxyError::new(ErrorKind::Internal).context("request head"))?,
        };
        let host = host
            .clone()
            .unwrap_or_else(|| upstream.endpoints[endpoint].host_header.clone());
        address(
            &mut parts,
            host,
            &pq,
            h2,
            upstream.config.tls.is_some(),
            keep_host,
        )?;
        let sent_at = ctx.exchange.record().is_some().then(Instant::now);
        let measured = pool::Attempt::start(&attempt_body);
        let result = pool::send(
            upstream,
            worker,
            endpoint,
            Request::from_parts(parts, attempt_body),
            &added,
            measured.started(),
            limit,
        )
        .await;
        let result = measured.settle(upstream, endpoint, result);
        drop(retry_slot.take());
        if let (Some(p), Some(method)) = (retry, &method)
            && !last
            && match &result {
                Ok(sent) => p.retries_status(sent.response.status(), method),
                Err(e) => p.retries_error(e, method),
            }
        {
            tried.push(endpoint);
            // Everything that could still refuse the retry is settled before
            // the failed attempt's answer is let go, so that a refusal returns
            // that answer; taking the next body stops the failed attempt's.
            if let Some(next) = upstream.pick(worker, key.as_deref(), &tried)
                && let Some(slot) = retry::take_slot(upstream)
                && let Some(next_body) = body.next(idle)
            {
                tracing::debug!(
                    upstream = %upstream.name,
                    attempt,
                    outcome = %match &result {
                        Ok(sent) => sent.response.status().to_string(),
                        Err(e) => e.to_string(),
                    },
                    "retrying"
                );
                drop(result);
                upstream.stats.retries.fetch_add(1, Ordering::Relaxed);
                retry_slot = Some(slot);
                tokio::time::sleep(p.backoff(attempt)).await;
                (endpoint, attempt_body) = (next, next_body);
                attempt += 1;
                continue;
            }
        }
        if let (Some(r), Some(t)) = (ctx.exchange.record(), sent_at) {
            r.upstream_duration = Some(t.elapsed());
        }
        break result?;
    };
    let pool::Sent {
        response,
        lease,
        addr,
    } = sent;
    if let Some(r) = ctx.exchange.record() {
        r.upstream = Some(addr);
    }

    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(&mut parts.headers, switching);
    // Backend hiding: `Server`, `X-Powered-By` and the configured names.
    // A pass over the few names a response has costs less than a hash
    // lookup per hidden name, and most responses carry none of them.
    let hidden = &gw.hidden_response_headers;
    if parts.headers.keys().any(|k| hidden.contains(k)) {
        for name in hidden.iter() {
            parts.headers.remove(name);
        }
    }
    if switching {
        // Only an HTTP/1.1 connection switches; it becomes the tunnel.
        let (Some(client_upgrade), Some(mut tunnel)) = (client_upgrade, lease.into_conn()) else {
            return Err(ProxyError::new(ErrorKind::UpstreamFailed)
                .context("101 Switching Protocols to a request that asked for no upgrade"));
        };
        drop(body);
        let active = crate::server::conn::Active::track(&ctx.conn.active);
        // The tunnel keeps the client's socket: it keeps the connection's
        // slots under the listener's caps too.
        let slots = ctx.conn.slots.clone();
        // A concurrency limit counts the tunnel as a request in flight for
        // its whole life (the 101's body is gone at once).
        let held = std::mem::take(&mut ctx.held);
        tokio::spawn(async move {
            let _active = active;
            let _slots = slots;
            let _held = held;
            match client_upgrade.await {
                Ok(client) => {
                    let mut client = TokioIo::new(client);
                    let upstream = tunnel.conn();
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, upstream).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        return Ok(Response::from_parts(parts, ResponseBody::empty()));
    }
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(body, Some(lease), upstream.config.timeouts.idle.0),
    ))
}

/// The request body for each attempt.
enum Outgoing {
    /// Sent once: no retry policy.
    Once(Option<RequestBody>),
    /// No body: any number of attempts.
    Empty,
    /// Kept for replay up to the policy's buffer.
    Replay(Replayable),
}

impl Outgoing {
    /// The body for the next attempt, which stops the previous attempt's;
    /// `None` when the body cannot be sent again.
    fn next(&mut self, idle: Duration) -> Option<RequestBody> {
        match self {
            Outgoing::Once(b) => b.take(),
            Outgoing::Empty => Some(RequestBody::empty()),
            Outgoing::Replay(r) => r.attempt(idle),
        }
    }
}

/// A copy of a request head for one more attempt (extensions are not copied:
/// nothing upstream reads them).
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = head.method.clone();
    copy.uri = head.uri.clone();
    copy.version = head.version;
    copy.headers = head.headers.clone();
    copy
}

/// Sets the target and host of an attempt: origin-form plus `Host` for
/// HTTP/1.1 (kept as it is with `keep_host`), scheme and `:authority` for
/// HTTP/2.
fn address(
    parts: &mut http::request::Parts,
    host: HeaderValue,
    pq: &PathAndQuery,
    h2: bool,
    tls: bool,
    keep_host: bool,
) -> Result<(), ProxyError> {
    if h2 {
        let uri = Uri::builder()
            .scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP })
            .authority(host.as_bytes())
            .path_and_query(pq.clone())
            .build()
            .map_err(|e| ProxyError::new(ErrorKind::BadRequest).context(e))?;
        parts.uri = uri;
    } else {
        parts.uri = Uri::from(pq.clone());
        if !keep_host {
            parts.headers.insert(header::HOST, host);
        }
    }
    Ok(())
}

/// Whether an HTTP/1.1 request that carries `Upgrade`
/// ([`RequestCtx::upgrade_asked`]) asks to switch protocols (RFC 9110 §7.8).
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && list_elements(req.headers(), header::CONNECTION)
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
}

/// The bytes a consistent hash is computed over.
fn hash_key<B>(key: Option<&HashKey>, req: &Request<B>, ctx: &RequestCtx) -> Option<Vec<u8>> {
    match key? {
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_bytes().to_vec()),
        HashKey::ClientIp => Some(match ctx.client_ip {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        }),
        HashKey::Path => Some(req.uri().path().as_bytes().to_vec()),
    }
}
