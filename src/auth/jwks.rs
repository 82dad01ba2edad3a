//! JWKS key sets: fetched in the background, cached, re-fetched when a
//! token names an unknown `kid`, served stale when the issuer is down.
//!
//! The keys of a set live in an `ArcSwapOption`: requests read them without a
//! lock. Every fetch (background refresh, unknown `kid`, first request before
//! the first refresh) goes through one async mutex, so concurrent requests
//! that need new keys wait for the same fetch (single flight); fetches caused
//! by requests are at most one per `min_refetch_interval`. A failed fetch
//! keeps the last good keys.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

use super::ProviderKind;
use super::fetch::{Client, Target};
use crate::config::JwtConfig;
use crate::gateway::Gateway;
use crate::observe::metrics::Metrics;

/// Largest JWKS or discovery document read.
pub const MAX_DOCUMENT: usize = 1024 * 1024;
/// Most keys kept from one JWKS; the rest are ignored.
pub const MAX_KEYS: usize = 64;
/// Shortest background refresh period a `Cache-Control: max-age` can ask for.
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
/// Shortest retry period after a failed background refresh.
const MIN_RETRY: Duration = Duration::from_secs(1);
/// How often the supervisor looks for key sets added by a reload.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Smallest RSA modulus accepted, in bytes (RFC 7518 §3.3: 2048 bits).
const MIN_RSA_BYTES: usize = 256;

/// The bit of an algorithm in a set of algorithms.
pub fn alg_bit(alg: Algorithm) -> u16 {
    1 << match alg {
        Algorithm::HS256 => 0,
        Algorithm::HS384 => 1,
        Algorithm::HS512 => 2,
        Algorithm::RS256 => 3,
        Algorithm::RS384 => 4,
        Algorithm::RS512 => 5,
        Algorithm::PS256 => 6,
        Algorithm::PS384 => 7,
        Algorithm::PS512 => 8,
        Algorithm::ES256 => 9,
        Algorithm::ES384 => 10,
        Algorithm::EdDSA => 11,
        // Unknown to this build: in no set.
        _ => 15,
    }
}

/// The algorithms a key of `family` may verify (an EC key: see its curve).
pub fn family_bits(family: AlgorithmFamily) -> u16 {
    family
        .algorithms()
        .iter()
        .fold(0, |acc, a| acc | alg_bit(*a))
}

/// A verification key: static (config) or from a JWKS.
pub struct Key {
    /// The key id tokens name it by (`None`: a config key without `kid`,
    /// tried for any token).
    pub kid: Option<Box<str>>,
    /// The algorithms it may verify: its family's, narrowed by its curve and
    /// by its own `alg`.
    pub algs: u16,
    /// The key.
    pub key: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algs & alg_bit(alg) != 0
    }
}

/// One loaded key set.
pub struct Keys {
    /// The usable keys, in document order.
    pub keys: Box<[Key]>,
    /// The `Cache-Control: max-age` of the answer.
    max_age: Option<Duration>,
}

impl Keys {
    /// Whether some key has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Where the JWKS comes from.
enum Source {
    /// A configured `jwks_url`.
    Url(Target),
    /// OpenID Connect discovery from the issuer: its configuration document,
    /// the issuer it must name, and the `jwks_uri` it named last.
    Discovery {
        config: Target,
        issuer: Box<str>,
        jwks: ArcSwapOption<Target>,
    },
}

/// The remote key set of one JWT provider.
pub struct KeySet {
    provider: Arc<str>,
    source: Source,
    client: Client,
    keys: ArcSwapOption<Keys>,
    refresh_interval: Duration,
    min_refetch: Duration,
    /// Held by the fetch in progress.
    flight: tokio::sync::Mutex<()>,
    /// Whether a fetch is in progress (requests then wait for it).
    in_flight: AtomicBool,
    /// When the last fetch started, in ms since `epoch` (+1; 0: never).
    last_attempt: AtomicU64,
    epoch: Instant,
    /// Bumped by every successful fetch.
    generation: AtomicU64,
    /// Whether the last fetch failed (warned once per failure streak).
    failing: AtomicBool,
    /// Whether the supervisor runs a refresh task for this set.
    supervised: AtomicBool,
    success: Counter,
    failure: Counter,
}

impl KeySet {
    /// The key set of `cfg` (`None` without `jwks_url` or `discovery`).
    pub fn compile(
        provider: &str,
        cfg: &JwtConfig,
        file: &str,
        metrics: &Metrics,
    ) -> Result<Option<Self>, String> {
        let source = match (&cfg.jwks_url, cfg.discovery) {
            (None, false) => return Ok(None),
            (Some(_), true) => {
                return Err("`jwks_url` and `discovery` exclude each other".into());
            }
            (Some(url), false) => {
                Source::Url(Target::parse(url).map_err(|e| format!("jwks_url: {e}"))?)
            }
            (None, true) => {
                let issuer = cfg.issuer.as_deref().ok_or("`discovery` needs `issuer`")?;
                // OpenID Connect Discovery 1.0 §4: a terminating `/` is removed first.
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.strip_suffix('/').unwrap_or(issuer)
                );
                Source::Discovery {
                    config: Target::parse(&url).map_err(|e| format!("issuer: {e}"))?,
                    issuer: issuer.into(),
                    jwks: ArcSwapOption::empty(),
                }
            }
        };
        // Discovery may name an https `jwks_uri` whatever the issuer's scheme.
        let tls = match &source {
            Source::Url(t) => t.is_https(),
            Source::Discovery { .. } => true,
        };
        let client = Client::new(
            cfg.ca.as_deref(),
            file,
            tls,
            cfg.fetch_timeout.0,
            MAX_DOCUMENT,
        )?;
        Ok(Some(Self {
            provider: provider.into(),
            source,
            client,
            keys: ArcSwapOption::empty(),
            refresh_interval: cfg.refresh_interval.0.max(MIN_RETRY),
            min_refetch: cfg.min_refetch_interval.0,
            flight: tokio::sync::Mutex::new(()),
            in_flight: AtomicBool::new(false),
            last_attempt: AtomicU64::new(0),
            epoch: Instant::now(),
            generation: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            supervised: AtomicBool::new(false),
            success: metrics.key_fetch(provider, "success"),
            failure: metrics.key_fetch(provider, "failure"),
        }))
    }

    /// The keys loaded last (`None`: never loaded).
    pub fn keys(&self) -> arc_swap::Guard<Option<Arc<Keys>>> {
        self.keys.load()
    }

    /// Fetches the set now for a request that found no usable key (never
    /// loaded, or an unknown `kid`), unless a fetch ran within
    /// `min_refetch_interval`; waits for a fetch already in progress instead
    /// of starting another.
    pub async fn refetch(&self) {
        let seen = self.generation.load(Ordering::Acquire);
        if !self.in_flight.load(Ordering::Acquire) && self.attempted_within(self.min_refetch) {
            return;
        }
        let _flight = self.flight.lock().await;
        if self.generation.load(Ordering::Acquire) != seen
            || self.attempted_within(self.min_refetch)
        {
            // The fetch waited for ran (or failed) just now.
            return;
        }
        let _ = self.fetch(false).await;
    }

    /// Fetches the set now (the background refresh); the time until the
    /// next refresh on success.
    async fn refresh(&self) -> Result<Duration, ()> {
        let _flight = self.flight.lock().await;
        self.fetch(true).await.map(|max_age| self.period(max_age))
    }

    /// The refresh period: `refresh_interval`, or a shorter `max-age` (not
    /// below [`MIN_REFRESH`]).
    fn period(&self, max_age: Option<Duration>) -> Duration {
        match max_age {
            Some(age) => age.max(MIN_REFRESH).min(self.refresh_interval),
            None => self.refresh_interval,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn attempted_within(&self, window: Duration) -> bool {
        let last = self.last_attempt.load(Ordering::Acquire);
        last != 0 && u128::from(self.now_ms().saturating_sub(last)) < window.as_millis()
    }

    /// One fetch; the caller holds `flight`. Stores the keys and counts and
    /// logs the result; returns the answer's `max-age`. With discovery, the
    /// `jwks_uri` found last is reused unless `rediscover`.
    async fn fetch(&self, rediscover: bool) -> Result<Option<Duration>, ()> {
        self.last_attempt.store(self.now_ms(), Ordering::Release);
        self.in_flight.store(true, Ordering::Release);
        // Reset even when the request that runs the fetch is dropped.
        struct Landed<'a>(&'a AtomicBool);
        impl Drop for Landed<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _landed = Landed(&self.in_flight);
        match self.load(rediscover).await {
            Ok(keys) => {
                let (count, max_age) = (keys.keys.len(), keys.max_age);
                self.keys.store(Some(Arc::new(keys)));
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.success.inc();
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(provider = %self.provider, keys = count, "JWKS fetched again");
                } else {
                    tracing::debug!(provider = %self.provider, keys = count, "JWKS fetched");
                }
                Ok(max_age)
            }
            Err(e) => {
                self.failure.inc();
                let cached = self.keys.load().as_ref().map_or(0, |k| k.keys.len());
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        provider = %self.provider,
                        error = %e,
                        cached_keys = cached,
                        "JWKS fetch failed; the last keys fetched stay in use"
                    );
                } else {
                    tracing::debug!(provider = %self.provider, error = %e, "JWKS fetch failed again");
                }
                Err(())
            }
        }
    }

    /// Fetches and parses the set (discovering its URL first when configured
    /// so, and `rediscover` or not discovered yet).
    async fn load(&self, rediscover: bool) -> Result<Keys, String> {
        let answer = match &self.source {
            Source::Url(url) => self.client.get(url, "application/json").await?,
            Source::Discovery {
                config,
                issuer,
                jwks,
            } => {
                let known = if rediscover { None } else { jwks.load_full() };
                let url = match known {
                    Some(url) => url,
                    None => {
                        let doc = self.client.get(config, "application/json").await?;
                        let url = Arc::new(jwks_uri(&doc.body, issuer, config.is_https())?);
                        jwks.store(Some(url.clone()));
                        url
                    }
                };
                self.client.get(&url, "application/json").await?
            }
        };
        let max_age = answer
            .headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let keys = parse_jwks(&answer.body)?;
        Ok(Keys { keys, max_age })
    }
}

/// The `jwks_uri` of a discovery document, after checking that it names
/// `issuer` (OpenID Connect Discovery 1.0 §4.3) and that an https issuer
/// does not send the keys over http.
fn jwks_uri(body: &[u8], issuer: &str, https: bool) -> Result<Target, String> {
    #[derive(Deserialize)]
    struct Doc {
        issuer: String,
        jwks_uri: String,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("discovery document: {e}"))?;
    if doc.issuer != issuer {
        return Err(format!(
            "discovery document names issuer `{}`, not `{issuer}`",
            doc.issuer
        ));
    }
    let target = Target::parse(&doc.jwks_uri).map_err(|e| format!("jwks_uri: {e}"))?;
    if https && !target.is_https() {
        return Err(format!("jwks_uri `{}` is not https", doc.jwks_uri));
    }
    Ok(target)
}

/// The `max-age` of a `Cache-Control` value (`no-cache`/`no-store`: 0).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|d| {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        let (name, v) = d.split_once('=')?;
        name.trim().eq_ignore_ascii_case("max-age").then(|| {
            v.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        })?
    })
}

/// The usable signature keys of a JWKS document (RFC 7517): keys for
/// another `use` or without `verify` in `key_ops`, of an unknown `kty`,
/// `crv` or `alg`, symmetric (`oct`: a published secret is no secret), or
/// RSA under 2048 bits are skipped; at most [`MAX_KEYS`]. An error when none
/// is left, so that a broken document never replaces working keys.
pub fn parse_jwks(body: &[u8]) -> Result<Box<[Key]>, String> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("JWKS: {e}"))?;
    let total = doc.keys.len();
    let keys: Box<[Key]> = doc
        .keys
        .into_iter()
        .filter_map(|v| jwk(serde_json::from_value(v).ok()?))
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        return Err(format!(
            "JWKS: none of its {total} keys is a usable signature key"
        ));
    }
    Ok(keys)
}

/// The members of a JWK this module reads.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// base64url without padding (RFC 7515 §2), tolerating padding.
fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// A verification key from a JWK, when usable.
fn jwk(raw: RawJwk) -> Option<Key> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if raw
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return None;
    }
    let (key, algs) = match raw.kty.as_str() {
        "RSA" => {
            let n = b64(raw.n.as_deref()?)?;
            let e = b64(raw.e.as_deref()?)?;
            let zeros = n.iter().take_while(|b| **b == 0).count();
            if n.len() - zeros < MIN_RSA_BYTES || e.is_empty() {
                return None;
            }
            (
                DecodingKey::from_rsa_raw_components(&n, &e),
                family_bits(AlgorithmFamily::Rsa),
            )
        }
        "EC" => {
            let (alg, len) = match raw.crv.as_deref()? {
                "P-256" => (Algorithm::ES256, 32),
                "P-384" => (Algorithm::ES384, 48),
                _ => return None,
            };
            let (x, y) = (b64(raw.x.as_deref()?)?, b64(raw.y.as_deref()?)?);
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (DecodingKey::from_ec_der(&point), alg_bit(alg))
        }
        "OKP" => {
            if raw.crv.as_deref()? != "Ed25519" {
                return None;
            }
            let x = b64(raw.x.as_deref()?)?;
            if x.len() != 32 {
                return None;
            }
            (DecodingKey::from_ed_der(&x), alg_bit(Algorithm::EdDSA))
        }
        _ => return None,
    };
    let algs = match raw.alg.as_deref() {
        None => algs,
        Some(name) => algs & alg_bit(Algorithm::from_str(name).ok()?),
    };
    (algs != 0).then(|| Key {
        kid: raw.kid.map(Into::into),
        algs,
        key,
    })
}

/// Keeps every JWT provider's key set fresh: one refresh task per key set of
/// the current snapshot, started within a second of the snapshot appearing
/// (the first fetch at once), ending when a reload drops the set. Runs for
/// the life of the process.
pub async fn supervise(snapshot: impl Fn() -> Arc<Gateway> + Send + 'static) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while tasks.try_join_next().is_some() {}
        let gw = snapshot();
        for provider in gw.auth.providers.values() {
            if let ProviderKind::Jwt(jwt) = &provider.kind
                && let Some(set) = jwt.key_set()
                && !set.supervised.swap(true, Ordering::AcqRel)
            {
                tasks.spawn(refresh(Arc::downgrade(set)));
            }
        }
    }
}

/// Refreshes one key set until it is dropped; holds it only while fetching.
/// After a failure it retries sooner: `min_refetch_interval` (at least 1 s),
/// doubling up to `refresh_interval`.
async fn refresh(set: Weak<KeySet>) {
    let mut retry = None::<Duration>;
    let mut first = true;
    loop {
        let delay = {
            let Some(set) = set.upgrade() else {
                return;
            };
            // Keys a request loaded before this task started are fresh.
            let loaded = first
                .then(|| set.keys().as_ref().map(|k| set.period(k.max_age)))
                .flatten();
            first = false;
            match loaded {
                Some(period) => period,
                None => match set.refresh().await {
                    Ok(period) => {
                        retry = None;
                        period
                    }
                    Err(()) => {
                        let next = retry.map_or(set.min_refetch.max(MIN_RETRY), |r| r * 2);
                        let next = next.min(set.refresh_interval);
                        retry = Some(next);
                        next
                    }
                },
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rsa_jwk(kid: &str, extra: &str) -> String {
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{n}","e":"AQAB"{extra}}}"#)
    }

    #[test]
    fn jwks_keys_are_filtered() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let short_n = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let doc = format!(
            r#"{{"keys":[
                {},
                {},
                {},
                {},
                {{"kty":"RSA","kid":"short","n":"{short_n}","e":"AQAB"}},
                {{"kty":"EC","kid":"ec","crv":"P-256","x":"{x}","y":"{x}"}},
                {{"kty":"EC","kid":"p521","crv":"P-521","x":"{x}","y":"{x}"}},
                {{"kty":"EC","kid":"ec-wrong-alg","crv":"P-256","alg":"ES384","x":"{x}","y":"{x}"}},
                {{"kty":"OKP","kid":"ed","crv":"Ed25519","x":"{x}"}},
                {{"kty":"oct","kid":"hs","k":"c2VjcmV0"}},
                {{"kty":"RSA","kid":"broken","n":5}},
                {{"kty":"XYZ"}}
            ]}}"#,
            rsa_jwk("sig", r#","use":"sig""#),
            rsa_jwk("enc", r#","use":"enc""#),
            rsa_jwk("ps", r#","alg":"PS256""#),
            rsa_jwk("oaep", r#","alg":"RSA-OAEP""#),
        );
        let keys = parse_jwks(doc.as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["sig", "ps", "ec", "ed"]);
        assert!(keys[0].allows(Algorithm::RS256) && keys[0].allows(Algorithm::PS512));
        assert!(!keys[0].allows(Algorithm::HS256) && !keys[0].allows(Algorithm::ES256));
        assert!(keys[1].allows(Algorithm::PS256) && !keys[1].allows(Algorithm::RS256));
        assert!(keys[2].allows(Algorithm::ES256) && !keys[2].allows(Algorithm::ES384));
        assert!(keys[3].allows(Algorithm::EdDSA) && !keys[3].allows(Algorithm::ES256));
    }

    #[test]
    fn broken_documents_are_errors() {
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(b"{\"keys\":[]}").is_err());
        assert!(parse_jwks(b"{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}").is_err());
        let many = format!("{{\"keys\":[{}]}}", vec![rsa_jwk("k", ""); 100].join(","));
        assert_eq!(parse_jwks(many.as_bytes()).unwrap().len(), MAX_KEYS);
    }

    #[test]
    fn cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn discovery_document_must_name_the_issuer() {
        let doc = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/keys"}"#;
        assert!(jwks_uri(doc, "https://idp.example", true).is_ok());
        assert!(jwks_uri(doc, "https://other.example", true).is_err());
        let http = br#"{"issuer":"https://idp.example","jwks_uri":"http://idp.example/keys"}"#;
        assert!(jwks_uri(http, "https://idp.example", true).is_err());
        assert!(jwks_uri(b"{}", "https://idp.example", true).is_err());
    }
}
