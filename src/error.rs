//! The one error type of the request path, and the only place that turns
//! errors into responses.
//!
//! Every error knows its [`Side`] (who caused it) and whether a retry is safe,
//! after Pingora's design; the status code, the problem type and the metric
//! label all derive from its [`ErrorKind`].
//!
//! A gRPC request (`content-type: application/grpc...`) gets its errors as a
//! gRPC trailers-only answer instead of problem+json (see [`ErrorStyle`]).

use std::fmt;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::proxy::body::ResponseBody;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something the gateway refuses.
    Client,
    /// The upstream failed or misbehaved.
    Upstream,
    /// The gateway itself could not serve the request.
    Gateway,
}

/// What went wrong. Each kind has a fixed status, title and problem type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the request.
    NoRoute,
    /// The request is malformed.
    BadRequest,
    /// The request target is longer than allowed.
    UriTooLong,
    /// The request header block is larger than allowed.
    HeadersTooLarge,
    /// The upstream has no endpoint to send to.
    NoEndpoint,
    /// Connecting to the upstream failed (refused, unreachable).
    ConnectFailed,
    /// Connecting to the upstream took too long.
    ConnectTimeout,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream closed or reset the exchange, or spoke invalid HTTP.
    UpstreamFailed,
    /// The client went away or its body was malformed.
    ClientFailed,
    /// The client's request body stalled longer than `limits.body_read_timeout`.
    RequestTimeout,
    /// The request body is larger than the route allows.
    PayloadTooLarge,
    /// The request's host is not the SNI name its TLS connection was made for.
    Misdirected,
    /// A circuit-breaker cap of the upstream is reached.
    Overloaded,
    /// No valid credential (RFC 9110 §15.5.2: with `WWW-Authenticate`).
    Unauthorized,
    /// A known caller without the right, or a refused client address.
    Forbidden,
    /// A rate or concurrency limit is reached (with `Retry-After`).
    RateLimited,
    /// A rate limit's store failed and the limit fails closed.
    LimiterUnavailable,
    /// A credential could not be checked: no key set or introspection answer.
    AuthUnavailable,
    /// An internal failure.
    Internal,
}

impl ErrorKind {
    /// The status code sent to the client.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest | Self::ClientFailed => StatusCode::BAD_REQUEST,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NoEndpoint
            | Self::Overloaded
            | Self::LimiterUnavailable
            | Self::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::ConnectFailed | Self::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout | Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Who is at fault.
    pub fn side(self) -> Side {
        match self {
            Self::NoRoute
            | Self::BadRequest
            | Self::UriTooLong
            | Self::HeadersTooLarge
            | Self::ClientFailed
            | Self::RequestTimeout
            | Self::PayloadTooLarge
            | Self::Misdirected
            | Self::Unauthorized
            | Self::Forbidden
            | Self::RateLimited => Side::Client,
            Self::ConnectFailed
            | Self::ConnectTimeout
            | Self::UpstreamTimeout
            | Self::UpstreamFailed => Side::Upstream,
            Self::NoEndpoint
            | Self::Overloaded
            | Self::Internal
            | Self::LimiterUnavailable
            | Self::AuthUnavailable => Side::Gateway,
        }
    }

    /// A stable slug: the last part of the problem type, and a metric label.
    pub fn slug(self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::BadRequest => "bad-request",
            Self::UriTooLong => "uri-too-long",
            Self::HeadersTooLarge => "headers-too-large",
            Self::NoEndpoint => "no-endpoint",
            Self::ConnectFailed => "upstream-connect-failed",
            Self::ConnectTimeout => "upstream-connect-timeout",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::UpstreamFailed => "upstream-failed",
            Self::ClientFailed => "client-failed",
            Self::RequestTimeout => "request-timeout",
            Self::PayloadTooLarge => "payload-too-large",
            Self::Misdirected => "misdirected-request",
            Self::Overloaded => "upstream-overloaded",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate-limited",
            Self::LimiterUnavailable => "rate-limiter-unavailable",
            Self::AuthUnavailable => "auth-unavailable",
            Self::Internal => "internal",
        }
    }

    /// A short human title, the same for every occurrence (RFC 9457 §3.1.3).
    pub fn title(self) -> &'static str {
        match self {
            Self::NoRoute => "No route matches the request",
            Self::BadRequest => "Malformed request",
            Self::UriTooLong => "Request target too long",
            Self::HeadersTooLarge => "Request header fields too large",
            Self::NoEndpoint => "No upstream endpoint available",
            Self::ConnectFailed => "Upstream connection failed",
            Self::ConnectTimeout => "Upstream connection timed out",
            Self::UpstreamTimeout => "Upstream timed out",
            Self::UpstreamFailed => "Upstream failed",
            Self::ClientFailed => "Client request failed",
            Self::RequestTimeout => "Request body timed out",
            Self::PayloadTooLarge => "Request body too large",
            Self::Misdirected => "Misdirected request",
            Self::Overloaded => "Upstream at capacity",
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "Access denied",
            Self::RateLimited => "Too many requests",
            Self::LimiterUnavailable => "Rate limiter unavailable",
            Self::AuthUnavailable => "Authentication unavailable",
            Self::Internal => "Internal gateway error",
        }
    }
}

/// Whether an attempt that failed with this error may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the upstream: safe for any method.
    Safe,
    /// The request may have been processed: only idempotent methods.
    IfIdempotent,
    /// Never (client fault, or the response had started).
    Never,
}

/// An error on the request path.
#[derive(Debug)]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Whether another attempt is safe.
    pub retry: Retry,
    /// Detail for the gateway's own log; never sent to the client.
    pub context: Option<Box<str>>,
    /// Detail for the client (the problem's `detail`): only text that is safe
    /// to show, never addresses or internal errors.
    pub detail: Option<Box<str>>,
    /// Headers the answer carries (`WWW-Authenticate`, `Retry-After`, rate-limit headers).
    pub headers: Option<Box<HeaderMap>>,
}

impl ProxyError {
    /// An error of this kind with the default retry rule for its side.
    pub fn new(kind: ErrorKind) -> Self {
        let retry = match kind {
            ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout | ErrorKind::NoEndpoint => {
                Retry::Safe
            }
            ErrorKind::UpstreamTimeout | ErrorKind::UpstreamFailed => Retry::IfIdempotent,
            _ => Retry::Never,
        };
        Self {
            kind,
            retry,
            context: None,
            detail: None,
            headers: None,
        }
    }

    /// Adds a header to the answer (appended: `WWW-Authenticate` may repeat).
    pub fn header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.headers
            .get_or_insert_with(Default::default)
            .append(name, value);
        self
    }

    /// Adds these headers to the answer.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        match &mut self.headers {
            Some(h) => h.extend(headers),
            None => self.headers = Some(Box::new(headers)),
        }
        self
    }

    /// Adds detail for the client, which the log gets too.
    pub fn detail(mut self, detail: impl fmt::Display) -> Self {
        let detail = detail.to_string().into_boxed_str();
        self.context = Some(detail.clone());
        self.detail = Some(detail);
        self
    }

    /// Adds detail for the log.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.context = Some(context.to_string().into_boxed_str());
        self
    }

    /// The response for this error, shaped for the client: problem+json, or a
    /// gRPC status. It never carries the internal context: gateway errors must
    /// not leak upstream addresses.
    pub fn to_response(
        &self,
        request_id: &HeaderValue,
        style: ErrorStyle,
    ) -> Response<ResponseBody> {
        let mut resp = match style {
            ErrorStyle::Problem => problem_response(self.kind, self.detail.as_deref(), request_id),
            ErrorStyle::Grpc => grpc_response(self.kind),
        };
        if let Some(headers) = &self.headers {
            for (name, value) in headers.iter() {
                resp.headers_mut().append(name, value.clone());
            }
        }
        resp
    }
}

/// The shape of an error answer, chosen from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// An RFC 9457 `application/problem+json` document with the kind's status.
    Problem,
    /// A gRPC trailers-only answer: `200`, `grpc-status` and `grpc-message`.
    Grpc,
}

impl ErrorStyle {
    /// [`ErrorStyle::Grpc`] when the request's `content-type` starts with
    /// `application/grpc` (which covers `application/grpc+proto` and the like).
    pub fn of(headers: &HeaderMap) -> Self {
        let grpc = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc { Self::Grpc } else { Self::Problem }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.slug())?;
        if let Some(c) = &self.context {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProxyError {}

impl From<ErrorKind> for ProxyError {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

/// The RFC 9457 problem type URI of a kind.
pub fn problem_type(kind: ErrorKind) -> String {
    format!("urn:portico:problem:{}", kind.slug())
}

/// Builds an `application/problem+json` answer for `kind`.
pub fn problem_response(
    kind: ErrorKind,
    detail: Option<&str>,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let status = kind.status();
    let mut body = serde_json::json!({
        "type": problem_type(kind),
        "title": kind.title(),
        "status": status.as_u16(),
        "request_id": request_id.to_str().unwrap_or_default(),
    });
    if let Some(detail) = detail {
        body["detail"] = detail.into();
    }
    let bytes = Bytes::from(body.to_string());
    let mut resp = Response::new(ResponseBody::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The gRPC status code for an HTTP status, per gRPC's "HTTP to gRPC Status
/// Code Mapping" (doc/http-grpc-status-mapping.md); anything else is UNKNOWN.
pub fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec asks: bytes
/// outside `%x20-%x7E`, and `%` itself, become `%XX`.
pub fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Builds a gRPC trailers-only answer for `kind`: status 200, content-type
/// `application/grpc`, `grpc-status` and `grpc-message` in the headers, and no
/// body (so HTTP/2 ends the stream with this one HEADERS frame).
pub fn grpc_response(kind: ErrorKind) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::empty());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(grpc_code(kind.status())));
    if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(kind.title())) {
        headers.insert("grpc-message", message);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_status_and_side() {
        assert_eq!(ErrorKind::ConnectFailed.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            ErrorKind::UpstreamTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ErrorKind::NoEndpoint.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ErrorKind::NoRoute.side(), Side::Client);
        assert_eq!(ProxyError::new(ErrorKind::ConnectFailed).retry, Retry::Safe);
        assert_eq!(ProxyError::new(ErrorKind::BadRequest).retry, Retry::Never);
    }

    #[test]
    fn grpc_codes_follow_the_http_mapping() {
        let code = |k: ErrorKind| grpc_code(k.status());
        assert_eq!(code(ErrorKind::NoRoute), 12);
        assert_eq!(code(ErrorKind::BadRequest), 13);
        assert_eq!(code(ErrorKind::ConnectFailed), 14);
        assert_eq!(code(ErrorKind::UpstreamFailed), 14);
        assert_eq!(code(ErrorKind::NoEndpoint), 14);
        assert_eq!(code(ErrorKind::ConnectTimeout), 14);
        assert_eq!(code(ErrorKind::UpstreamTimeout), 14);
        assert_eq!(code(ErrorKind::Internal), 2);
        assert_eq!(code(ErrorKind::UriTooLong), 2);
        assert_eq!(grpc_code(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_code(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_code(StatusCode::TOO_MANY_REQUESTS), 14);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("Upstream failed"), "Upstream failed");
        assert_eq!(grpc_percent_encode("100% ok"), "100%25 ok");
        assert_eq!(grpc_percent_encode("a\nb"), "a%0Ab");
        assert_eq!(grpc_percent_encode("\u{e9}"), "%C3%A9");
        assert_eq!(grpc_percent_encode("~\u{7f}"), "~%7F");
    }

    #[test]
    fn grpc_requests_get_a_trailers_only_answer() {
        let mut h = HeaderMap::new();
        assert_eq!(ErrorStyle::of(&h), ErrorStyle::Problem);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(ErrorStyle::of(&h), ErrorStyle::Problem);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(ErrorStyle::of(&h), ErrorStyle::Grpc);

        let id = HeaderValue::from_static("abc");
        let resp = ProxyError::new(ErrorKind::ConnectFailed).to_response(&id, ErrorStyle::Grpc);
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "Upstream connection failed");
        assert!(http_body::Body::is_end_stream(resp.body()));

        let resp = ProxyError::new(ErrorKind::ConnectFailed).to_response(&id, ErrorStyle::Problem);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
