//! The documented config schema: what a user writes in `portico.yaml`.
//!
//! Every struct rejects unknown keys. Values that later checks must point at
//! carry their source location through [`Spanned`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

pub use super::auth::*;
pub use super::rate_limit::*;
use super::units::{Dur, Size};

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker runtimes; default: the number of cores.
    #[serde(default)]
    pub workers: Option<usize>,
    /// How long graceful shutdown waits for requests in flight.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Access log settings.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Request id settings.
    #[serde(default)]
    pub request_id: RequestIdConfig,
    /// How X-Forwarded-* and Forwarded are written.
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    /// Limits on requests read from clients.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Where the gateway listens.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Named groups of backend endpoints.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    /// Routes, matched by specificity (see docs/configuration.md).
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// The admin API listener; off when absent.
    #[serde(default)]
    pub admin: Option<Spanned<AdminConfig>>,
    /// W3C trace context propagation and span export.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// How request paths are normalised before routing.
    #[serde(default)]
    pub normalize_path: NormalizePathConfig,
    /// Upstream response headers removed before the client sees them.
    #[serde(default = "default_hidden_headers")]
    pub hide_response_headers: Vec<String>,
    /// Identities calling the APIs, with their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Named authentication providers, used by routes' `auth`.
    #[serde(default)]
    pub auth_providers: BTreeMap<String, Spanned<AuthProviderConfig>>,
    /// Named limits: one set of counts shared by every route that names one.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, Spanned<RateLimitConfig>>,
    /// The Redis store of limits with `store: redis`.
    #[serde(default)]
    pub redis: Option<Spanned<RedisConfig>>,
}

fn default_hidden_headers() -> Vec<String> {
    vec!["server".into(), "x-powered-by".into()]
}

/// Path normalisation, done once before routing: routing, filters and the
/// upstream all see the same path.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NormalizePathConfig {
    /// Merge runs of `/` into one.
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    /// What to do with `%2F` / `%2f` in the path.
    #[serde(default)]
    pub encoded_slash: EncodedSlash,
    /// What to do with `\` (and `%5C`) in the path.
    #[serde(default)]
    pub backslash: Backslash,
}

impl Default for NormalizePathConfig {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_slash: EncodedSlash::default(),
            backslash: Backslash::default(),
        }
    }
}

/// Handling of a percent-encoded slash in a path.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlash {
    /// 400.
    #[default]
    Reject,
    /// Decoded to `/` (then normalised like any other).
    Decode,
    /// Kept encoded, as data inside a segment.
    Keep,
}

/// Handling of a backslash in a path.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backslash {
    /// 400.
    #[default]
    Reject,
    /// Treated as `/`.
    Slash,
}

/// The admin API: health, readiness, config, reload, upstream state, metrics.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port` to bind; loopback unless set otherwise.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Bearer token every admin request must carry, when set.
    #[serde(default)]
    pub token: Option<String>,
}

fn default_admin_address() -> String {
    "127.0.0.1:9901".into()
}

/// W3C trace context: `traceparent` is propagated upstream, and started when absent.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Share of new traces (no sampled `traceparent` from the client) marked sampled, 0.0..=1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// OTLP/HTTP span export (needs the `otel` cargo feature).
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            sample_ratio: default_sample_ratio(),
            otlp: None,
        }
    }
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// Where and how spans are exported over OTLP/HTTP.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector URL, e.g. `http://127.0.0.1:4318/v1/traces` (plain HTTP).
    pub endpoint: String,
    /// `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Spans buffered before new ones are dropped (and counted).
    #[serde(default = "default_otlp_buffer")]
    pub buffer: usize,
    /// Longest time a span waits before its batch is sent.
    #[serde(default = "default_otlp_flush")]
    pub flush_interval: Dur,
}

fn default_service_name() -> String {
    "portico".into()
}
fn default_otlp_buffer() -> usize {
    4096
}
fn default_otlp_flush() -> Dur {
    Dur(std::time::Duration::from_secs(1))
}

fn default_shutdown_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// Access log: one JSON line per request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Whether lines are written at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `stdout`, `stderr` or a file path (appended to).
    #[serde(default = "default_log_target")]
    pub target: String,
    /// Lines buffered before new ones are dropped (and counted).
    #[serde(default = "default_log_buffer")]
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            target: default_log_target(),
            buffer: default_log_buffer(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_log_target() -> String {
    "stdout".into()
}
fn default_log_buffer() -> usize {
    16_384
}

/// Request id: taken from the client or generated, sent upstream and returned.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// Header that carries the id.
    #[serde(default = "default_request_id_header")]
    pub header: String,
    /// Keep a well-formed id sent by the client instead of generating one.
    #[serde(default)]
    pub trust_incoming: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        Self {
            header: default_request_id_header(),
            trust_incoming: false,
        }
    }
}

fn default_request_id_header() -> String {
    "x-request-id".into()
}

/// X-Forwarded-* / Forwarded handling.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    /// Peers (CIDR or address) whose X-Forwarded-* values are kept and appended to;
    /// from anyone else they are replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Also write the RFC 7239 `Forwarded` header.
    #[serde(default)]
    pub forwarded_header: bool,
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest request target accepted (414 beyond).
    #[serde(default = "default_max_uri")]
    pub max_uri_length: Size,
    /// Largest request header block accepted (431 beyond).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: Size,
    /// Most request headers accepted (431 beyond).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time a client has to send the whole request head.
    #[serde(default = "default_header_timeout")]
    pub header_read_timeout: Dur,
    /// Longest time a write to a client may make no progress (a client that
    /// stops reading); the connection is closed beyond.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: Dur,
    /// A keep-alive connection idle this long between requests is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Longest silence while reading a request body from a client (408 or cut).
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout: Dur,
    /// Largest request body accepted (0: no limit); `routes[].max_body_size` overrides it.
    #[serde(default)]
    pub max_body_size: Size,
    /// Concurrent streams per HTTP/2 connection.
    #[serde(default = "default_h2_streams")]
    pub max_concurrent_streams: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_uri_length: default_max_uri(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_timeout(),
            send_timeout: default_send_timeout(),
            idle_timeout: default_idle_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_body_size: Size(0),
            max_concurrent_streams: default_h2_streams(),
        }
    }
}

fn default_max_uri() -> Size {
    Size(8 * 1024)
}
fn default_max_header_bytes() -> Size {
    Size(64 * 1024)
}
fn default_max_headers() -> usize {
    100
}
fn default_send_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn default_idle_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn default_body_read_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}
fn default_h2_streams() -> u32 {
    100
}
fn default_header_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// One listening socket serving HTTP/1.1 and HTTP/2 (h2c, or over TLS).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs and to bind routes.
    pub name: Spanned<String>,
    /// `ip:port` to bind.
    pub address: Spanned<String>,
    /// TLS termination; plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTls>>,
    /// Answer every request with a redirect to HTTPS (for a plain listener).
    #[serde(default)]
    pub redirect_https: Option<RedirectHttps>,
    /// Client connections open at once on this listener (0: no cap); beyond,
    /// new connections are closed at once.
    #[serde(default)]
    pub max_connections: usize,
    /// Client connections open at once from one client IP (0: no cap).
    #[serde(default)]
    pub max_connections_per_ip: usize,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chains and keys, chosen by SNI against their own SAN
    /// entries. May be empty when `acme` obtains the certificate.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    /// A handshake whose SNI names no certificate (or that has no SNI): served
    /// with the first certificate (`default`) or refused (`refuse`).
    #[serde(default)]
    pub unknown_sni: UnknownSni,
    /// Lowest TLS version accepted: `"1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Refuse with 421 a request whose Host differs from the SNI name of its
    /// connection (domain fronting).
    #[serde(default = "yes")]
    pub sni_host_binding: bool,
    /// Client certificates (mTLS).
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
    /// `Strict-Transport-Security` added to responses.
    #[serde(default)]
    pub hsts: Option<HstsConfig>,
    /// A certificate for `domains` obtained and renewed from an ACME CA
    /// (needs portico built with `--features acme`).
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
}

/// Certificates obtained and renewed automatically from an ACME CA (RFC 8555).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// Contact address of the account.
    #[serde(default)]
    pub email: Option<String>,
    /// The DNS names of the certificate (one certificate for all of them).
    pub domains: Vec<String>,
    /// Folder for the account credentials and the certificates and keys.
    pub storage: String,
    /// How the CA checks control of the domains.
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// PEM file of a CA to trust for the directory (a test CA such as pebble).
    #[serde(default)]
    pub ca: Option<String>,
    /// Renew when this much of the certificate's life is left (default: at
    /// two thirds of its life).
    #[serde(default)]
    pub renew_before: Option<Dur>,
}

/// The ACME challenge type.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AcmeChallenge {
    /// `http-01`: the CA fetches `/.well-known/acme-challenge/<token>` on
    /// port 80 from a plain listener of this gateway.
    #[default]
    #[serde(rename = "http_01")]
    Http01,
    /// `tls-alpn-01`: the CA connects with ALPN `acme-tls/1` to port 443 of
    /// this listener.
    #[serde(rename = "tls_alpn_01")]
    TlsAlpn01,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate first, then its chain.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: String,
}

/// What a handshake gets when no certificate matches its SNI.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSni {
    /// The first certificate of the list.
    #[default]
    Default,
    /// The handshake fails (`unrecognized_name` alert).
    Refuse,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client certificate authentication on a TLS listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// `required`: no certificate, no handshake; `optional`: verified when sent.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: String,
    /// Send the verified subject and SANs upstream (and to routing) in
    /// `x-client-cert-subject` and `x-client-cert-san`.
    #[serde(default = "yes")]
    pub forward_headers: bool,
}

/// Whether a client certificate is needed.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// Every client must present a valid certificate.
    #[default]
    Required,
    /// A certificate is verified when presented; clients without one pass.
    Optional,
}

/// HTTP Strict Transport Security (RFC 6797).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HstsConfig {
    /// `max-age`.
    #[serde(default = "default_hsts_max_age")]
    pub max_age: Dur,
    /// `includeSubDomains`.
    #[serde(default)]
    pub include_subdomains: bool,
    /// `preload`.
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_max_age() -> Dur {
    Dur(std::time::Duration::from_secs(365 * 86_400))
}

/// Redirect plain-HTTP requests to HTTPS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttps {
    /// HTTPS port in the Location (default 443, left out of the URL).
    #[serde(default = "default_https_port")]
    pub port: u16,
    /// 301, 302, 307 or 308.
    #[serde(default = "default_https_redirect_status")]
    pub status: u16,
}

fn default_https_port() -> u16 {
    443
}
fn default_https_redirect_status() -> u16 {
    308
}

/// A named group of endpoints.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Endpoints: `host:port` strings or `{ address, weight }`.
    pub endpoints: Vec<Spanned<EndpointConfig>>,
    /// Load-balancing policy.
    #[serde(default)]
    pub balance: BalanceConfig,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// `Host` sent upstream: keep the client's (default), use the endpoint's address,
    /// or a fixed value.
    #[serde(default)]
    pub host: HostHeader,
    /// Timeouts towards this upstream.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Connection pool settings (per worker).
    #[serde(default)]
    pub pool: PoolConfig,
    /// How often DNS names among the endpoints are resolved again.
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Dur,
    /// Active health checks; none when absent.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive checks: endpoints that fail are ejected for a while; off when absent.
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    /// Resource caps; a request over a cap gets 503 at once.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// How many retries may run at once, relative to requests in flight.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
    /// An endpoint that just became available ramps its share of traffic up over this time (0: off).
    #[serde(default)]
    pub slow_start: Dur,
    /// When no endpoint is available, use them all instead of answering 503.
    #[serde(default)]
    pub panic_mode: bool,
    /// TLS to the endpoints; plain TCP when absent.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// TLS towards an upstream's endpoints.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of CAs to trust instead of the system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Name sent in SNI and verified in the certificate (default: the endpoint's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate for upstream mTLS.
    #[serde(default)]
    pub client_cert: Option<CertificateConfig>,
    /// Accept any certificate. For tests only: the connection is not authenticated.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Active health checking of every endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http`, `tcp` or `grpc`.
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// HTTP: request path.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// HTTP: request method.
    #[serde(default = "default_health_method")]
    pub method: String,
    /// HTTP and gRPC: Host / `:authority` sent (default: the endpoint's address).
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP: statuses that count as healthy: codes (`204`) or ranges (`200-399`).
    #[serde(default = "default_health_statuses")]
    pub expected_statuses: Vec<StatusRange>,
    /// gRPC: the service name asked about (empty: the server as a whole).
    #[serde(default)]
    pub grpc_service: String,
    /// Time between two checks of one endpoint.
    #[serde(default = "default_health_interval")]
    pub interval: Dur,
    /// Time a check may take before it counts as failed.
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
    /// Random extra delay, 0..jitter, added to each interval.
    #[serde(default)]
    pub jitter: Dur,
    /// Consecutive passes that make an unhealthy endpoint healthy.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// The kind of active health check.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// An HTTP request whose status must be expected.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// `grpc.health.v1.Health/Check` over h2c; SERVING is healthy.
    Grpc,
}

/// A status code or an inclusive range, written `204` or `200-399`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    /// Lowest status in the range.
    pub from: u16,
    /// Highest status in the range.
    pub to: u16,
}

impl StatusRange {
    /// Whether `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.from..=self.to).contains(&status)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.from == self.to {
            s.serialize_u16(self.from)
        } else {
            s.collect_str(&format_args!("{}-{}", self.from, self.to))
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a status code (`200`) or a range (`200-399`) within 100-599")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusRange, E> {
                let code = u16::try_from(v)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| E::custom(format!("status {v} is not within 100-599")))?;
                Ok(StatusRange {
                    from: code,
                    to: code,
                })
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusRange, E> {
                self.visit_u64(
                    u64::try_from(v)
                        .map_err(|_| E::custom(format!("status {v} is not within 100-599")))?,
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusRange, E> {
                let parse = |p: &str| {
                    p.trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .ok_or_else(|| E::custom(format!("`{v}` is not a status code or a range such as `200-399` within 100-599")))
                };
                let (from, to) = match v.split_once('-') {
                    Some((a, b)) => (parse(a)?, parse(b)?),
                    None => {
                        let c = parse(v)?;
                        (c, c)
                    }
                };
                if from > to {
                    return Err(E::custom(format!("status range `{v}` is empty")));
                }
                Ok(StatusRange { from, to })
            }
        }
        d.deserialize_any(V)
    }
}

fn default_health_path() -> String {
    "/".into()
}
fn default_health_method() -> String {
    "GET".into()
}
fn default_health_statuses() -> Vec<StatusRange> {
    vec![StatusRange { from: 200, to: 399 }]
}
fn default_health_interval() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_health_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive health: eject endpoints whose real traffic fails.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive 5xx answers (the upstream's or the gateway's 502/503/504 for it) that eject (0: off).
    #[serde(default = "default_consecutive")]
    pub consecutive_5xx: u32,
    /// Consecutive connect failures or timeouts that eject (0: off).
    #[serde(default = "default_consecutive")]
    pub consecutive_connect_failures: u32,
    /// Share of failed requests (0.0..=1.0) within `window` that ejects (0: off).
    #[serde(default)]
    pub failure_ratio: f64,
    /// The window the failure ratio is computed over.
    #[serde(default = "default_outlier_window")]
    pub window: Dur,
    /// Requests an endpoint needs within the window before its ratio counts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// First ejection time; the n-th ejection in a row lasts n times as long.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_time: Dur,
    /// Longest ejection time.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_time: Dur,
    /// Most endpoints ejected at once, as a percentage (at least one may always be ejected).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_outlier_window() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_min_requests() -> u32 {
    20
}
fn default_base_ejection() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}
fn default_max_ejection() -> Dur {
    Dur(std::time::Duration::from_secs(300))
}
fn default_max_ejection_percent() -> u32 {
    50
}

/// Caps on what one upstream may hold at once, across all workers (0: no cap).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Open connections to the upstream.
    #[serde(default)]
    pub max_connections: u32,
    /// Requests waiting for a connection.
    #[serde(default)]
    pub max_pending: u32,
    /// Requests in flight to the upstream.
    #[serde(default)]
    pub max_requests: u32,
    /// Retries in flight to the upstream.
    #[serde(default)]
    pub max_retries: u32,
}

/// Retries in flight at once may be at most `percent` of the requests in
/// flight, or `min_concurrency`, whichever is larger (Envoy's retry budget).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Percentage of requests in flight that may be retries.
    #[serde(default = "default_budget_percent")]
    pub percent: f64,
    /// Retries always allowed at once, whatever the traffic.
    #[serde(default = "default_budget_min")]
    pub min_concurrency: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            percent: default_budget_percent(),
            min_concurrency: default_budget_min(),
        }
    }
}

fn default_budget_percent() -> f64 {
    20.0
}
fn default_budget_min() -> u32 {
    3
}

fn default_resolve_interval() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// An endpoint, as a string or a map.
///
/// `Deserialize` is written by hand (not `untagged`) so that a mistake inside the
/// map, such as a misspelt `weight`, is reported as such.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// `host:port`, weight 1.
    Address(String),
    /// With a weight.
    Weighted(WeightedEndpoint),
}

/// An endpoint with a weight.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedEndpoint {
    /// `host:port`.
    pub address: String,
    /// Relative share of traffic, 1..=1000.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EndpointConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`host:port` or `{ address: host:port, weight: n }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EndpointConfig, E> {
                Ok(EndpointConfig::Address(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EndpointConfig, A::Error> {
                WeightedEndpoint::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(EndpointConfig::Weighted)
            }
        }
        d.deserialize_any(V)
    }
}

impl EndpointConfig {
    /// The `host:port` text.
    pub fn address(&self) -> &str {
        match self {
            Self::Address(a) => a,
            Self::Weighted(w) => &w.address,
        }
    }
    /// The weight (1 when not given).
    pub fn weight(&self) -> u32 {
        match self {
            Self::Address(_) => 1,
            Self::Weighted(w) => w.weight,
        }
    }
}

/// Load-balancing policy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BalanceConfig {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// Consistent hashing on a request key.
    ConsistentHash(HashKey),
    /// Power of two choices over latency EWMA times in-flight requests.
    PeakEwma,
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashKey {
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client address (as resolved through trusted proxies).
    ClientIp,
    /// The request path.
    Path,
}

/// Protocol towards an upstream.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (cleartext).
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`); needs `tls`.
    H2,
}

/// How the upstream `Host` header is set.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HostHeader {
    /// The client's Host, as received.
    #[default]
    Preserve,
    /// The endpoint's configured `host:port`.
    Endpoint,
    /// This fixed value.
    Fixed(String),
}

/// Timeouts towards an upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TCP connect.
    #[serde(default = "default_connect")]
    pub connect: Dur,
    /// From sending the request until the response head arrives (504 beyond).
    #[serde(default = "default_request")]
    pub request: Dur,
    /// Longest silence while a body streams, either way; the exchange is cut beyond.
    #[serde(default = "default_idle")]
    pub idle: Dur,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            request: default_request(),
            idle: default_idle(),
        }
    }
}

fn default_connect() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_request() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}
fn default_idle() -> Dur {
    Dur(std::time::Duration::from_secs(60))
}

/// Connection pool settings, per worker and endpoint.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Idle connections older than this are closed.
    #[serde(default = "default_pool_idle")]
    pub idle_timeout: Dur,
    /// Idle connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle: usize,
    /// Connections open at once per endpoint (0: no cap); requests beyond wait for one.
    #[serde(default)]
    pub max_connections: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            idle_timeout: default_pool_idle(),
            max_idle: default_max_idle(),
            max_connections: 0,
        }
    }
}

fn default_pool_idle() -> Dur {
    Dur(std::time::Duration::from_secs(90))
}
fn default_max_idle() -> usize {
    64
}

/// One route: a matcher, optional rewrites, and exactly one action.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, shown in logs.
    pub name: Spanned<String>,
    /// Overrides specificity: higher wins.
    #[serde(default)]
    pub priority: Option<i32>,
    /// Only on these listeners (default: all).
    #[serde(default)]
    pub listeners: Vec<Spanned<String>>,
    /// What the request must look like.
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// Changes to path and Host before forwarding.
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    /// Proxy to this upstream.
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// Answer with a redirect.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    /// Answer directly.
    #[serde(default)]
    pub respond: Option<RespondConfig>,
    /// Retries of failed upstream attempts; none when absent.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Largest request body accepted on this route (413 beyond); overrides `limits.max_body_size`.
    #[serde(default)]
    pub max_body_size: Option<Size>,
    /// Client IP allow and deny lists (403).
    #[serde(default)]
    pub ip_rules: Option<IpRulesConfig>,
    /// Who may call: authentication providers (401 without a valid credential).
    #[serde(default)]
    pub auth: Option<Spanned<RouteAuthConfig>>,
    /// What an identified caller needs (403 without it).
    #[serde(default)]
    pub authorize: Option<AuthorizeConfig>,
    /// Rate and concurrency limits: names of `rate_limits` entries or limits of this route.
    #[serde(default)]
    pub rate_limit: Vec<Spanned<RateLimitRef>>,
}

/// When and how a failed upstream attempt is tried again.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Failures that are retried.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Upstream statuses that are retried, besides those in `on`.
    #[serde(default)]
    pub statuses: Vec<u16>,
    /// Time one attempt may take until the response head (0: only the upstream's `timeouts.request`).
    #[serde(default)]
    pub per_try_timeout: Dur,
    /// Delay before the first retry; doubled for each next one, with jitter.
    #[serde(default = "default_backoff_base")]
    pub backoff: Dur,
    /// Longest delay between two attempts.
    #[serde(default = "default_backoff_max")]
    pub max_backoff: Dur,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Request body kept for replay; a longer body is not retried once sent.
    #[serde(default = "default_replay_buffer")]
    pub replay_buffer: Size,
}

/// A failure a retry policy may cover.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// Connecting failed or timed out: the request never left.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    RefusedStream,
    /// The connection closed or reset before a response head.
    Reset,
    /// The attempt timed out (per try, or `timeouts.request`).
    Timeout,
    /// 502 from the upstream.
    #[serde(rename = "502")]
    Status502,
    /// 503 from the upstream.
    #[serde(rename = "503")]
    Status503,
    /// 504 from the upstream.
    #[serde(rename = "504")]
    Status504,
}

fn default_attempts() -> u32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Reset,
        RetryOn::Status502,
        RetryOn::Status503,
        RetryOn::Status504,
    ]
}
fn default_backoff_base() -> Dur {
    Dur(std::time::Duration::from_millis(25))
}
fn default_backoff_max() -> Dur {
    Dur(std::time::Duration::from_millis(250))
}
fn default_replay_buffer() -> Size {
    Size(64 * 1024)
}

/// Request matcher. Every given field must match.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Host names: exact (`api.example.com`) or wildcard (`*.example.com`).
    #[serde(default)]
    pub host: Option<OneOrMany>,
    /// Exact path, or a template with `{param}` and a final `{*rest}`;
    /// a trailing `/*` means prefix.
    #[serde(default)]
    pub path: Option<String>,
    /// Path prefix, on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Regular expression over the whole path.
    #[serde(default)]
    pub regex: Option<String>,
    /// Allowed methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query: Vec<ValueMatch>,
}

/// A single string or a list of strings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a slice.
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// A condition on a header or query parameter: present, exact value, or regex.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// Header or parameter name (headers: case-insensitive).
    pub name: String,
    /// Exact value required.
    #[serde(default)]
    pub value: Option<String>,
    /// Regular expression the value must match.
    #[serde(default)]
    pub regex: Option<String>,
}

/// Path and Host changes applied before forwarding.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Remove this prefix from the path.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Replace the path with this template (`{param}` from the matched path).
    #[serde(default)]
    pub path: Option<String>,
    /// Send this Host upstream.
    #[serde(default)]
    pub host: Option<String>,
}

/// A redirect answer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Location template: `{param}`, `{path}`, `{query}`, `{host}`.
    pub location: String,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// A direct answer made by the gateway.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// Status code.
    #[serde(default = "default_respond_status")]
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default)]
    pub body: String,
}

fn default_respond_status() -> u16 {
    200
}
