//! Metrics: lock-free instruments the request path updates, and the registry
//! the admin API encodes in the Prometheus text formats.
//!
//! Every handle the request path uses is made when a snapshot is compiled
//! ([`Metrics::route`]) or a listener starts accepting
//! ([`Metrics::listener_connections`]): recording a request is a few atomic
//! adds, with no lock, allocation or label hashing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text, text,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// Prefix of every metric name.
pub const PREFIX: &str = "portico";

/// Upper bounds (seconds) of the latency buckets, shared by every histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets: one atomic add per observation,
/// no lock (prometheus-client's histogram takes a lock on every observe).
#[derive(Debug)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations in microseconds.
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|&b| b < secs);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound (the last is `+Inf`, the total), and
    /// the sum in seconds.
    pub fn snapshot(&self) -> ([u64; LATENCY_BUCKETS.len() + 1], f64) {
        let mut acc = 0;
        let counts = std::array::from_fn(|i| {
            acc += self.buckets[i].load(Ordering::Relaxed);
            acc
        });
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (counts, sum)
    }
}

// By reference: a histogram is encoded in place, in whatever holds it (a
// family's series, an upstream's stats).
impl EncodeMetric for &Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let (counts, sum) = self.snapshot();
        // The encoder wants per-bucket counts and adds them up itself; the
        // count is the `+Inf` bucket's, so the two always agree.
        let mut below = 0;
        let buckets: [(f64, u64); LATENCY_BUCKETS.len() + 1] = std::array::from_fn(|i| {
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            let n = counts[i] - below;
            below = counts[i];
            (bound, n)
        });
        encoder.encode_histogram::<NoLabelSet>(sum, below, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for &Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// A [`Histogram`] that is both a series of a [`Family`] and held by the
/// routes recording into it.
#[derive(Clone, Debug, Default)]
pub struct SharedHistogram(Arc<Histogram>);

impl SharedHistogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        self.0.observe(d);
    }
}

impl EncodeMetric for SharedHistogram {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        (&*self.0).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl TypedMetric for SharedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

/// Values of the `method` label: the common methods by name and the rest as
/// `other`, so that a client cannot create series at will.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

/// Values of the `status_class` label (a status above 599 counts as `5xx`).
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A request method as the `method` label counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodClass(u8);

impl MethodClass {
    /// The class of `method`.
    pub fn of(method: &Method) -> Self {
        let i = match method.as_str() {
            "GET" => 0,
            "HEAD" => 1,
            "POST" => 2,
            "PUT" => 3,
            "PATCH" => 4,
            "DELETE" => 5,
            "OPTIONS" => 6,
            _ => 7,
        };
        Self(i)
    }
}

fn status_class(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, STATUS_CLASSES.len()) - 1
}

/// A route's instruments: request counts by method and status class, and the
/// duration histogram. Made when the snapshot is compiled; a route kept by a
/// reload gets the same series again.
pub struct RouteMetrics {
    requests: [[Counter; STATUS_CLASSES.len()]; METHODS.len()],
    duration: SharedHistogram,
}

impl RouteMetrics {
    /// Counts one answered request and how long it took.
    pub fn record(&self, method: MethodClass, status: StatusCode, elapsed: Duration) {
        self.requests[usize::from(method.0)][status_class(status)].inc();
        self.duration.observe(elapsed);
    }
}

/// One request's entry in its route's metrics, recorded when dropped. It is
/// made when the request starts and travels with the request, then with its
/// response body, so the duration runs until the body is done or the client
/// went away, and a request the client abandons before its response head is
/// counted too, as status 499 (NGINX's "client closed request").
pub struct Recording {
    /// `None` until a route matches or an answer is made (nothing can abandon
    /// a request before routing: it has no await point).
    route: Option<Arc<RouteMetrics>>,
    method: MethodClass,
    status: StatusCode,
    started: Instant,
}

/// The status recorded for a request whose client left before its answer.
const CLIENT_CLOSED: u16 = 499;

impl Recording {
    /// A request with this method class that started at `started`.
    pub fn start(method: MethodClass, started: Instant) -> Self {
        Self {
            route: None,
            method,
            status: StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST),
            started,
        }
    }

    /// The request matched the route with these instruments.
    pub fn set_route(&mut self, route: &Arc<RouteMetrics>) {
        self.route = Some(route.clone());
    }

    /// The request is answered with `status`; `unmatched` counts it when no
    /// route matched.
    pub fn answered(&mut self, status: StatusCode, unmatched: &Arc<RouteMetrics>) {
        self.status = status;
        self.route.get_or_insert_with(|| unmatched.clone());
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(route) = &self.route {
            route.record(self.method, self.status, self.started.elapsed());
        }
    }
}

/// Counts one open connection on a listener's gauge while alive.
pub struct OpenConnection(Gauge);

impl OpenConnection {
    /// Adds one to `gauge` until dropped.
    pub fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteResultLabels {
    route: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitResultLabels {
    limit: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderResultLabels {
    provider: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
}

impl Format {
    /// OpenMetrics when `accept` lists it (as Prometheus does), else the
    /// classic text format that every scraper reads.
    pub fn negotiate(accept: Option<&[u8]>) -> Self {
        let wants_openmetrics = accept.is_some_and(|a| {
            a.windows(b"application/openmetrics-text".len())
                .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => prometheus_text::CONTENT_TYPE,
        }
    }
}

/// The metric families the request path and reloads record into. Made once
/// per process and carried from snapshot to snapshot (see
/// [`crate::gateway::Gateway::metrics`]); what is read at scrape time (upstream
/// state, memory) comes from a [`Collector`] given to [`Metrics::encode`].
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabel, SharedHistogram>,
    connections: Family<ListenerLabel, Gauge>,
    refused: Family<ListenerReasonLabels, Counter>,
    aborted: Family<ListenerReasonLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    auth: Family<RouteResultLabels, Counter>,
    limits: Family<LimitResultLabels, Counter>,
    key_fetches: Family<ProviderResultLabels, Counter>,
    /// The series of requests that matched no route.
    unmatched: Arc<RouteMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty families; both reload results start at 0.
    pub fn new() -> Self {
        let requests = Family::default();
        let request_duration = Family::default();
        let unmatched = Arc::new(route_metrics(&requests, &request_duration, ""));
        let reloads = Family::default();
        for result in ["success", "failure"] {
            reloads.get_or_create_owned(&ResultLabel { result });
        }
        Self {
            requests,
            request_duration,
            connections: Family::default(),
            refused: Family::default(),
            aborted: Family::default(),
            reloads,
            auth: Family::default(),
            limits: Family::default(),
            key_fetches: Family::default(),
            unmatched,
        }
    }

    /// The counter of authentication outcomes `result` (`accepted`,
    /// `anonymous`, `unauthorized`, `forbidden`, `unavailable`) on a route.
    pub fn auth(&self, route: &str, result: &'static str) -> Counter {
        self.auth.get_or_create_owned(&RouteResultLabels {
            route: route.to_owned(),
            result,
        })
    }

    /// The counter of a limit's decisions `result` (`allowed`, `limited`,
    /// `store_error`).
    pub fn limit(&self, limit: &str, result: &'static str) -> Counter {
        self.limits.get_or_create_owned(&LimitResultLabels {
            limit: limit.to_owned(),
            result,
        })
    }

    /// The counter of key-set fetches (JWKS, OIDC discovery, introspection
    /// calls) of an auth provider, by `result` (`success`, `failure`).
    pub fn key_fetch(&self, provider: &str, result: &'static str) -> Counter {
        self.key_fetches.get_or_create_owned(&ProviderResultLabels {
            provider: provider.to_owned(),
            result,
        })
    }

    /// The instruments of the route `name`. Every series is created now, at 0,
    /// so that a rate over a combination not seen yet is 0 rather than absent.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        Arc::new(route_metrics(&self.requests, &self.request_duration, name))
    }

    /// The instruments of requests that matched no route (label `route=""`).
    pub fn unmatched(&self) -> &Arc<RouteMetrics> {
        &self.unmatched
    }

    /// The open connections gauge of a listener.
    pub fn listener_connections(&self, listener: &str) -> Gauge {
        self.connections.get_or_create_owned(&ListenerLabel {
            listener: listener.to_owned(),
        })
    }

    /// The counter of connections a listener closed at accept, for `reason`
    /// (a connection cap).
    pub fn listener_refused(&self, listener: &str, reason: &'static str) -> Counter {
        self.refused.get_or_create_owned(&ListenerReasonLabels {
            listener: listener.to_owned(),
            reason,
        })
    }

    /// The counter of connections a listener closed for a protocol violation
    /// or abuse (an HTTP/2 GOAWAY reason such as `enhance_your_calm`).
    pub fn listener_aborted(&self, listener: &str, reason: &'static str) -> Counter {
        self.aborted.get_or_create_owned(&ListenerReasonLabels {
            listener: listener.to_owned(),
            reason,
        })
    }

    /// Counts one config reload.
    pub fn reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Encodes every family, and what `scraped` reads now, in `format`.
    pub fn encode(&self, format: Format, scraped: impl Collector) -> Result<String, fmt::Error> {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "requests",
            "Requests answered, by route, method and status class",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival until its response body was done, by route",
            self.request_duration.clone(),
        );
        registry.register(
            "listener_connections",
            "Client connections open now, by listener",
            self.connections.clone(),
        );
        registry.register(
            "listener_connections_refused",
            "Client connections closed at accept by a connection cap, by listener and reason",
            self.refused.clone(),
        );
        registry.register(
            "listener_connections_aborted",
            "Client connections closed for a protocol violation or abuse, by listener and reason",
            self.aborted.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by result",
            self.reloads.clone(),
        );
        registry.register(
            "auth",
            "Authentication and authorization outcomes, by route and result",
            self.auth.clone(),
        );
        registry.register(
            "rate_limit_decisions",
            "Rate and concurrency limit decisions, by limit and result",
            self.limits.clone(),
        );
        registry.register(
            "auth_backend_calls",
            "JWKS and discovery fetches and introspection calls, by auth provider and result",
            self.key_fetches.clone(),
        );
        registry.register_collector(Box::new(scraped));
        let mut out = String::with_capacity(32 * 1024);
        match format {
            Format::OpenMetrics => text::encode(&mut out, &registry)?,
            Format::Prometheus => prometheus_text::encode(&mut out, &registry)?,
        }
        Ok(out)
    }
}

fn route_metrics(
    requests: &Family<RequestLabels, Counter>,
    durations: &Family<RouteLabel, SharedHistogram>,
    route: &str,
) -> RouteMetrics {
    RouteMetrics {
        requests: std::array::from_fn(|m| {
            std::array::from_fn(|s| {
                requests.get_or_create_owned(&RequestLabels {
                    route: route.to_owned(),
                    method: METHODS[m],
                    status_class: STATUS_CLASSES[s],
                })
            })
        }),
        duration: durations.get_or_create_owned(&RouteLabel {
            route: route.to_owned(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(400));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let (counts, sum) = h.snapshot();
        assert_eq!(counts[0], 1);
        assert_eq!(counts[3], 2); // <= 5ms
        assert_eq!(counts[13], 2); // <= 10s
        assert_eq!(counts[14], 3); // +Inf
        assert!((sum - 20.0034).abs() < 1e-6, "{sum}");
    }

    #[derive(Debug)]
    struct Nothing;

    impl Collector for Nothing {
        fn encode(&self, _: prometheus_client::encoding::DescriptorEncoder) -> fmt::Result {
            Ok(())
        }
    }

    #[test]
    fn a_route_kept_by_a_reload_counts_into_the_same_series() {
        let m = Metrics::new();
        let get = MethodClass::of(&Method::GET);
        m.route("a")
            .record(get, StatusCode::OK, Duration::from_millis(2));
        m.route("a")
            .record(get, StatusCode::OK, Duration::from_millis(2));
        m.route("a").record(
            MethodClass::of(&Method::from_bytes(b"PURGE").unwrap()),
            StatusCode::from_u16(999).unwrap(),
            Duration::from_secs(60),
        );
        let out = m.encode(Format::Prometheus, Nothing).unwrap();
        for line in [
            "portico_requests_total{route=\"a\",method=\"GET\",status_class=\"2xx\"} 2\n",
            "portico_requests_total{route=\"a\",method=\"other\",status_class=\"5xx\"} 1\n",
            "portico_requests_total{route=\"\",method=\"GET\",status_class=\"2xx\"} 0\n",
            "portico_request_duration_seconds_bucket{route=\"a\",le=\"0.0025\"} 2\n",
            "portico_request_duration_seconds_bucket{route=\"a\",le=\"10\"} 2\n",
            "portico_request_duration_seconds_bucket{route=\"a\",le=\"+Inf\"} 3\n",
            "portico_request_duration_seconds_count{route=\"a\"} 3\n",
            "portico_config_reloads_total{result=\"failure\"} 0\n",
        ] {
            assert!(out.contains(line), "{line} not in:\n{out}");
        }
    }

    #[test]
    fn recording_counts_when_dropped_and_gauges_follow_connections() {
        let m = Metrics::new();
        let mut r = Recording::start(MethodClass::of(&Method::POST), Instant::now());
        r.set_route(&m.route("r"));
        r.answered(StatusCode::NOT_FOUND, m.unmatched());
        let gauge = m.listener_connections("main");
        let open = OpenConnection::new(gauge.clone());
        assert_eq!(gauge.get(), 1);
        let before = m.encode(Format::OpenMetrics, Nothing).unwrap();
        assert!(
            before.contains("{route=\"r\",method=\"POST\",status_class=\"4xx\"} 0\n"),
            "{before}"
        );
        drop(r);
        drop(open);
        assert_eq!(gauge.get(), 0);
        let after = m.encode(Format::OpenMetrics, Nothing).unwrap();
        assert!(
            after.contains("{route=\"r\",method=\"POST\",status_class=\"4xx\"} 1\n"),
            "{after}"
        );
        assert!(after.ends_with("# EOF\n"), "{after}");
    }

    #[test]
    fn negotiation_prefers_openmetrics_only_when_asked() {
        let prom =
            b"application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some(b"*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
