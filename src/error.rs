//! The one error type of the request path, and the only place that turns
//! errors into responses.
//!
//! Every error knows its [`Side`] (who caused it) and whether a retry is safe,
//! after Pingora's design; the status code, the problem type and the metric
//! label all derive from its [`ErrorKind`].

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

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
    /// The client went away or its body stalled.
    ClientFailed,
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
            Self::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
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
            | Self::ClientFailed => Side::Client,
            Self::ConnectFailed
            | Self::ConnectTimeout
            | Self::UpstreamTimeout
            | Self::UpstreamFailed => Side::Upstream,
            Self::NoEndpoint | Self::Internal => Side::Gateway,
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
        }
    }

    /// Adds detail for the log.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.context = Some(context.to_string().into_boxed_str());
        self
    }

    /// The problem+json response for this error. `detail` is never the internal
    /// context: gateway errors must not leak upstream addresses.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        problem_response(self.kind, request_id)
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
pub fn problem_response(kind: ErrorKind, request_id: &HeaderValue) -> Response<ResponseBody> {
    let status = kind.status();
    let body = serde_json::json!({
        "type": problem_type(kind),
        "title": kind.title(),
        "status": status.as_u16(),
        "request_id": request_id.to_str().unwrap_or_default(),
    });
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
}
