//! The config schema of API management, part two: rate and concurrency
//! limits, and the Redis store that shares them between gateway instances.

use super::schema::CertificateConfig;
use super::units::{Dur, Rate};
use serde::{Deserialize, Serialize};

/// A limit: a rate (`rate`, optional `burst`) or a concurrency cap
/// (`concurrency`), counted per key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// What requests are counted by: one part or a list of parts, each
    /// `consumer`, `ip`, `header:<name>`, `claim:<path>` or `route`.
    #[serde(default = "default_key")]
    pub key: LimitKeyConfig,
    /// Requests per period: `10/s`, `1000/h`, `50/10s`.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Requests allowed at once on top of the steady rate (default: the
    /// rate's count, so `100/m` allows 100 at once, then one per 600 ms).
    #[serde(default)]
    pub burst: Option<u64>,
    /// Requests in flight at once per key (instead of `rate`).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Where the counts live: `local` (this process) or `redis` (shared).
    #[serde(default)]
    pub store: LimitStore,
    /// With `store: redis`: `exact` (one atomic script per request) or
    /// `reconcile` (decide locally, sync with Redis every `sync_interval`).
    #[serde(default)]
    pub mode: LimitMode,
    /// With `mode: reconcile`: how often local counts are pushed to Redis.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    /// When Redis cannot be reached: `open` (allow) or `closed` (refuse with 503).
    #[serde(default)]
    pub on_store_error: FailMode,
    /// Most keys tracked in this process; idle keys are evicted first.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Count every request before authentication (the access phase), those
    /// refused with 401 included, against password and key guessing; the key
    /// may then only use `ip`, `header:` and `route`.
    #[serde(default)]
    pub before_auth: bool,
    /// Response headers: `ietf` (RateLimit-Policy and RateLimit), `legacy`
    /// (X-RateLimit-*), `both` or `none`.
    #[serde(default)]
    pub headers: LimitHeaders,
}

fn default_key() -> LimitKeyConfig {
    LimitKeyConfig::One("ip".into())
}
/// `sync_interval` when not given.
pub fn default_sync_interval() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}
fn default_max_keys() -> usize {
    100_000
}

/// The key of a limit: one part, or several combined.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum LimitKeyConfig {
    /// One part.
    One(String),
    /// Several parts, combined.
    Many(Vec<String>),
}

impl LimitKeyConfig {
    /// The parts as a slice.
    pub fn parts(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// Where a limit's counts live.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitStore {
    /// In this process, shared by its workers.
    #[default]
    Local,
    /// In Redis, shared by every instance using it.
    Redis,
}

/// How a Redis-backed limit decides.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// One atomic Redis script per decision.
    #[default]
    Exact,
    /// Decide locally; reconcile with Redis asynchronously (see the documented error bound).
    Reconcile,
}

/// What a limit does when its store fails.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Allow the request (and log and count the failure).
    #[default]
    Open,
    /// Refuse it with 503.
    Closed,
}

/// Which rate-limit headers a limit adds to answers.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LimitHeaders {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// Both sets.
    Both,
    /// None (429 still carries `Retry-After`).
    None,
}

/// A route's reference to a limit: a name in `rate_limits`, or a limit of its own.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RateLimitRef {
    /// A shared limit: one set of counts for every route that names it.
    Named(String),
    /// A limit of this route only.
    Inline(Box<RateLimitConfig>),
}

impl<'de> Deserialize<'de> for RateLimitRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RateLimitRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the name of a `rate_limits` entry, or a limit")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RateLimitRef, E> {
                Ok(RateLimitRef::Named(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RateLimitRef, A::Error> {
                RateLimitConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|c| RateLimitRef::Inline(Box::new(c)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The Redis store of shared limits.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS
    /// (the server's certificate is verified against `ca`, or the system
    /// roots); with `cluster: true`, one or more seed nodes of the cluster.
    pub urls: Vec<String>,
    /// The nodes form a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Longest wait for one Redis answer; past it the limit's `on_store_error` applies.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
    /// Prefix of every key the gateway writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// With `rediss://` URLs: a PEM file of the CA certificates that verify
    /// the Redis server, instead of the system roots (relative to the config
    /// file's folder).
    #[serde(default)]
    pub ca: Option<String>,
    /// With `rediss://` URLs: the certificate and key the gateway presents
    /// to a Redis that requires client certificates (mTLS).
    #[serde(default)]
    pub client_cert: Option<CertificateConfig>,
}

fn default_redis_timeout() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}
fn default_key_prefix() -> String {
    "portico".into()
}
