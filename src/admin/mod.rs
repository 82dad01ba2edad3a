//! The admin API: a small HTTP/1.1 server on a listener of its own, off
//! unless `admin` is configured, for operators and orchestrators:
//!
//! | endpoint | answers |
//! |---|---|
//! | `GET /health` | 200 while the process runs |
//! | `GET /ready` | 200 once a listener accepts, 503 before and while shutting down |
//! | `GET /config` | the running config as JSON, secrets redacted |
//! | `POST /reload` | reloads the config file, as SIGHUP does |
//! | `GET /upstreams` | every endpoint's health, ejection, load and latency |
//! | `GET /metrics` | Prometheus metrics |
//!
//! It runs on the control runtime, never on a worker, has no routes and is
//! bound once at start: a reload that changes `admin` only logs a warning.

mod scrape;
mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::observe::metrics::Format;
use crate::server::{self, ReloadError, Shared};

/// Longest time a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin listener when the config has one, and serves it on the
/// current (control) runtime for the life of the process.
pub async fn start(shared: &Arc<Shared>) -> Result<(), String> {
    let gw = shared.current.load_full();
    let Some(admin) = gw.config.admin.as_ref().map(|a| &a.value) else {
        return Ok(());
    };
    let listener = TcpListener::bind(admin.address.as_str())
        .await
        .map_err(|e| format!("cannot listen on {} (admin API): {e}", admin.address))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the admin API's address: {e}"))?;
    tracing::info!(listener = %"admin", address = %bound, "listening");
    let api = Arc::new(Api {
        shared: shared.clone(),
        token: admin.token.clone().map(String::into_bytes),
    });
    tokio::spawn(accept_loop(listener, api));
    Ok(())
}

async fn accept_loop(listener: TcpListener, api: Arc<Api>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "admin API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The admin endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Health,
    Ready,
    Config,
    Reload,
    Upstreams,
    Metrics,
}

impl Endpoint {
    fn of(path: &str) -> Option<Self> {
        Some(match path {
            "/health" => Self::Health,
            "/ready" => Self::Ready,
            "/config" => Self::Config,
            "/reload" => Self::Reload,
            "/upstreams" => Self::Upstreams,
            "/metrics" => Self::Metrics,
            _ => return None,
        })
    }

    /// The methods it answers, as an `Allow` value.
    fn allow(self) -> &'static str {
        match self {
            Self::Reload => "POST",
            _ => "GET, HEAD",
        }
    }

    fn accepts(self, method: &Method) -> bool {
        match self {
            Self::Reload => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

struct Api {
    shared: Arc<Shared>,
    /// The bearer token every request must carry, when configured.
    token: Option<Vec<u8>>,
}

impl Api {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // Before anything else, so that a client without the token learns
        // nothing, not even which paths exist.
        if !self.authorized(req.headers()) {
            let mut resp = problem(
                StatusCode::UNAUTHORIZED,
                "admin-unauthorized",
                "this admin API needs `Authorization: Bearer <token>`",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portico-admin\""),
            );
            return resp;
        }
        let Some(endpoint) = Endpoint::of(req.uri().path()) else {
            return problem(
                StatusCode::NOT_FOUND,
                "admin-not-found",
                "no such admin endpoint",
            );
        };
        if !endpoint.accepts(req.method()) {
            let mut resp = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin-method-not-allowed",
                &format!("{} takes {}", req.uri().path(), endpoint.allow()),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(endpoint.allow()));
            return resp;
        }
        let gw = self.shared.current.load_full();
        match endpoint {
            Endpoint::Health => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
            Endpoint::Ready => {
                if self.shared.is_ready().await {
                    json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({ "status": "not ready" }),
                    )
                }
            }
            Endpoint::Config => json(StatusCode::OK, &views::config(&gw.config)),
            Endpoint::Upstreams => json(StatusCode::OK, &views::upstreams(&gw)),
            Endpoint::Reload => match self.reload().await {
                Ok(()) => {
                    tracing::info!(trigger = "admin API", "config reloaded");
                    json(StatusCode::OK, &serde_json::json!({ "status": "reloaded" }))
                }
                Err(e) => {
                    tracing::error!(
                        trigger = "admin API",
                        "config reload failed; still serving the previous config:\n{e}"
                    );
                    match e {
                        ReloadError::Invalid(text) => problem(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "admin-config-invalid",
                            &text,
                        ),
                        ReloadError::Failed(text) => problem(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "admin-reload-failed",
                            &text,
                        ),
                    }
                }
            },
            Endpoint::Metrics => {
                let accept = req.headers().get(header::ACCEPT).map(HeaderValue::as_bytes);
                let format = Format::negotiate(accept);
                match gw.metrics.encode(format, scrape::Scrape::new(gw.clone())) {
                    Ok(text) => respond(StatusCode::OK, format.content_type(), text.into()),
                    Err(_) => problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "admin-metrics-failed",
                        "the metrics could not be encoded",
                    ),
                }
            }
        }
    }

    /// Reloads in a task of its own: a client that goes away does not cancel
    /// a reload it asked for.
    async fn reload(&self) -> Result<(), ReloadError> {
        let shared = self.shared.clone();
        tokio::spawn(async move { server::reload(&shared).await })
            .await
            .unwrap_or_else(|e| Err(ReloadError::Failed(format!("reload task failed: {e}"))))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()))
            .is_some_and(|given| constant_time_eq(given, expected))
    }
}

/// The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1; the
/// scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Compares without stopping at the first difference, so that the time taken
/// tells nothing about how much of a guessed token was right (only whether
/// its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer is the state of the moment.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", json_body(value))
}

/// A JSON document on one line, ending with one (for `curl` in a terminal).
fn json_body(value: &serde_json::Value) -> Bytes {
    let mut body = value.to_string();
    body.push('\n');
    body.into()
}

/// An RFC 9457 problem document, typed like the proxy's problems.
fn problem(status: StatusCode, slug: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": format!("urn:portico:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or_default(),
        "status": status.as_u16(),
        "detail": detail,
    });
    respond(status, "application/problem+json", json_body(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_and_compared_exactly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn endpoints_and_their_methods() {
        assert_eq!(Endpoint::of("/metrics"), Some(Endpoint::Metrics));
        assert_eq!(Endpoint::of("/metrics/"), None);
        assert!(Endpoint::Reload.accepts(&Method::POST));
        assert!(!Endpoint::Reload.accepts(&Method::GET));
        assert!(Endpoint::Config.accepts(&Method::HEAD));
        assert!(!Endpoint::Config.accepts(&Method::DELETE));
    }
}
