//! The config schema of API management, part one: consumers, authentication
//! providers, and a route's `auth`, `authorize` and `ip_rules`.
//!
//! Every struct rejects unknown keys; see `docs/configuration.md` for each
//! key with an example.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::units::Dur;

/// A named identity calling the APIs, with its credentials.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name: shown in the access log, sent upstream, matched by `authorize.consumers`.
    pub name: Spanned<String>,
    /// Groups it belongs to (matched by `authorize.groups`).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form labels, available to `claims_to_headers` as `consumer.<key>`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// API keys: plain text (`"${KEY}"`) or `{ sha256: <hex digest> }`.
    #[serde(default)]
    pub api_keys: Vec<Spanned<ApiKeyCredential>>,
    /// Basic credentials: a user name and a bcrypt or argon2 password hash.
    #[serde(default)]
    pub basic: Vec<Spanned<BasicCredential>>,
    /// Identities that JWT and introspection providers map to this consumer:
    /// values of the provider's `consumer_claim` (for example the `sub` or
    /// `client_id` of a token), each for one provider or, with a single token
    /// provider, plain.
    #[serde(default)]
    pub subjects: Vec<Spanned<SubjectEntry>>,
}

/// One subject of a consumer.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SubjectEntry {
    /// Any token provider's subject: only when the config has one token provider.
    Plain(String),
    /// A subject of tokens from one provider.
    Qualified {
        /// The `auth_providers` name of a `jwt` or `introspection` provider.
        provider: String,
        /// The value of that provider's `consumer_claim`.
        subject: String,
    },
}

impl<'de> Deserialize<'de> for SubjectEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Qualified {
            provider: String,
            subject: String,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SubjectEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a subject, or `{ provider: <auth provider>, subject: <value> }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SubjectEntry, E> {
                Ok(SubjectEntry::Plain(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SubjectEntry, A::Error> {
                Qualified::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|q| {
                    SubjectEntry::Qualified {
                        provider: q.provider,
                        subject: q.subject,
                    }
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One API key of a consumer.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ApiKeyCredential {
    /// The key itself (from `${ENV}` or `${file:PATH}`, not written in the file).
    Plain(String),
    /// The key's SHA-256 digest in hex (64 characters).
    Hashed {
        /// Lowercase or uppercase hex.
        sha256: String,
    },
}

impl<'de> Deserialize<'de> for ApiKeyCredential {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Hashed {
            sha256: String,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ApiKeyCredential;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an API key, or `{ sha256: <hex digest> }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ApiKeyCredential, E> {
                Ok(ApiKeyCredential::Plain(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ApiKeyCredential, A::Error> {
                Hashed::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|h| ApiKeyCredential::Hashed { sha256: h.sha256 })
            }
        }
        d.deserialize_any(V)
    }
}

/// A Basic credential of a consumer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicCredential {
    /// The user name.
    pub username: String,
    /// A bcrypt (`$2b$...`) or argon2 PHC (`$argon2id$...`) hash; never a plain password.
    pub password_hash: String,
}

/// An authentication provider: exactly one method, by its key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthProviderConfig {
    /// API keys of the consumers.
    ApiKey(ApiKeyConfig),
    /// HTTP Basic with the consumers' password hashes.
    Basic(BasicConfig),
    /// Signed JWTs (RFC 7519).
    Jwt(JwtConfig),
    /// OAuth2 token introspection (RFC 7662).
    Introspection(IntrospectionConfig),
}

/// Where a credential is read from: exactly one of `header`, `cookie`, `query`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// A request header.
    #[serde(default)]
    pub header: Option<String>,
    /// With `header`: the scheme of the values read, such as `Bearer`
    /// (compared case-insensitively; then one or more spaces and the token).
    #[serde(default)]
    pub scheme: Option<String>,
    /// A cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// A query parameter.
    #[serde(default)]
    pub query: Option<String>,
}

/// API key settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Where keys are read from, in order; default: the `X-API-Key` header.
    #[serde(default = "default_api_key_from")]
    pub from: Vec<TokenSource>,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self {
            from: default_api_key_from(),
        }
    }
}

fn default_api_key_from() -> Vec<TokenSource> {
    vec![TokenSource {
        header: Some("x-api-key".into()),
        ..TokenSource::default()
    }]
}

fn default_bearer_from() -> Vec<TokenSource> {
    vec![TokenSource {
        header: Some("authorization".into()),
        scheme: Some("Bearer".into()),
        ..TokenSource::default()
    }]
}

/// Basic authentication settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BasicConfig {
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Verified credentials remembered (by a keyed digest, never in clear) so
    /// that the slow hash runs once per credential and period.
    #[serde(default = "default_basic_cache_ttl")]
    pub cache_ttl: Dur,
}

impl Default for BasicConfig {
    fn default() -> Self {
        Self {
            realm: default_realm(),
            cache_ttl: default_basic_cache_ttl(),
        }
    }
}

fn default_realm() -> String {
    "portico".into()
}
fn default_basic_cache_ttl() -> Dur {
    Dur(std::time::Duration::from_secs(300))
}

/// JWT verification settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`; with `discovery`, also the issuer whose
    /// `/.well-known/openid-configuration` names the JWKS.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences: the token's `aud` must hold one (unchecked when empty).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted algorithms; default: every algorithm the keys allow.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Keys written in the config.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS document URL (http or https).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Find the JWKS URL through OpenID Connect discovery from `issuer`.
    #[serde(default)]
    pub discovery: bool,
    /// How often the JWKS is fetched again; a shorter `Cache-Control: max-age` wins.
    #[serde(default = "default_jwks_refresh")]
    pub refresh_interval: Dur,
    /// Least time between two fetches triggered by an unknown `kid`.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_interval: Dur,
    /// Time allowed for one JWKS or discovery fetch.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Dur,
    /// A CA bundle (PEM file) to verify an https JWKS server with, instead of the system roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Where tokens are read from, in order; default: `Authorization: Bearer`.
    #[serde(default = "default_bearer_from")]
    pub from: Vec<TokenSource>,
    /// The claim whose value names the consumer (matched against consumers' `subjects`).
    #[serde(default)]
    pub consumer_claim: Option<String>,
}

fn default_jwks_refresh() -> Dur {
    Dur(std::time::Duration::from_secs(600))
}
fn default_min_refetch() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_fetch_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}
fn default_leeway() -> Dur {
    Dur(std::time::Duration::from_secs(30))
}

/// A JWT verification key written in the config: exactly one of `secret`, `public_key`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// The key id a token's `kid` must name (any token when absent).
    #[serde(default)]
    pub kid: Option<String>,
    /// The algorithm this key verifies (`HS256`, `RS256`, `ES256`, `EdDSA`, ...).
    pub alg: String,
    /// An HMAC secret (HS256/384/512), from `${ENV}` or `${file:PATH}`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A PEM public key: a file path, or the PEM text itself.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// OAuth2 token introspection settings (RFC 7662).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint URL (http or https).
    pub endpoint: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// Its client secret (sent with HTTP Basic, RFC 7662 §2.1).
    pub client_secret: String,
    /// Where tokens are read from, in order; default: `Authorization: Bearer`.
    #[serde(default = "default_bearer_from")]
    pub from: Vec<TokenSource>,
    /// Accepted audiences: an active answer's `aud` must hold one (unchecked
    /// when empty), so that a token issued for another service is refused.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Longest time an active answer is cached (never past the token's `exp`).
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl: Dur,
    /// How long an inactive answer is cached (0: not cached).
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl: Dur,
    /// Most answers cached (least recently used beyond).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// Time allowed for one introspection call.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: Dur,
    /// A CA bundle (PEM file) for an https endpoint, instead of the system roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// The claim whose value names the consumer (matched against consumers' `subjects`).
    #[serde(default)]
    pub consumer_claim: Option<String>,
}

fn default_introspection_ttl() -> Dur {
    Dur(std::time::Duration::from_secs(300))
}
fn default_negative_ttl() -> Dur {
    Dur(std::time::Duration::from_secs(10))
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_introspection_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(2))
}

/// How several providers on one route combine.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// The first provider that accepts the request identifies it.
    #[default]
    Any,
    /// Every provider must accept the request.
    All,
}

/// A route's authentication.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthConfig {
    /// Names of entries in `auth_providers`.
    pub providers: Vec<Spanned<String>>,
    /// `any` (default) or `all`.
    #[serde(default)]
    pub mode: AuthMode,
    /// Let requests that carry no credential at all through, unidentified.
    #[serde(default)]
    pub anonymous: bool,
    /// Forward the credentials upstream (default: removed).
    #[serde(default)]
    pub keep_credentials: bool,
    /// Header that carries the consumer's name upstream ("" for none).
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// Headers set upstream from claims: header name to claim path
    /// (`email`, `org.tier`, or `consumer.<metadata key>`).
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
}

fn default_consumer_header() -> String {
    "x-consumer".into()
}

/// A route's authorization rules; all given rules must pass.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeConfig {
    /// Consumers allowed (any of).
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Groups allowed (any of).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Scopes required (all of), from the `scope` or `scp` claim.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claim rules (all of).
    #[serde(default)]
    pub claims: Vec<ClaimRule>,
}

/// A rule over one claim: exactly one of `equals`, `one_of`, `contains`, `regex`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    /// The claim's path: `role`, or `realm_access.roles` for a nested one.
    pub claim: String,
    /// The claim (a string, number or boolean) equals this value.
    #[serde(default)]
    pub equals: Option<String>,
    /// The claim equals one of these values.
    #[serde(default)]
    pub one_of: Vec<String>,
    /// The claim, a list or a space-separated string, holds this value.
    #[serde(default)]
    pub contains: Option<String>,
    /// The claim (as text) matches this regular expression, anchored at both ends.
    #[serde(default)]
    pub regex: Option<String>,
}

/// Client IP rules (the address as resolved through `forwarding.trusted_proxies`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct IpRulesConfig {
    /// Only these networks (CIDR or single addresses); everything when empty.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Never these networks; deny wins over allow.
    #[serde(default)]
    pub deny: Vec<String>,
}
