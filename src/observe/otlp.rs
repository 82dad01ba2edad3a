//! OTLP/HTTP span export with the JSON encoding, built with the `otel`
//! feature: one SERVER span per sampled request.
//!
//! Requests queue their finished span without waiting (a full queue drops it
//! and counts it); a thread of its own batches the spans and POSTs them to the
//! collector every `flush_interval`, or as soon as 512 are waiting. The
//! collector's throttling answers (429, 502, 503, 504) and lost connections
//! are retried with exponential backoff, honouring `Retry-After`; other
//! failures drop the batch. Failures and drops are logged at most once per
//! interval.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, Receiver, error::TrySendError};
use tokio::time::{Instant, MissedTickBehavior};

use super::Record;
use crate::config::OtlpConfig;
use crate::pipeline::strip_port;

/// Spans per export request.
const BATCH: usize = 512;
/// Longest one export request may take: connecting, sending, the answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait before retrying a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Most of a collector's answer that is read.
const MAX_ANSWER: usize = 64 * 1024;
/// `Span.flags`: the parent's remoteness is known (OTLP 1.1 `SpanFlags`).
const HAS_IS_REMOTE: u32 = 0x100;
/// `Span.flags`: the parent is remote.
const IS_REMOTE: u32 = 0x200;
/// `SpanKind` SERVER.
const KIND_SERVER: u8 = 2;
/// `Status.code` ERROR.
const STATUS_ERROR: u8 = 2;

/// A collector URL, as the exporter connects to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    authority: HeaderValue,
    path: PathAndQuery,
}

impl Endpoint {
    /// Parses `http://host[:port]/path`, used as given (the port defaults to
    /// 80); says what is wrong otherwise.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "`{url}`: only `http://` collectors are supported, not `{other}://`"
                ));
            }
            None => return Err(format!("`{url}` needs the `http://` scheme")),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{url}`: user information in the URL is not supported"
            ));
        }
        let port =
            match authority
                .as_str()
                .strip_prefix(authority.host())
                .and_then(|rest| rest.strip_prefix(':'))
            {
                None => 80,
                Some(p) => p.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    format!("`{url}`: port `{p}` must be a number from 1 to 65535")
                })?,
            };
        Ok(Self {
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|_| format!("`{url}`: the host is not a valid Host header"))?,
            path: uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        })
    }
}

/// What the export thread receives.
enum Msg {
    Span(Box<Record>),
    /// Export everything queued before this (one attempt), then answer.
    Flush(SyncSender<()>),
}

/// A handle to the span export thread; cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// Starts the export thread for `cfg`.
    pub fn start(cfg: &OtlpConfig) -> io::Result<Self> {
        let endpoint = Endpoint::parse(&cfg.endpoint).map_err(io::Error::other)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        // `interval` panics on zero; validation refuses it anyway.
        let interval = cfg.flush_interval.0.max(Duration::from_millis(1));
        let batcher = Batcher {
            url: cfg.endpoint.clone(),
            endpoint,
            service_name: cfg.service_name.clone(),
            interval,
            cap: cfg.buffer.max(1),
            conn: None,
            pending: VecDeque::new(),
            dropped: dropped.clone(),
            lost: 0,
            hold: None,
            backoff: interval,
            failure: None,
        };
        std::thread::Builder::new()
            .name("portico-otlp".into())
            .spawn(move || runtime.block_on(batcher.run(rx)))?;
        Ok(Self { tx, dropped })
    }

    /// Queues a finished request's span; drops it (and counts it) when the
    /// queue is full.
    pub fn export(&self, record: Record) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Span(Box::new(record))) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `limit`) until every span queued so far is sent or given
    /// up on; called at exit so the last requests' spans are not lost.
    pub fn flush(&self, limit: Duration) {
        let (ack_tx, ack_rx) = sync_channel(1);
        let deadline = std::time::Instant::now() + limit;
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

/// Why an export request failed.
enum Failure {
    /// No answer: connecting, sending or reading failed, or it timed out.
    Connection(String),
    /// The collector refused the batch.
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// The batch could not be encoded.
    Encoding(String),
}

impl Failure {
    /// Whether the same batch may succeed later (OTLP/HTTP "Retryable
    /// Response Codes", and a server that disconnects without answering).
    fn retryable(&self) -> bool {
        match self {
            Failure::Connection(_) => true,
            Failure::Status { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            Failure::Encoding(_) => false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connection(e) => f.write_str(e),
            Failure::Status { status, .. } => write!(f, "the collector answered {status}"),
            Failure::Encoding(e) => write!(f, "cannot encode spans: {e}"),
        }
    }
}

/// The export thread's state.
struct Batcher {
    /// The configured URL, for messages.
    url: String,
    endpoint: Endpoint,
    service_name: String,
    interval: Duration,
    /// Most spans waiting here.
    cap: usize,
    /// The kept-alive connection to the collector.
    conn: Option<http1::SendRequest<Full<Bytes>>>,
    pending: VecDeque<Box<Record>>,
    /// Spans the request path could not queue.
    dropped: Arc<AtomicU64>,
    /// Spans given up on here since the last report.
    lost: u64,
    /// No export before this, after a retryable failure.
    hold: Option<Instant>,
    /// The wait after the next retryable failure.
    backoff: Duration,
    /// The last failure since the last report, and how many there were.
    failure: Option<(String, u64)>,
}

impl Batcher {
    async fn run(mut self, mut rx: Receiver<Msg>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Span(record)) => {
                        self.queue(record);
                        if self.pending.len() >= BATCH {
                            self.export(false).await;
                        }
                    }
                    Some(Msg::Flush(ack)) => {
                        self.export(true).await;
                        self.report();
                        let _ = ack.try_send(());
                    }
                    None => {
                        self.export(true).await;
                        self.report();
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.export(false).await;
                    self.report();
                }
            }
        }
    }

    fn queue(&mut self, record: Box<Record>) {
        if self.pending.len() < self.cap {
            self.pending.push_back(record);
        } else {
            self.lost += 1;
        }
    }

    /// Sends the waiting spans in batches, unless backing off. `last_try`
    /// (at exit) ignores the backoff and gives up on what fails.
    async fn export(&mut self, last_try: bool) {
        if !last_try && self.hold.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.hold = None;
        while !self.pending.is_empty() {
            let n = self.pending.len().min(BATCH);
            let sent = match encode(&self.service_name, self.pending.range(..n).map(|r| &**r)) {
                Ok(body) => tokio::time::timeout(EXPORT_TIMEOUT, self.post(Bytes::from(body)))
                    .await
                    .unwrap_or_else(|_| Err(Failure::Connection("timed out".into()))),
                Err(e) => Err(Failure::Encoding(e.to_string())),
            };
            match sent {
                Ok(rejected) => {
                    self.pending.drain(..n);
                    self.lost += rejected;
                    self.backoff = self.interval;
                }
                Err(f) if f.retryable() && !last_try => {
                    let wait = match &f {
                        Failure::Status {
                            retry_after: Some(after),
                            ..
                        } => *after,
                        // Jitter, so that many gateways do not retry in step.
                        _ => self.backoff.mul_f64(0.5 + fastrand::f64() / 2.0),
                    };
                    self.hold = Some(Instant::now() + wait.min(MAX_BACKOFF));
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    self.note(&f);
                    return;
                }
                Err(f) => {
                    self.pending.drain(..n);
                    self.lost += n as u64;
                    self.note(&f);
                }
            }
        }
    }

    /// POSTs one batch; returns how many spans the collector rejected in a
    /// partial success.
    async fn post(&mut self, body: Bytes) -> Result<u64, Failure> {
        if let Some(tx) = self.conn.take().filter(|tx| !tx.is_closed()) {
            match self.send(tx, body.clone()).await {
                // The collector closed the kept-alive connection: once more,
                // on a new one.
                Err(Failure::Connection(_)) => {}
                done => return done,
            }
        }
        let tx = self.connect().await?;
        self.send(tx, body).await
    }

    async fn connect(&self) -> Result<http1::SendRequest<Full<Bytes>>, Failure> {
        let stream = TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
            .await
            .map_err(|e| Failure::Connection(format!("cannot connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connection(format!("handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "collector connection ended");
            }
        });
        Ok(tx)
    }

    async fn send(
        &mut self,
        mut tx: http1::SendRequest<Full<Bytes>>,
        body: Bytes,
    ) -> Result<u64, Failure> {
        let req = Request::post(self.endpoint.path.as_str())
            .header(header::HOST, self.endpoint.authority.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| Failure::Encoding(e.to_string()))?;
        tx.ready()
            .await
            .map_err(|e| Failure::Connection(e.to_string()))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| Failure::Connection(e.to_string()))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let answer = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes());
        if answer.is_ok() {
            self.conn = Some(tx);
        }
        if !status.is_success() {
            return Err(Failure::Status {
                status,
                retry_after,
            });
        }
        Ok(answer.map_or(0, |a| self.partial_success(&a)))
    }

    /// Reads an `ExportTraceServiceResponse`: how many spans were rejected,
    /// noting the collector's reason.
    fn partial_success(&mut self, answer: &[u8]) -> u64 {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(answer) else {
            return 0;
        };
        let partial = &v["partialSuccess"];
        // An int64 is a string in JSON, though a number is accepted too.
        let rejected = match &partial["rejectedSpans"] {
            serde_json::Value::String(s) => s.parse().unwrap_or(0),
            n => n.as_u64().unwrap_or(0),
        };
        if rejected > 0 {
            let reason = partial["errorMessage"]
                .as_str()
                .unwrap_or("no reason given");
            self.note(&format!(
                "the collector rejected {rejected} spans: {reason}"
            ));
        }
        rejected
    }

    fn note(&mut self, failure: &dyn fmt::Display) {
        let count = self.failure.as_ref().map_or(0, |(_, n)| *n);
        self.failure = Some((failure.to_string(), count + 1));
    }

    /// Logs what went wrong since the last report, once.
    fn report(&mut self) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed) + std::mem::take(&mut self.lost);
        if let Some((error, failures)) = self.failure.take() {
            tracing::warn!(endpoint = %self.url, failures, error, spans_dropped = dropped, "span export failed");
        } else if dropped > 0 {
            tracing::warn!(endpoint = %self.url, spans_dropped = dropped, "span export queue full; spans dropped");
        }
    }
}

/// `ExportTraceServiceRequest`, JSON-encoded (OTLP/HTTP): one resource, one
/// scope.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: [KeyValue<'a>; 1],
}

#[derive(Serialize)]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<Span<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Span<'a> {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    flags: u32,
    name: String,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status<'a>>,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'static str,
    value: AnyValue<'a>,
}

/// `AnyValue`: one key per variant, as in `{"stringValue": "GET"}`.
#[derive(Serialize)]
enum AnyValue<'a> {
    #[serde(rename = "stringValue")]
    Str(Cow<'a, str>),
    /// An int64, a decimal string in JSON.
    #[serde(rename = "intValue")]
    Int(String),
}

#[derive(Serialize)]
struct Status<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    code: u8,
}

fn kv<'a>(key: &'static str, value: impl Into<Cow<'a, str>>) -> KeyValue<'a> {
    KeyValue {
        key,
        value: AnyValue::Str(value.into()),
    }
}

fn int(key: &'static str, value: u64) -> KeyValue<'static> {
    KeyValue {
        key,
        value: AnyValue::Int(value.to_string()),
    }
}

/// Encodes one export request for `records` (those with a trace context).
fn encode<'a>(
    service_name: &str,
    records: impl Iterator<Item = &'a Record>,
) -> serde_json::Result<Vec<u8>> {
    let request = ExportRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: [kv("service.name", service_name)],
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "portico",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: records.filter_map(span).collect(),
            }],
        }],
    };
    serde_json::to_vec(&request)
}

/// The span of one request, following the OpenTelemetry HTTP server
/// semantic conventions; `http.route` is the Portico route's name.
fn span(r: &Record) -> Option<Span<'_>> {
    let trace = r.trace?;
    let start = r.time.unwrap_or(UNIX_EPOCH);
    let path = r.path.split_once('?').map_or(r.path.as_str(), |(p, _)| p);
    let mut attributes = vec![
        kv("http.request.method", r.method.as_str()),
        kv("url.path", path),
        int("http.response.status_code", r.status.into()),
        int("http.request.body.size", r.bytes_in),
        int("http.response.body.size", r.bytes_out),
        kv("portico.request_id", r.request_id.as_str()),
    ];
    if let Some(route) = &r.route {
        attributes.push(kv("http.route", &**route));
    }
    let host = strip_port(&r.host);
    if !host.is_empty() {
        attributes.push(kv("server.address", host));
    }
    if let Some(client) = r.client {
        attributes.push(kv("client.address", client.ip().to_string()));
    }
    if let Some(upstream) = r.upstream {
        attributes.push(kv("portico.upstream.address", upstream.to_string()));
    }
    let name = match &r.route {
        Some(route) => format!("{} {route}", r.method),
        None => r.method.clone(),
    };
    Some(Span {
        trace_id: trace.trace_id.to_string(),
        span_id: trace.span_id.to_string(),
        parent_span_id: trace.parent_id.map(|p| p.to_string()),
        flags: u32::from(trace.sampled)
            | HAS_IS_REMOTE
            | if trace.parent_id.is_some() {
                IS_REMOTE
            } else {
                0
            },
        name,
        kind: KIND_SERVER,
        start_time_unix_nano: unix_nanos(start).to_string(),
        end_time_unix_nano: unix_nanos(start + r.duration).to_string(),
        attributes,
        status: (r.status >= 500).then_some(Status {
            message: r.error.as_deref(),
            code: STATUS_ERROR,
        }),
    })
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::trace::{SpanContext, SpanId, TraceId};
    use serde_json::Value;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:4318/v1/traces").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 4318));
        assert_eq!(e.path.as_str(), "/v1/traces");
        assert_eq!(e.authority, "127.0.0.1:4318");
        let e = Endpoint::parse("http://collector.internal").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector.internal", 80, "/")
        );
        let e = Endpoint::parse("http://[::1]:4318/v1/traces?x=1").unwrap();
        assert_eq!(
            (e.host.as_str(), e.path.as_str()),
            ("::1", "/v1/traces?x=1")
        );
        for (bad, why) in [
            ("https://collector:4318/v1/traces", "only `http://`"),
            ("collector:4318/v1/traces", "is not a URL"),
            ("/v1/traces", "needs the `http://` scheme"),
            ("http://user:pw@collector/v1/traces", "user information"),
            ("http://collector:0/v1/traces", "port `0`"),
            ("http://collector:99999/v1/traces", "port `99999`"),
            ("http://collector:/v1/traces", "port ``"),
            ("not a url", "is not a URL"),
        ] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    fn record(parent: Option<SpanId>, status: u16) -> Record {
        Record {
            time: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            request_id: "req-1".into(),
            client: Some("10.0.0.9:5555".parse().unwrap()),
            method: "GET".into(),
            host: "shop.example:8080".into(),
            path: "/api/items?x=1".into(),
            status,
            route: Some("api".into()),
            upstream: Some("10.1.0.1:80".parse().unwrap()),
            duration: Duration::from_millis(5),
            bytes_in: 3,
            bytes_out: 1234,
            error: (status >= 500).then(|| "upstream refused".to_owned()),
            trace: Some(SpanContext {
                trace_id: TraceId([0x11; 16]),
                span_id: SpanId([0x22; 8]),
                parent_id: parent,
                sampled: true,
            }),
            ..Record::default()
        }
    }

    fn attrs(span: &Value) -> Vec<(String, Value)> {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone()))
            .collect()
    }

    #[test]
    fn export_request_shape() {
        let records = [record(Some(SpanId([0x33; 8])), 200), record(None, 503)];
        let body = encode("edge", records.iter()).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            serde_json::json!({"key": "service.name", "value": {"stringValue": "edge"}})
        );
        assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "portico");
        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2);

        let s = &spans[0];
        assert_eq!(s["traceId"], "11".repeat(16));
        assert_eq!(s["spanId"], "22".repeat(8));
        assert_eq!(s["parentSpanId"], "33".repeat(8));
        assert_eq!(s["flags"], 0x301);
        assert_eq!(s["name"], "GET api");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000005000000");
        assert!(s.get("status").is_none());
        let a = attrs(s);
        let get = |k: &str| a.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("http.request.method").unwrap(),
            serde_json::json!({"stringValue": "GET"})
        );
        assert_eq!(get("url.path").unwrap()["stringValue"], "/api/items");
        assert_eq!(
            get("http.response.status_code").unwrap(),
            serde_json::json!({"intValue": "200"})
        );
        assert_eq!(get("http.request.body.size").unwrap()["intValue"], "3");
        assert_eq!(get("http.response.body.size").unwrap()["intValue"], "1234");
        assert_eq!(get("http.route").unwrap()["stringValue"], "api");
        assert_eq!(
            get("server.address").unwrap()["stringValue"],
            "shop.example"
        );
        assert_eq!(get("client.address").unwrap()["stringValue"], "10.0.0.9");
        assert_eq!(
            get("portico.upstream.address").unwrap()["stringValue"],
            "10.1.0.1:80"
        );
        assert_eq!(get("portico.request_id").unwrap()["stringValue"], "req-1");

        let s = &spans[1];
        assert!(s.get("parentSpanId").is_none());
        assert_eq!(s["flags"], 0x101);
        assert_eq!(
            s["status"],
            serde_json::json!({"message": "upstream refused", "code": 2})
        );
    }

    #[test]
    fn only_retryable_failures_are_retried() {
        let status = |s: u16| Failure::Status {
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
        };
        for s in [429, 502, 503, 504] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [400, 401, 404, 413, 500] {
            assert!(!status(s).retryable(), "{s}");
        }
        assert!(Failure::Connection("reset".into()).retryable());
    }
}
