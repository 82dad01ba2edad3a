//! Observability: the per-request record, the access log and request ids.

pub mod access_log;
pub mod request_id;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use tokio::time::Instant;

pub use access_log::AccessLog;

/// What is known about one request; written to the access log when dropped,
/// which happens when its response body is done (or the client went away).
pub struct Exchange {
    sink: Option<AccessLog>,
    started: Instant,
    /// The record that will be written.
    pub record: Record,
    /// Bytes of request body read from the client, when it had one.
    pub bytes_in: Option<Arc<AtomicU64>>,
    /// Bytes of response body sent.
    pub bytes_out: u64,
    /// False when the response body did not finish.
    pub completed: bool,
}

/// One access log line.
#[derive(Debug, Default)]
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
}

impl Exchange {
    /// Starts a record; `sink` None means nothing is written.
    pub fn new(sink: Option<AccessLog>, started: Instant) -> Self {
        Self {
            sink,
            started,
            record: Record::default(),
            bytes_in: None,
            bytes_out: 0,
            completed: true,
        }
    }

    /// Whether the details are wanted (the access log is on).
    pub fn wants_details(&self) -> bool {
        self.sink.is_some()
    }

    /// Fills in the request's fields.
    pub fn set_request(
        &mut self,
        method: &Method,
        host: &str,
        path_and_query: &str,
        client: SocketAddr,
        request_id: &HeaderValue,
    ) {
        if self.sink.is_none() {
            return;
        }
        let r = &mut self.record;
        r.time = Some(SystemTime::now());
        r.method = method.as_str().to_owned();
        r.host = host.to_owned();
        r.path = path_and_query.to_owned();
        r.client = Some(client);
        r.request_id = String::from_utf8_lossy(request_id.as_bytes()).into_owned();
    }

    /// Records an error's detail.
    pub fn note_error(&mut self, detail: fmt::Arguments<'_>) {
        if self.sink.is_some() {
            self.record.error = Some(detail.to_string());
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        let mut record = std::mem::take(&mut self.record);
        record.duration = self.started.elapsed();
        record.bytes_out = self.bytes_out;
        record.bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed));
        if !self.completed && record.error.is_none() {
            record.error = Some("response not completed".into());
        }
        sink.write(record);
    }
}
