//! Observability: the per-request record, the access log, request ids, trace
//! context and span export.

pub mod access_log;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otlp;
pub mod request_id;
pub mod trace;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use tokio::time::Instant;

pub use access_log::AccessLog;
#[cfg(feature = "otel")]
pub use otlp::Exporter as SpanExporter;
use trace::SpanContext;

/// Why a config with `tracing.otlp` is refused by a build without span export.
#[cfg(not(feature = "otel"))]
pub const OTLP_NEEDS_FEATURE: &str = "tracing.otlp needs portico built with `--features otel`";

/// Where finished spans go. Without the `otel` feature there is no exporter,
/// so this type has no values and span export compiles away.
#[cfg(not(feature = "otel"))]
#[derive(Clone)]
pub enum SpanExporter {}

#[cfg(not(feature = "otel"))]
impl SpanExporter {
    /// Always fails: validation refuses `tracing.otlp` in this build first.
    pub fn start(_: &crate::config::OtlpConfig) -> std::io::Result<Self> {
        Err(std::io::Error::other(OTLP_NEEDS_FEATURE))
    }

    /// Never called: there is no exporter.
    pub fn export(&self, _: Record) {
        match *self {}
    }

    /// Never called: there is no exporter.
    pub fn flush(&self, _: Duration) {
        match *self {}
    }
}

/// What is known about one request; written to the access log and exported as
/// a span when dropped, which happens when its response body is done (or the
/// client went away). With neither on it is a null pointer, so it costs
/// nothing to carry.
#[derive(Default)]
pub struct Exchange(Option<Box<Logged>>);

struct Logged {
    log: Option<AccessLog>,
    spans: Option<SpanExporter>,
    started: Instant,
    record: Record,
    bytes_in: Option<Arc<AtomicU64>>,
    completed: bool,
}

/// One access log line, and the span of a sampled request.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// Wall-clock start time.
    pub time: Option<SystemTime>,
    /// The request id.
    pub request_id: String,
    /// The client's address (after trusted proxies).
    pub client: Option<SocketAddr>,
    /// Request method.
    pub method: String,
    /// Request host.
    pub host: String,
    /// Request path and query.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Matched route.
    pub route: Option<Arc<str>>,
    /// The identified caller: a consumer's name, or a token's subject.
    pub consumer: Option<Arc<str>>,
    /// Upstream endpoint address.
    pub upstream: Option<SocketAddr>,
    /// Time until the upstream's response head.
    pub upstream_duration: Option<Duration>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Total duration.
    pub duration: Duration,
    /// What went wrong, if anything (gateway-side detail).
    pub error: Option<String>,
    /// The request's trace context.
    pub trace: Option<SpanContext>,
}

impl Exchange {
    /// Starts a record, for the access log `log` and the span exporter `spans`
    /// (given only for sampled requests); with neither, nothing is recorded.
    pub fn new(log: Option<AccessLog>, spans: Option<SpanExporter>, started: Instant) -> Self {
        if log.is_none() && spans.is_none() {
            return Self(None);
        }
        Self(Some(Box::new(Logged {
            log,
            spans,
            started,
            record: Record::default(),
            bytes_in: None,
            completed: true,
        })))
    }

    /// The record to fill in, when the access log is on.
    pub fn record(&mut self) -> Option<&mut Record> {
        self.0.as_mut().map(|l| &mut l.record)
    }

    /// Fills in the request's fields.
    pub fn set_request(
        &mut self,
        method: &Method,
        host: &str,
        path_and_query: &str,
        client: SocketAddr,
        request_id: &HeaderValue,
        trace: SpanContext,
    ) {
        let Some(r) = self.record() else {
            return;
        };
        r.time = Some(SystemTime::now());
        r.method = method.as_str().to_owned();
        r.host = host.to_owned();
        r.path = path_and_query.to_owned();
        r.client = Some(client);
        r.request_id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
        r.trace = Some(trace);
    }

    /// A counter for request body bytes, when the access log wants it.
    pub fn bytes_in_counter(&mut self) -> Option<Arc<AtomicU64>> {
        let l = self.0.as_mut()?;
        Some(l.bytes_in.get_or_insert_with(Default::default).clone())
    }

    /// Adds response body bytes sent.
    pub fn add_bytes_out(&mut self, n: usize) {
        if let Some(r) = self.record() {
            r.bytes_out += n as u64;
        }
    }

    /// Marks whether the response body finished.
    pub fn set_completed(&mut self, completed: bool) {
        if let Some(l) = self.0.as_mut() {
            l.completed = completed;
        }
    }

    /// Records an error's detail.
    pub fn note_error(&mut self, detail: fmt::Arguments<'_>) {
        if let Some(r) = self.record() {
            r.error = Some(detail.to_string());
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let Some(logged) = self.0.take() else {
            return;
        };
        let Logged {
            log,
            spans,
            started,
            mut record,
            bytes_in,
            completed,
        } = *logged;
        record.duration = started.elapsed();
        record.bytes_in = bytes_in.map_or(0, |c| c.load(Ordering::Relaxed));
        if !completed && record.error.is_none() {
            record.error = Some("response not completed".into());
        }
        match (log, spans) {
            (Some(log), Some(spans)) => {
                spans.export(record.clone());
                log.write(record);
            }
            (Some(log), None) => log.write(record),
            (None, Some(spans)) => spans.export(record),
            (None, None) => {}
        }
    }
}
