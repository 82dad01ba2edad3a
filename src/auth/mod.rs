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
use std::sync::Arc;

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
    pub config: crate::config::AuthProviderConfig,
    /// The method.
    pub kind: ProviderKind,
}

/// The method of a provider.
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
            ProviderKind::ApiKey(p) => p.authenticate(&self.name, req, consumers),
            ProviderKind::Basic(p) => p.authenticate(&self.name, req, consumers).await,
            ProviderKind::Jwt(p) => p.authenticate(&self.name, req, consumers).await,
            ProviderKind::Introspection(p) => p.authenticate(&self.name, req, consumers).await,
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
    pub fn challenge(&self, error: Option<&str>) -> http::HeaderValue {
        match &self.kind {
            ProviderKind::ApiKey(p) => p.challenge(error),
            ProviderKind::Basic(p) => p.challenge(error),
            ProviderKind::Jwt(p) => p.challenge(error),
            ProviderKind::Introspection(p) => p.challenge(error),
        }
    }
}

/// The consumers and providers of one snapshot.
#[derive(Default)]
pub struct AuthState {
    /// Every consumer, indexed by credential.
    pub consumers: Arc<Consumers>,
    /// Providers by name.
    pub providers: std::collections::BTreeMap<String, Arc<Provider>>,
}

impl AuthState {
    /// Compiles `consumers` and `auth_providers`; providers whose definition
    /// is unchanged since `previous` are kept, with their state.
    pub fn compile(
        _cfg: &crate::config::Config,
        _file: &str,
        _previous: Option<&AuthState>,
        _metrics: &crate::observe::metrics::Metrics,
    ) -> Result<Self, Vec<crate::config::ConfigError>> {
        Ok(Self::default())
    }
}

/// A route's authentication filter.
pub struct AuthFilter {}

impl AuthFilter {
    /// Compiles a route's `auth`.
    pub fn compile(
        _route: &str,
        _cfg: &crate::config::RouteAuthConfig,
        _state: &AuthState,
        _metrics: &crate::observe::metrics::Metrics,
    ) -> Result<Self, String> {
        Err("auth: not built yet".into())
    }

    /// The route's `WWW-Authenticate` challenges (for a 401 from `authorize`).
    pub fn challenges(&self) -> Vec<http::HeaderValue> {
        Vec::new()
    }

    /// Identifies the caller (sets `ctx.identity`), strips credentials and
    /// sets the identity headers; 401 or 503 when it cannot.
    pub async fn apply<B>(
        &self,
        _req: &mut http::Request<B>,
        _ctx: &mut crate::pipeline::RequestCtx,
    ) -> Result<(), crate::error::ProxyError> {
        Ok(())
    }
}

/// Background work of the auth providers (JWKS refresh), on the control
/// runtime, for the life of the process; `snapshot` gives the current snapshot.
pub async fn supervise(snapshot: impl Fn() -> Arc<crate::gateway::Gateway> + Send + 'static) {
    jwks::supervise(snapshot).await;
}
