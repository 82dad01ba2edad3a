//! Signed JWTs (RFC 7519, JWS compact form of RFC 7515): the token from the
//! provider's sources (default `Authorization: Bearer`), verified with a key
//! from the config or from a remote JWKS ([`super::jwks`]), its claims
//! checked (`exp` required, `nbf`, `iss`, `aud`, with leeway).
//!
//! The header's `alg` picks nothing by itself: it must be allowed
//! (`algorithms`, never `none`), and the key must be of its family, curve and
//! own `alg`; so an HMAC key never verifies an RSA token (no algorithm
//! confusion), nor the reverse. Keys are chosen by `kid`; a token without
//! one tries the keys that allow its algorithm, at most [`MAX_TRIES`].

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use http::{HeaderValue, Request};
use jsonwebtoken::errors::ErrorKind as JwtError;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};

use super::jwks::{Key, KeySet, alg_bit};
use super::source::Sources;
use super::{Claims, Consumers, Identity, Outcome};
use crate::config::{JwtConfig, JwtKeyConfig};
use crate::observe::metrics::Metrics;

/// Longest token read (bytes); a longer one is refused unparsed.
pub const MAX_TOKEN: usize = 32 * 1024;
/// Most keys one token's signature is checked against.
pub const MAX_TRIES: usize = 4;
/// Every algorithm verified, in [`alg_bit`] order.
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
/// The challenge without an error (RFC 6750 §3).
const CHALLENGE: HeaderValue = HeaderValue::from_static("Bearer realm=\"portico\"");

/// A compiled JWT provider.
pub struct Jwt {
    name: Arc<str>,
    sources: Sources,
    /// The algorithms accepted ([`alg_bit`] set).
    allowed: u16,
    /// Keys from the config.
    keys: Box<[Key]>,
    /// The remote key set, shared with the previous snapshot's provider.
    remote: Option<Arc<KeySet>>,
    /// The claim checks, one per algorithm of [`ALGORITHMS`].
    validations: Box<[Validation]>,
    /// The claim naming the consumer (`sub` by default).
    consumer_claim: Box<str>,
}

impl Jwt {
    /// Compiles the provider; `previous` is the same definition's provider
    /// in the running snapshot, whose state is kept.
    pub fn compile(
        name: &str,
        cfg: &JwtConfig,
        file: &str,
        previous: Option<&Jwt>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        super::crypto::install();
        let sources = Sources::compile(&cfg.from).map_err(|e| format!("from: {e}"))?;
        let allowed = if cfg.algorithms.is_empty() {
            ALGORITHMS.iter().fold(0, |acc, a| acc | alg_bit(*a))
        } else {
            cfg.algorithms.iter().try_fold(0, |acc, a| {
                parse_alg(a)
                    .map(|a| acc | alg_bit(a))
                    .map_err(|e| format!("algorithms: {e}"))
            })?
        };
        let base = crate::tls::config_dir(file);
        let keys = cfg
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| static_key(i, k, &base, allowed))
            .collect::<Result<Box<[Key]>, String>>()?;
        let remote = match previous.and_then(|p| p.remote.clone()) {
            Some(kept) => Some(kept),
            None => KeySet::compile(name, cfg, file, metrics)?.map(Arc::new),
        };
        if keys.is_empty() && remote.is_none() {
            return Err("needs `keys`, `jwks_url` or `discovery`".into());
        }
        let mut template = Validation::new(Algorithm::HS256);
        template.leeway = cfg.leeway.0.as_secs();
        template.validate_nbf = true;
        template.set_required_spec_claims(&["exp"]);
        if let Some(iss) = &cfg.issuer {
            template.set_issuer(&[iss]);
            template.required_spec_claims.insert("iss".into());
        }
        if cfg.audiences.is_empty() {
            template.validate_aud = false;
        } else {
            template.set_audience(&cfg.audiences);
            template.required_spec_claims.insert("aud".into());
        }
        let validations = ALGORITHMS
            .iter()
            .map(|alg| {
                let mut v = template.clone();
                v.algorithms = vec![*alg];
                v
            })
            .collect();
        Ok(Self {
            name: name.into(),
            sources,
            allowed,
            keys,
            remote,
            validations,
            consumer_claim: cfg.consumer_claim.as_deref().unwrap_or("sub").into(),
        })
    }

    /// The remote key set, when the provider has one (for the refresh supervisor).
    pub fn key_set(&self) -> Option<&Arc<KeySet>> {
        self.remote.as_ref()
    }

    /// Checks the request's credential.
    pub async fn authenticate<B>(&self, req: &Request<B>, c: &Consumers) -> Outcome {
        let token = match self.sources.credential(req) {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        self.verify(&token, c).await
    }

    /// Verifies `token`; fetches the remote key set first when it was never
    /// loaded, or does not know the token's `kid`.
    async fn verify(&self, token: &str, consumers: &Consumers) -> Outcome {
        if token.len() > MAX_TOKEN {
            return rejected("token too large");
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return rejected("malformed token or unsupported algorithm"),
        };
        // RFC 7515 §4.1.11: no extension is understood here.
        if header.crit.is_some() {
            return rejected("unsupported critical header parameter");
        }
        let alg = header.alg;
        if self.allowed & alg_bit(alg) == 0 {
            return rejected("algorithm not allowed");
        }
        let kid = header.kid.as_deref();
        if let Some(set) = &self.remote {
            let stale = match &*set.keys() {
                None => true,
                Some(keys) => kid.is_some_and(|kid| {
                    !keys.has_kid(kid) && !self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
                }),
            };
            if stale {
                set.refetch().await;
            }
        }
        self.check(token, alg, kid, consumers)
    }

    /// Checks the signature and claims of `token` against the keys that may
    /// verify it.
    fn check(&self, token: &str, alg: Algorithm, kid: Option<&str>, c: &Consumers) -> Outcome {
        let remote = self.remote.as_ref().map(|set| set.keys());
        let remote_keys = remote
            .as_ref()
            .and_then(|g| g.as_deref())
            .map_or(&[][..], |k| &k.keys[..]);
        let loaded = remote.as_ref().is_none_or(|g| g.is_some());
        let validation = ALGORITHMS
            .iter()
            .position(|a| *a == alg)
            .and_then(|i| self.validations.get(i));
        let Some(validation) = validation else {
            return rejected("algorithm not allowed");
        };
        let (mut tried, mut wrong_alg) = (0, false);
        for key in self.keys.iter().chain(remote_keys) {
            if let (Some(kid), Some(own)) = (kid, key.kid.as_deref())
                && kid != own
            {
                continue;
            }
            if !key.allows(alg) {
                wrong_alg |= kid.is_some() && key.kid.is_some();
                continue;
            }
            if tried == MAX_TRIES {
                break;
            }
            tried += 1;
            match jsonwebtoken::decode::<Claims>(token, &key.key, validation) {
                Ok(data) => return Outcome::Accepted(self.identity(data.claims, c)),
                Err(e) if matches!(e.kind(), JwtError::InvalidSignature) => {}
                Err(e) => return rejected(reason(e.kind())),
            }
        }
        if !loaded {
            return Outcome::Unavailable(Cow::Borrowed("signing keys unavailable"));
        }
        match (tried, wrong_alg, kid) {
            (0, true, _) => rejected("algorithm does not match the key"),
            (0, false, Some(_)) => rejected("unknown key id"),
            (0, false, None) => rejected("no key for the token's algorithm"),
            _ => rejected("invalid signature"),
        }
    }

    fn identity(&self, claims: Claims, consumers: &Consumers) -> Identity {
        let named = claim_text(&claims, &self.consumer_claim);
        let consumer = named
            .as_deref()
            .and_then(|s| consumers.by_subject(&self.name, s))
            .cloned();
        let subject = named.or_else(|| claim_text(&claims, "sub"));
        Identity {
            consumer,
            subject: subject.map(Into::into),
            claims: Some(Arc::new(claims)),
            provider: self.name.clone(),
        }
    }

    /// Removes the credential.
    pub fn strip<B>(&self, req: &mut Request<B>) {
        self.sources.strip(req);
    }

    /// The challenge.
    pub fn challenge(&self, error: Option<&str>) -> HeaderValue {
        bearer_challenge(error)
    }
}

/// A Bearer challenge (RFC 6750 §3): `Bearer realm="portico"`, with
/// `error="invalid_token"` and the reason when a token was refused.
pub fn bearer_challenge(error: Option<&str>) -> HeaderValue {
    let Some(error) = error else {
        return CHALLENGE;
    };
    // RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E.
    let description: String = error
        .chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => ' ',
        })
        .collect();
    HeaderValue::try_from(format!(
        "Bearer realm=\"portico\", error=\"invalid_token\", error_description=\"{description}\""
    ))
    .unwrap_or(CHALLENGE)
}

fn rejected(why: &'static str) -> Outcome {
    Outcome::Rejected(Cow::Borrowed(why))
}

/// The reason shown for a token whose claims (or form) fail.
fn reason(e: &JwtError) -> &'static str {
    match e {
        JwtError::ExpiredSignature => "token expired",
        JwtError::ImmatureSignature => "token not valid yet",
        JwtError::InvalidAudience => "audience not accepted",
        JwtError::InvalidIssuer => "issuer not accepted",
        JwtError::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "token has no exp",
            "iss" => "token has no iss",
            "aud" => "token has no aud",
            _ => "token lacks a required claim",
        },
        JwtError::InvalidClaimFormat(_) => "malformed claim",
        JwtError::InvalidAlgorithm | JwtError::InvalidKeyFormat => {
            "algorithm does not match the key"
        }
        JwtError::InvalidToken | JwtError::Base64(_) | JwtError::Json(_) | JwtError::Utf8(_) => {
            "malformed token"
        }
        _ => "invalid token",
    }
}

/// A claim's value as text: a string, or a number as written.
fn claim_text(claims: &Claims, name: &str) -> Option<String> {
    match claims.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A JWS algorithm name; `none` and unknown names are errors.
fn parse_alg(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("`none` (unsigned tokens) is never accepted".into());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!(
            "unknown algorithm `{name}` (one of HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA)"
        )
    })
}

/// A key written in the config, checked against its `alg`.
fn static_key(
    index: usize,
    cfg: &JwtKeyConfig,
    base: &std::path::Path,
    allowed: u16,
) -> Result<Key, String> {
    let what = match &cfg.kid {
        Some(kid) => format!("keys[{index}] (kid `{kid}`)"),
        None => format!("keys[{index}]"),
    };
    let fail = |why: String| format!("{what}: {why}");
    let alg = parse_alg(&cfg.alg).map_err(|e| fail(format!("alg: {e}")))?;
    if allowed & alg_bit(alg) == 0 {
        return Err(fail(format!("alg `{}` is not in `algorithms`", cfg.alg)));
    }
    let family = alg.family();
    let key = match (&cfg.secret, &cfg.public_key) {
        (Some(_), Some(_)) => {
            return Err(fail(
                "give one of `secret` and `public_key`, not both".into(),
            ));
        }
        (None, None) => return Err(fail("needs a `secret` or a `public_key`".into())),
        (Some(secret), None) => {
            if family != AlgorithmFamily::Hmac {
                return Err(fail(format!(
                    "alg `{}` verifies with a `public_key`, not a `secret`",
                    cfg.alg
                )));
            }
            // RFC 7518 §3.2: a key at least as long as the hash output.
            let least = match alg {
                Algorithm::HS384 => 48,
                Algorithm::HS512 => 64,
                _ => 32,
            };
            if secret.len() < least {
                return Err(fail(format!(
                    "secret: {} bytes; alg `{}` needs at least {least} (RFC 7518 §3.2)",
                    secret.len(),
                    cfg.alg
                )));
            }
            DecodingKey::from_secret(secret.as_bytes())
        }
        (None, Some(pem)) => {
            if family == AlgorithmFamily::Hmac {
                return Err(fail(format!(
                    "alg `{}` verifies with a `secret`, not a `public_key`",
                    cfg.alg
                )));
            }
            public_key(alg, pem, base).map_err(|e| fail(format!("public_key: {e}")))?
        }
    };
    Ok(Key {
        kid: cfg.kid.as_deref().map(Into::into),
        algs: alg_bit(alg),
        key,
    })
}

/// A PEM public key (inline, or a file relative to the config's folder) of
/// the family and curve of `alg`.
fn public_key(alg: Algorithm, pem: &str, base: &std::path::Path) -> Result<DecodingKey, String> {
    let text: Cow<'_, str> = if pem.contains("-----BEGIN") {
        Cow::Borrowed(pem)
    } else {
        let path = crate::tls::resolve_path(base, pem);
        Cow::Owned(
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?,
        )
    };
    let not = |what: &str| format!("not {what} public key in PEM form");
    let bytes = text.as_bytes();
    let key = match alg.family() {
        AlgorithmFamily::Rsa => {
            let key = DecodingKey::from_rsa_pem(bytes).map_err(|_| not("an RSA"))?;
            let der = key.try_get_as_bytes().map_err(|_| not("an RSA"))?;
            let (n, _) =
                super::crypto::rsa_public_key_components(der).ok_or_else(|| not("an RSA"))?;
            if n.len() < 256 {
                return Err(format!(
                    "an RSA key of {} bits; at least 2048 are required",
                    n.len() * 8
                ));
            }
            key
        }
        AlgorithmFamily::Ec => {
            let (curve, len) = match alg {
                Algorithm::ES384 => ("a P-384", 97),
                _ => ("a P-256", 65),
            };
            let key = DecodingKey::from_ec_pem(bytes).map_err(|_| not(curve))?;
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(len) {
                return Err(not(curve));
            }
            key
        }
        AlgorithmFamily::Ed => {
            let key = DecodingKey::from_ed_pem(bytes).map_err(|_| not("an Ed25519"))?;
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
                return Err(not("an Ed25519"));
            }
            key
        }
        AlgorithmFamily::Hmac => return Err("an HMAC algorithm takes a `secret`".into()),
    };
    Ok(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const RSA_PUBLIC: &str = include_str!("../../tests/data/jwt-rsa-public.pem");
    const RSA_PRIVATE: &str = include_str!("../../tests/data/jwt-rsa-private.pem");

    fn cfg(yaml: &str) -> JwtConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn compile(yaml: &str) -> Result<Jwt, String> {
        Jwt::compile(
            "jwt",
            &cfg(yaml),
            "/nonexistent/portico.yaml",
            None,
            &Metrics::new(),
        )
    }

    fn hs_config() -> String {
        format!("keys: [{{ alg: HS256, secret: \"{SECRET}\" }}]\nleeway: 5s\n")
    }

    fn now() -> u64 {
        get_current_timestamp()
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        claims: serde_json::Value,
        key: &EncodingKey,
    ) -> String {
        super::super::crypto::install();
        let mut h = Header::new(alg);
        h.kid = kid.map(Into::into);
        encode(&h, &claims, key).unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        sign(
            Algorithm::HS256,
            None,
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    }

    async fn outcome(jwt: &Jwt, token: &str) -> Outcome {
        jwt.verify(token, &Consumers::default()).await
    }

    fn why(o: Outcome) -> String {
        match o {
            Outcome::Rejected(w) => w.into_owned(),
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_good_token_gives_its_claims() {
        let jwt = compile(&hs_config()).unwrap();
        let t = hs(json!({ "sub": "alice", "exp": now() + 60, "role": "admin" }));
        let Outcome::Accepted(id) = outcome(&jwt, &t).await else {
            panic!("refused")
        };
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert_eq!(id.claims.unwrap()["role"], "admin");
        assert_eq!(&*id.provider, "jwt");
    }

    #[tokio::test]
    async fn time_claims() {
        let jwt = compile(&hs_config()).unwrap();
        assert_eq!(
            why(outcome(&jwt, &hs(json!({ "sub": "a" }))).await),
            "token has no exp"
        );
        let expired = hs(json!({ "exp": now() - 60 }));
        assert_eq!(why(outcome(&jwt, &expired).await), "token expired");
        let early = hs(json!({ "exp": now() + 600, "nbf": now() + 300 }));
        assert_eq!(why(outcome(&jwt, &early).await), "token not valid yet");
        // Within the 5 s leeway.
        let skewed = hs(json!({ "exp": now() - 2, "nbf": now() + 2 }));
        assert!(matches!(outcome(&jwt, &skewed).await, Outcome::Accepted(_)));
    }

    #[tokio::test]
    async fn issuer_and_audience() {
        let jwt = compile(&format!(
            "{}issuer: https://idp.example\naudiences: [api, other]\n",
            hs_config()
        ))
        .unwrap();
        let ok =
            hs(json!({ "exp": now() + 60, "iss": "https://idp.example", "aud": ["x", "api"] }));
        assert!(matches!(outcome(&jwt, &ok).await, Outcome::Accepted(_)));
        let iss = hs(json!({ "exp": now() + 60, "iss": "https://evil.example", "aud": "api" }));
        assert_eq!(why(outcome(&jwt, &iss).await), "issuer not accepted");
        let aud = hs(json!({ "exp": now() + 60, "iss": "https://idp.example", "aud": "nope" }));
        assert_eq!(why(outcome(&jwt, &aud).await), "audience not accepted");
        let none = hs(json!({ "exp": now() + 60, "iss": "https://idp.example" }));
        assert_eq!(why(outcome(&jwt, &none).await), "token has no aud");
    }

    #[tokio::test]
    async fn unsigned_and_confused_tokens_are_refused() {
        let jwt = compile(&format!(
            "keys:\n  - {{ alg: HS256, secret: \"{SECRET}\", kid: hs }}\n  - {{ alg: RS256, kid: rs, public_key: \"{}\" }}\n",
            RSA_PUBLIC.replace('\n', "\\n")
        ))
        .unwrap();
        let b64 = |v: &serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let claims = json!({ "sub": "a", "exp": now() + 60 });
        let none = format!("{}.{}.", b64(&json!({ "alg": "none" })), b64(&claims));
        assert_eq!(
            why(outcome(&jwt, &none).await),
            "malformed token or unsupported algorithm"
        );
        // HS256 signed with the RSA public key as the HMAC secret, naming the RSA key.
        let confused = sign(
            Algorithm::HS256,
            Some("rs"),
            claims.clone(),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        );
        assert_eq!(
            why(outcome(&jwt, &confused).await),
            "algorithm does not match the key"
        );
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        // The header names an algorithm of the right family but not the key's.
        let ps = sign(Algorithm::PS256, Some("rs"), claims.clone(), &rsa);
        assert_eq!(
            why(outcome(&jwt, &ps).await),
            "algorithm does not match the key"
        );
        let good = sign(Algorithm::RS256, Some("rs"), claims.clone(), &rsa);
        assert!(matches!(outcome(&jwt, &good).await, Outcome::Accepted(_)));
        let unknown = sign(Algorithm::RS256, Some("zz"), claims.clone(), &rsa);
        assert_eq!(why(outcome(&jwt, &unknown).await), "unknown key id");
        let mut crit = Header::new(Algorithm::HS256);
        crit.crit = Some(vec!["exp".into()]);
        let crit = encode(&crit, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        assert_eq!(
            why(outcome(&jwt, &crit).await),
            "unsupported critical header parameter"
        );
        for junk in ["", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30.x"] {
            assert!(
                matches!(outcome(&jwt, junk).await, Outcome::Rejected(_)),
                "{junk}"
            );
        }
        let mut forged = good.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        assert_eq!(why(outcome(&jwt, &forged).await), "invalid signature");
        let big = "a".repeat(MAX_TOKEN + 1);
        assert_eq!(why(outcome(&jwt, &big).await), "token too large");
    }

    #[tokio::test]
    async fn allowed_algorithms_narrow_the_keys() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let _ = pair.public_key();
        let jwt = compile(&format!("{}algorithms: [HS256]\n", hs_config())).unwrap();
        let hs512 = sign(
            Algorithm::HS512,
            None,
            json!({ "exp": now() + 60 }),
            &EncodingKey::from_secret(&[1u8; 64]),
        );
        assert_eq!(why(outcome(&jwt, &hs512).await), "algorithm not allowed");
        let es = sign(
            Algorithm::ES256,
            None,
            json!({ "exp": now() + 60 }),
            &EncodingKey::from_ec_der(pkcs8.as_ref()),
        );
        assert_eq!(why(outcome(&jwt, &es).await), "algorithm not allowed");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = |yaml: &str| compile(yaml).err().unwrap();
        assert!(e("{}").contains("needs `keys`, `jwks_url` or `discovery`"));
        assert!(e("keys: [{ alg: none, secret: x }]").contains("keys[0]: alg: `none`"));
        assert!(e("keys: [{ alg: HS999, secret: x }]").contains("unknown algorithm `HS999`"));
        let pem = RSA_PUBLIC.replace('\n', "\\n");
        let msg = e(&format!(
            "keys: [{{ kid: k1, alg: HS256, public_key: \"{pem}\" }}]"
        ));
        assert!(
            msg.starts_with("keys[0] (kid `k1`): alg `HS256` verifies with a `secret`"),
            "{msg}"
        );
        let msg = e("keys: [{ alg: RS256, secret: \"0123456789abcdef0123456789abcdef\" }]");
        assert!(msg.contains("verifies with a `public_key`"), "{msg}");
        assert!(e("keys: [{ alg: HS256, secret: short }]").contains("at least 32"));
        let msg = e(&format!("keys: [{{ alg: ES256, public_key: \"{pem}\" }}]"));
        assert!(msg.contains("not a P-256 public key"), "{msg}");
        let msg = e("keys: [{ alg: RS256, public_key: missing.pem }]");
        assert!(msg.contains("/nonexistent/missing.pem"), "{msg}");
        let msg = e(&format!("algorithms: [RS256]\n{}", hs_config()));
        assert!(msg.contains("not in `algorithms`"), "{msg}");
        assert!(e("discovery: true").contains("`discovery` needs `issuer`"));
        assert!(e("jwks_url: ftp://x/").contains("jwks_url"));
        assert!(e("jwks_url: http://x/\ndiscovery: true\nissuer: http://x").contains("exclude"));
    }

    #[test]
    fn challenges() {
        assert_eq!(bearer_challenge(None), "Bearer realm=\"portico\"");
        assert_eq!(
            bearer_challenge(Some("token \"expired\"\\\n")),
            "Bearer realm=\"portico\", error=\"invalid_token\", error_description=\"token  expired   \""
        );
    }
}
