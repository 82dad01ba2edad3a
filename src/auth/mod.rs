//! Authentication and authorization: consumers, the providers that identify
//! a caller (API key, Basic, JWT, OAuth2 introspection), the route filter that
//! combines them, and the rules that authorize the identified caller.
//!
//! Providers and consumers are compiled once per snapshot into an
//! [`AuthState`]; a provider whose definition is unchanged is carried over by
//! a reload with its state (JWKS cache, introspection cache, verified Basic
//! credentials).

pub mod api_key;
pub mod authorize;
pub mod basic;
pub mod consumers;
pub mod crypto;
pub mod fetch;
pub mod introspect;
pub mod ip_rules;
pub mod jwks;
pub mod jwt;
pub mod source;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use prometheus_client::metrics::counter::Counter;

use crate::config::{AuthMode, AuthProviderConfig, Config, ConfigError, RouteAuthConfig};
use crate::error::{ErrorKind, ProxyError};
use crate::observe::metrics::Metrics;

pub use consumers::{Consumer, Consumers};

/// Claims of a JWT or of an introspection answer.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// Who is calling: set by a route's `auth`, read by every later phase, the
/// access log and the upstream headers.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The consumer the credential belongs to, when it names a known one.
    pub consumer: Option<Arc<Consumer>>,
    /// The value of the provider's `consumer_claim` (or `sub`), when the
    /// credential is a token.
    pub subject: Option<Arc<str>>,
    /// The token's claims (JWT or introspection), when the credential is a token.
    pub claims: Option<Arc<Claims>>,
    /// The provider that accepted the credential.
    pub provider: Arc<str>,
}

impl Identity {
    /// The name the access log shows: the consumer's, else the subject.
    pub fn log_name(&self) -> Option<Arc<str>> {
        self.consumer
            .as_ref()
            .map(|c| c.name.clone())
            .or_else(|| self.subject.clone())
    }
}

/// What one provider found in a request.
#[derive(Debug)]
pub enum Outcome {
    /// No credential of this provider's kind.
    Absent,
    /// A valid credential.
    Accepted(Identity),
    /// A credential that is not valid (401); the reason is safe to show.
    Rejected(Cow<'static, str>),
    /// The credential could not be checked now: no key set, the
    /// introspection endpoint unreachable (503).
    Unavailable(Cow<'static, str>),
}

/// A compiled authentication provider.
pub struct Provider {
    /// Its name in `auth_providers`.
    pub name: Arc<str>,
    /// Its definition (a reload keeps the provider, and its state, while this is unchanged).
    pub config: AuthProviderConfig,
    /// The method.
    pub kind: ProviderKind,
}

/// The method of a provider.
#[allow(
    clippy::large_enum_variant,
    reason = "one per provider and snapshot, behind an Arc: never moved on the request path"
)]
pub enum ProviderKind {
    /// API keys.
    ApiKey(api_key::ApiKey),
    /// HTTP Basic.
    Basic(basic::Basic),
    /// JWT.
    Jwt(jwt::Jwt),
    /// OAuth2 token introspection.
    Introspection(introspect::Introspection),
}

impl Provider {
    /// Looks for this provider's credential in `req` and checks it.
    pub async fn authenticate<B>(&self, req: &http::Request<B>, consumers: &Consumers) -> Outcome {
        match &self.kind {
            ProviderKind::ApiKey(p) => p.authenticate(req, consumers),
            ProviderKind::Basic(p) => p.authenticate(req, consumers).await,
            ProviderKind::Jwt(p) => p.authenticate(req, consumers).await,
            ProviderKind::Introspection(p) => p.authenticate(req, consumers).await,
        }
    }

    /// Removes this provider's credential from `req` (before forwarding).
    pub fn strip<B>(&self, req: &mut http::Request<B>) {
        match &self.kind {
            ProviderKind::ApiKey(p) => p.strip(req),
            ProviderKind::Basic(p) => p.strip(req),
            ProviderKind::Jwt(p) => p.strip(req),
            ProviderKind::Introspection(p) => p.strip(req),
        }
    }

    /// The `WWW-Authenticate` challenge of this provider; `error` is the
    /// reason a credential was refused (RFC 6750 §3 `invalid_token`), if one was.
    pub fn challenge(&self, error: Option<&str>) -> HeaderValue {
        match &self.kind {
            ProviderKind::ApiKey(p) => p.challenge(error),
            ProviderKind::Basic(p) => p.challenge(error),
            ProviderKind::Jwt(p) => p.challenge(error),
            ProviderKind::Introspection(p) => p.challenge(error),
        }
    }

    /// Compiles one `auth_providers` entry. `previous` is the running
    /// snapshot's provider of that name when its definition is unchanged:
    /// its state (caches, key sets) is carried over, while files it names
    /// are read again.
    fn compile(
        name: &str,
        cfg: &AuthProviderConfig,
        file: &str,
        previous: Option<&Provider>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let prev = previous.map(|p| &p.kind);
        let kind = match cfg {
            AuthProviderConfig::ApiKey(c) => {
                ProviderKind::ApiKey(api_key::ApiKey::compile(name, c)?)
            }
            AuthProviderConfig::Basic(c) => {
                let prev = match prev {
                    Some(ProviderKind::Basic(p)) => Some(p),
                    _ => None,
                };
                ProviderKind::Basic(basic::Basic::compile(name, c, prev)?)
            }
            AuthProviderConfig::Jwt(c) => {
                let prev = match prev {
                    Some(ProviderKind::Jwt(p)) => Some(p),
                    _ => None,
                };
                ProviderKind::Jwt(jwt::Jwt::compile(name, c, file, prev, metrics)?)
            }
            AuthProviderConfig::Introspection(c) => {
                let prev = match prev {
                    Some(ProviderKind::Introspection(p)) => Some(p),
                    _ => None,
                };
                ProviderKind::Introspection(introspect::Introspection::compile(
                    name, c, file, prev, metrics,
                )?)
            }
        };
        Ok(Self {
            name: name.into(),
            config: cfg.clone(),
            kind,
        })
    }
}

/// The consumers and providers of one snapshot.
#[derive(Default)]
pub struct AuthState {
    /// Every consumer, indexed by credential.
    pub consumers: Arc<Consumers>,
    /// Providers by name.
    pub providers: BTreeMap<String, Arc<Provider>>,
}

impl AuthState {
    /// Compiles `consumers` and `auth_providers`; providers whose definition
    /// is unchanged since `previous` keep their state.
    pub fn compile(
        cfg: &Config,
        file: &str,
        previous: Option<&AuthState>,
        metrics: &Metrics,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let consumers = Consumers::compile(cfg, file).unwrap_or_else(|e| {
            errors.extend(e);
            Consumers::default()
        });
        let mut providers = BTreeMap::new();
        for (name, p) in &cfg.auth_providers {
            let prev = previous
                .and_then(|s| s.providers.get(name))
                .filter(|old| old.config == p.value)
                .map(|old| &**old);
            match Provider::compile(name, &p.value, file, prev, metrics) {
                Ok(compiled) => {
                    providers.insert(name.clone(), Arc::new(compiled));
                }
                Err(e) => errors.push(ConfigError::at(
                    file,
                    &p.referenced,
                    format!("auth provider `{name}`: {e}"),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            consumers: Arc::new(consumers),
            providers,
        })
    }
}

/// A dotted claim path (`org.tier`), split once at compile time; the whole
/// text is tried first as one claim name, since names such as
/// `https://example.com/roles` hold dots themselves.
#[derive(Debug)]
pub struct ClaimPath {
    whole: Box<str>,
    parts: Box<[Box<str>]>,
}

impl ClaimPath {
    /// Parses a path; every dot-separated part must be non-empty.
    pub fn parse(path: &str) -> Result<Self, String> {
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(format!("`{path}` is not a claim path (`name` or `a.b.c`)"));
        }
        Ok(Self {
            whole: path.into(),
            parts: path.split('.').map(Into::into).collect(),
        })
    }

    /// The claim's value, if the claims hold it.
    pub fn lookup<'c>(&self, claims: &'c Claims) -> Option<&'c serde_json::Value> {
        if let Some(v) = claims.get(&*self.whole) {
            return Some(v);
        }
        let (first, rest) = self.parts.split_first()?;
        rest.iter()
            .try_fold(claims.get(&**first)?, |v, part| v.as_object()?.get(&**part))
    }
}

/// What a `claims_to_headers` entry reads.
#[derive(Debug)]
enum HeaderSource {
    /// A claim of the token.
    Claim(ClaimPath),
    /// A metadata key of the consumer (`consumer.<key>`).
    Metadata(Box<str>),
}

/// Headers that identity headers must never replace.
const RESERVED_HEADERS: [http::HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::TE,
    header::UPGRADE,
    header::AUTHORIZATION,
    header::COOKIE,
];

fn identity_header(name: &str, what: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{what} `{name}` is not a valid header name"))?;
    if RESERVED_HEADERS.contains(&h) {
        return Err(format!("{what} `{name}` cannot be set from the identity"));
    }
    Ok(h)
}

/// A claim's value as a header value: strings as they are, numbers and
/// booleans as text, a list of strings joined with `, `, anything else as
/// JSON; `None` when that is not a valid header value.
fn claim_value(v: &serde_json::Value) -> Option<HeaderValue> {
    use serde_json::Value;
    let text = match v {
        Value::Null => return None,
        Value::String(s) => return HeaderValue::from_str(s).ok(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}

/// The counters of one route's authentication outcomes.
struct Counters {
    accepted: Counter,
    anonymous: Counter,
    unauthorized: Counter,
    unavailable: Counter,
}

/// A route's authentication filter.
pub struct AuthFilter {
    providers: Box<[Arc<Provider>]>,
    consumers: Arc<Consumers>,
    mode: AuthMode,
    anonymous: bool,
    keep_credentials: bool,
    consumer_header: Option<HeaderName>,
    claim_headers: Box<[(HeaderName, HeaderSource)]>,
    /// Each provider's challenge without an error, in `providers` order.
    challenges: Box<[HeaderValue]>,
    /// Query parameters that carry credentials: their values are redacted
    /// in the access log.
    query_credentials: Box<[Box<str>]>,
    counters: Counters,
}

/// Why no identity came out of the providers.
enum Failure {
    /// 401: `rejected[i]` is provider `i`'s reason, when it refused a credential.
    Unauthorized(Cow<'static, str>, Vec<Option<Cow<'static, str>>>),
    /// 503.
    Unavailable(Cow<'static, str>),
}

impl AuthFilter {
    /// Compiles a route's `auth`.
    pub fn compile(
        route: &str,
        cfg: &RouteAuthConfig,
        state: &AuthState,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        if cfg.providers.is_empty() {
            return Err("`auth.providers` is empty".into());
        }
        let mut providers: Vec<Arc<Provider>> = Vec::with_capacity(cfg.providers.len());
        for name in &cfg.providers {
            let p = state
                .providers
                .get(&name.value)
                .ok_or_else(|| format!("auth provider `{}` is not defined", name.value))?;
            if providers.iter().any(|q| q.name == p.name) {
                return Err(format!("auth provider `{}` is listed twice", name.value));
            }
            providers.push(p.clone());
        }
        let consumer_header = match cfg.consumer_header.as_str() {
            "" => None,
            h => Some(identity_header(h, "`consumer_header`")?),
        };
        let mut claim_headers = Vec::with_capacity(cfg.claims_to_headers.len());
        for (h, path) in &cfg.claims_to_headers {
            let name = identity_header(h, "`claims_to_headers` header")?;
            if consumer_header.as_ref() == Some(&name) {
                return Err(format!(
                    "`claims_to_headers` header `{h}` is the `consumer_header`"
                ));
            }
            let source = match path.strip_prefix("consumer.") {
                Some("") => {
                    return Err(format!(
                        "`claims_to_headers.{h}`: `consumer.` needs a metadata key"
                    ));
                }
                Some(key) => HeaderSource::Metadata(key.into()),
                None => HeaderSource::Claim(
                    ClaimPath::parse(path).map_err(|e| format!("`claims_to_headers.{h}`: {e}"))?,
                ),
            };
            claim_headers.push((name, source));
        }
        let query_credentials = providers
            .iter()
            .flat_map(|p| match &p.config {
                AuthProviderConfig::ApiKey(c) => c.from.as_slice(),
                AuthProviderConfig::Jwt(c) => c.from.as_slice(),
                AuthProviderConfig::Introspection(c) => c.from.as_slice(),
                AuthProviderConfig::Basic(_) => &[],
            })
            .filter_map(|s| s.query.as_deref().map(Box::from))
            .collect();
        Ok(Self {
            query_credentials,
            challenges: providers.iter().map(|p| p.challenge(None)).collect(),
            providers: providers.into(),
            consumers: state.consumers.clone(),
            mode: cfg.mode,
            anonymous: cfg.anonymous,
            keep_credentials: cfg.keep_credentials,
            consumer_header,
            claim_headers: claim_headers.into(),
            counters: Counters {
                accepted: metrics.auth(route, "accepted"),
                anonymous: metrics.auth(route, "anonymous"),
                unauthorized: metrics.auth(route, "unauthorized"),
                unavailable: metrics.auth(route, "unavailable"),
            },
        })
    }

    /// The route's `WWW-Authenticate` challenges (for a 401 from `authorize`).
    pub fn challenges(&self) -> Vec<HeaderValue> {
        self.challenges.to_vec()
    }

    /// Identifies the caller (sets `ctx.identity`), strips credentials and
    /// sets the identity headers; 401 or 503 when it cannot.
    pub async fn apply<B>(
        &self,
        req: &mut http::Request<B>,
        ctx: &mut crate::pipeline::RequestCtx,
    ) -> Result<(), ProxyError> {
        if !self.query_credentials.is_empty()
            && let Some(record) = ctx.exchange.record()
            && let Some(redacted) = source::redact_query(&record.path, &self.query_credentials)
        {
            record.path = redacted;
        }
        let identity = match self.identify(req).await {
            Ok(identity) => identity,
            Err(Failure::Unavailable(why)) => {
                self.counters.unavailable.inc();
                return Err(ProxyError::new(ErrorKind::AuthUnavailable)
                    .detail(why)
                    .header(header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Err(Failure::Unauthorized(why, rejected)) => {
                self.counters.unauthorized.inc();
                let mut headers = HeaderMap::with_capacity(self.providers.len());
                for ((p, plain), reason) in
                    self.providers.iter().zip(&*self.challenges).zip(rejected)
                {
                    let value = match reason {
                        Some(r) => p.challenge(Some(&r)),
                        None => plain.clone(),
                    };
                    headers.append(header::WWW_AUTHENTICATE, value);
                }
                return Err(ProxyError::new(ErrorKind::Unauthorized)
                    .detail(why)
                    .headers(headers));
            }
        };
        if identity.is_some() {
            self.counters.accepted.inc();
        } else {
            self.counters.anonymous.inc();
        }
        if !self.keep_credentials {
            for p in &*self.providers {
                p.strip(req);
            }
        }
        self.set_headers(req.headers_mut(), identity.as_ref());
        ctx.identity = identity;
        Ok(())
    }

    /// Runs the providers as the mode says: the identity, `None` for an
    /// anonymous request that is let through, or why not.
    async fn identify<B>(&self, req: &http::Request<B>) -> Result<Option<Identity>, Failure> {
        let n = self.providers.len();
        let mut rejected: Vec<Option<Cow<'static, str>>> = Vec::new();
        let mut unavailable = None;
        let mut absent = 0;
        let mut identity: Option<Identity> = None;
        for (i, p) in self.providers.iter().enumerate() {
            match p.authenticate(req, &self.consumers).await {
                Outcome::Accepted(id) => match (self.mode, identity.as_mut()) {
                    (AuthMode::Any, _) => return Ok(Some(id)),
                    (AuthMode::All, None) => identity = Some(id),
                    (AuthMode::All, Some(first)) => {
                        if let Err(why) = merge(first, id) {
                            rejected.resize(n, None);
                            rejected[i] = Some(why.clone());
                            return Err(Failure::Unauthorized(why, rejected));
                        }
                    }
                },
                Outcome::Absent => absent += 1,
                Outcome::Rejected(why) => {
                    rejected.resize(n, None);
                    rejected[i] = Some(why);
                    if self.mode == AuthMode::All {
                        break;
                    }
                }
                Outcome::Unavailable(why) => {
                    unavailable.get_or_insert(why);
                    if self.mode == AuthMode::All {
                        break;
                    }
                }
            }
        }
        if let Some(why) = unavailable {
            return Err(Failure::Unavailable(why));
        }
        if let Some(why) = rejected.iter().flatten().next().cloned() {
            return Err(Failure::Unauthorized(why, rejected));
        }
        if absent == n {
            return if self.anonymous {
                Ok(None)
            } else {
                Err(Failure::Unauthorized(
                    "credentials required".into(),
                    vec![None; n],
                ))
            };
        }
        match identity {
            // `all` with a provider whose credential is missing.
            Some(_) if absent > 0 => Err(Failure::Unauthorized(
                "every credential of the route is required".into(),
                vec![None; n],
            )),
            Some(id) => Ok(Some(id)),
            None => Err(Failure::Unauthorized(
                "credentials required".into(),
                vec![None; n],
            )),
        }
    }

    /// Removes client-sent identity headers (they would be trusted upstream),
    /// then sets them from the identity.
    fn set_headers(&self, headers: &mut HeaderMap, identity: Option<&Identity>) {
        if let Some(h) = &self.consumer_header {
            headers.remove(h);
        }
        for (h, _) in &*self.claim_headers {
            headers.remove(h);
        }
        let Some(id) = identity else {
            return;
        };
        if let Some(h) = &self.consumer_header
            && let Some(c) = &id.consumer
            && let Ok(v) = HeaderValue::from_str(&c.name)
        {
            headers.insert(h.clone(), v);
        }
        for (h, source) in &*self.claim_headers {
            let value = match source {
                HeaderSource::Metadata(key) => id
                    .consumer
                    .as_ref()
                    .and_then(|c| c.metadata.get(&**key))
                    .and_then(|v| HeaderValue::from_str(v).ok()),
                HeaderSource::Claim(path) => id
                    .claims
                    .as_deref()
                    .and_then(|c| path.lookup(c))
                    .and_then(claim_value),
            };
            if let Some(v) = value {
                headers.insert(h.clone(), v);
            }
        }
    }
}

/// Folds another provider's identity into `first` (mode `all`): both must
/// name the same consumer, if both name one.
fn merge(first: &mut Identity, other: Identity) -> Result<(), Cow<'static, str>> {
    match (&first.consumer, other.consumer) {
        (Some(a), Some(b)) if a.name != b.name => {
            return Err("the credentials belong to different consumers".into());
        }
        (None, Some(b)) => first.consumer = Some(b),
        _ => {}
    }
    if first.claims.is_none() {
        first.claims = other.claims;
        first.subject = other.subject;
    }
    Ok(())
}

/// Background work of the auth providers (JWKS refresh), on the control
/// runtime, for the life of the process; `snapshot` gives the current snapshot.
pub async fn supervise(snapshot: impl Fn() -> Arc<crate::gateway::Gateway> + Send + 'static) {
    jwks::supervise(snapshot).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEAD: &str = "listeners: [{ name: l, address: \"127.0.0.1:0\" }]\nconsumers:\n  - name: alice\n    api_keys: [ka]\n    metadata: { tier: gold }\n  - name: bob\n    api_keys: [kb]\n    basic: [{ username: bob, password_hash: \"$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie\" }]\nauth_providers:\n  key: { api_key: {} }\n  qkey: { api_key: { from: [{ query: k }] } }\n";

    fn filter(route_auth: &str) -> AuthFilter {
        let cfg = crate::config::load_str(HEAD, "t.yaml").unwrap();
        let metrics = Metrics::default();
        let state = AuthState::compile(&cfg, "t.yaml", None, &metrics).unwrap();
        let auth: RouteAuthConfig = serde_saphyr::from_str(route_auth).unwrap();
        AuthFilter::compile("r", &auth, &state, &metrics).unwrap()
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    fn who(r: Result<Option<Identity>, Failure>) -> String {
        match r {
            Ok(Some(id)) => id.consumer.map_or("?".into(), |c| c.name.to_string()),
            Ok(None) => "anonymous".into(),
            Err(Failure::Unauthorized(why, _)) => format!("401 {why}"),
            Err(Failure::Unavailable(why)) => format!("503 {why}"),
        }
    }

    #[tokio::test]
    async fn modes_and_anonymous() {
        let any = filter("providers: [key, qkey]");
        assert_eq!(
            who(any.identify(&req("/", &[("x-api-key", "ka")])).await),
            "alice"
        );
        assert_eq!(who(any.identify(&req("/?k=kb", &[])).await), "bob");
        assert_eq!(
            who(any.identify(&req("/?k=kb", &[("x-api-key", "bad")])).await),
            "bob"
        );
        assert_eq!(
            who(any.identify(&req("/", &[])).await),
            "401 credentials required"
        );
        assert_eq!(
            who(any.identify(&req("/", &[("x-api-key", "bad")])).await),
            "401 invalid API key"
        );

        let all = filter("providers: [key, qkey]\nmode: all");
        assert_eq!(
            who(all.identify(&req("/?k=ka", &[("x-api-key", "ka")])).await),
            "alice"
        );
        assert!(
            who(all.identify(&req("/?k=kb", &[("x-api-key", "ka")])).await)
                .contains("different consumers")
        );
        assert!(who(all.identify(&req("/", &[("x-api-key", "ka")])).await).starts_with("401"));

        let anon = filter("providers: [key]\nanonymous: true");
        assert_eq!(who(anon.identify(&req("/", &[])).await), "anonymous");
        assert_eq!(
            who(anon.identify(&req("/", &[("x-api-key", "bad")])).await),
            "401 invalid API key"
        );
        let twice = req("/", &[("x-api-key", "ka"), ("x-api-key", "ka")]);
        assert!(who(anon.identify(&twice).await).starts_with("401"));
    }

    #[test]
    fn identity_headers_replace_client_ones() {
        let f = filter(
            "providers: [key]\nclaims_to_headers: { x-tier: consumer.tier, x-email: email, x-roles: realm.roles, x-n: n }",
        );
        let cfg = crate::config::load_str(HEAD, "t.yaml").unwrap();
        let consumers = Consumers::compile(&cfg, "t.yaml").unwrap();
        let claims = serde_json::json!({"email": "a@b.c", "realm": {"roles": ["a", "b"]}, "n": 5});
        let id = Identity {
            consumer: consumers.by_key(&consumers::key_digest(b"ka")).cloned(),
            subject: None,
            claims: claims.as_object().cloned().map(Arc::new),
            provider: "key".into(),
        };
        let mut h = HeaderMap::new();
        h.insert("x-consumer", HeaderValue::from_static("mallory"));
        h.insert("x-tier", HeaderValue::from_static("platinum"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        let mut spoofed = h.clone();
        f.set_headers(&mut h, Some(&id));
        assert_eq!(h["x-consumer"], "alice");
        assert_eq!(h["x-tier"], "gold");
        assert_eq!(h["x-email"], "a@b.c");
        assert_eq!(h["x-roles"], "a, b");
        assert_eq!(h["x-n"], "5");
        assert_eq!(h["x-other"], "kept");
        f.set_headers(&mut spoofed, None);
        assert!(spoofed.get("x-consumer").is_none());
        assert!(spoofed.get("x-tier").is_none());
        assert_eq!(spoofed["x-other"], "kept");
    }

    #[test]
    fn claim_values_become_header_values() {
        use serde_json::json;
        assert_eq!(claim_value(&json!("x")).unwrap(), "x");
        assert_eq!(claim_value(&json!(true)).unwrap(), "true");
        assert_eq!(claim_value(&json!({"a": 1})).unwrap(), "{\"a\":1}");
        assert_eq!(claim_value(&json!([1, "a"])).unwrap(), "[1,\"a\"]");
        assert!(claim_value(&json!("a\nb")).is_none());
        assert!(claim_value(&json!(null)).is_none());
    }

    #[test]
    fn compile_errors_name_the_key() {
        let cfg = crate::config::load_str(HEAD, "t.yaml").unwrap();
        let metrics = Metrics::default();
        let state = AuthState::compile(&cfg, "t.yaml", None, &metrics).unwrap();
        let err = |y: &str| {
            let auth: RouteAuthConfig = serde_saphyr::from_str(y).unwrap();
            AuthFilter::compile("r", &auth, &state, &metrics)
                .err()
                .unwrap()
        };
        assert!(err("providers: [key, key]").contains("listed twice"));
        assert!(
            err("providers: [key]\nconsumer_header: \"a b\"").contains("`consumer_header` `a b`")
        );
        assert!(
            err("providers: [key]\nclaims_to_headers: { host: sub }").contains("cannot be set")
        );
        assert!(
            err("providers: [key]\nclaims_to_headers: { x-consumer: sub }")
                .contains("is the `consumer_header`")
        );
        assert!(
            err("providers: [key]\nclaims_to_headers: { x-a: \"a..b\" }").contains("claim path")
        );
    }

    #[test]
    fn provider_errors_carry_their_location() {
        let metrics = Metrics::default();
        let cfg = crate::config::load_str(HEAD, "t.yaml").unwrap();
        let bad = format!("{HEAD}  q2: {{ api_key: {{ from: [{{ header: x, cookie: y }}] }} }}\n");
        let e = AuthState::compile(
            &crate::config::load_str(&bad, "t.yaml").unwrap(),
            "t.yaml",
            None,
            &metrics,
        )
        .err()
        .unwrap();
        assert!(
            e[0].to_string()
                .starts_with("t.yaml:12:7: auth provider `q2`: `from`:"),
            "{}",
            e[0]
        );
        let state = AuthState::compile(&cfg, "t.yaml", None, &metrics).unwrap();
        assert_eq!(state.providers.len(), 2);
    }

    #[test]
    fn claim_paths_try_the_whole_name_first() {
        let c = serde_json::json!({"https://x.io/r": 1, "a": {"b": {"c": 2}}});
        let c = c.as_object().unwrap();
        assert_eq!(
            ClaimPath::parse("https://x.io/r")
                .unwrap()
                .lookup(c)
                .unwrap(),
            1
        );
        assert_eq!(ClaimPath::parse("a.b.c").unwrap().lookup(c).unwrap(), 2);
        assert!(ClaimPath::parse("a.x").unwrap().lookup(c).is_none());
        assert!(ClaimPath::parse(".a").is_err());
    }
}
