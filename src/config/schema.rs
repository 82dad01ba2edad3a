//! The documented config schema: what a user writes in `portico.yaml`.
//!
//! Every struct rejects unknown keys. Values that later checks must point at
//! carry their source location through [`Spanned`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_uri_length: default_max_uri(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            header_read_timeout: default_header_timeout(),
            send_timeout: default_send_timeout(),
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
fn default_header_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}

/// One listening socket serving HTTP/1.1 and h2c.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs and to bind routes.
    pub name: Spanned<String>,
    /// `ip:port` to bind.
    pub address: Spanned<String>,
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
