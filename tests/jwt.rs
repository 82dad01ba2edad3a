//! JWT authentication against the real binary: an echo upstream, and an
//! identity provider started by the test (a JWKS, and an OpenID Connect
//! discovery document) whose keys can be swapped, that counts its fetches and
//! can be made to fail. Tokens are signed here with keys made here (ECDSA and
//! Ed25519 by ring, RSA from `tests/data`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair,
};
use serde_json::{Value, json};
use support::upstream::{self, Upstream};
use support::{Gateway, Reply, send};

const RSA_PRIVATE: &[u8] = include_bytes!("data/jwt-rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("data/jwt-rsa-public.pem");
const SECRET: &str = "an-hmac-secret-of-32-bytes-or-more!";
/// Bound on any wait that could hang.
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Keys and tokens

/// A signing key and its public JWK.
struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn from_encoding_key(kid: &str, alg: Algorithm, key: EncodingKey) -> Signer {
        portico::auth::crypto::install();
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
        jwk["kid"] = kid.into();
        jwk["use"] = "sig".into();
        Signer {
            kid: kid.into(),
            alg,
            key,
            jwk,
        }
    }

    fn ec(kid: &str, alg: Algorithm) -> Signer {
        let signing = match alg {
            Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
            _ => &ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &SystemRandom::new()).unwrap();
        Self::from_encoding_key(kid, alg, EncodingKey::from_ec_der(pkcs8.as_ref()))
    }

    fn ed(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
        }
    }

    /// The RSA test key; its JWK names no `alg`, so it verifies RS* and PS*.
    fn rsa(kid: &str) -> Signer {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
        let mut s = Self::from_encoding_key(kid, Algorithm::RS256, key);
        s.jwk.as_object_mut().unwrap().remove("alg");
        s
    }

    /// A token with this key's `kid`, signed with `alg`.
    fn sign_as(&self, alg: Algorithm, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &self.key).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, claims)
    }
}

/// A JWKS document of `keys`.
fn jwks(keys: &[&Signer]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> u64 {
    get_current_timestamp()
}

/// Claims valid for five minutes, with `extra` members added.
fn claims(extra: Value) -> Value {
    let mut c = json!({ "sub": "alice", "exp": now() + 300, "iat": now() });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn b64json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

// ---------------------------------------------------------------------------
// The identity provider

struct IdpState {
    jwks: String,
    fail: bool,
    /// The `issuer` its discovery document names.
    named_issuer: String,
    base: String,
}

/// A JWKS (`/jwks`) and discovery (`/.well-known/openid-configuration`) server.
struct Idp {
    server: Upstream,
    state: Arc<Mutex<IdpState>>,
}

impl Idp {
    async fn start(jwks: String) -> Idp {
        let state = Arc::new(Mutex::new(IdpState {
            jwks,
            fail: false,
            named_issuer: String::new(),
            base: String::new(),
        }));
        let s = state.clone();
        let server = upstream::start(move |seen| {
            let st = s.lock().unwrap();
            let (status, body) = if st.fail {
                (500, "{}".to_owned())
            } else {
                match seen.uri.path() {
                    "/jwks" => (200, st.jwks.clone()),
                    "/.well-known/openid-configuration" => (
                        200,
                        json!({
                            "issuer": st.named_issuer,
                            "jwks_uri": format!("{}/jwks", st.base),
                        })
                        .to_string(),
                    ),
                    _ => (404, String::new()),
                }
            };
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        })
        .await;
        {
            let mut st = state.lock().unwrap();
            st.base = format!("http://{}", server.addr);
            st.named_issuer = st.base.clone();
        }
        Idp { server, state }
    }

    fn base(&self) -> String {
        self.state.lock().unwrap().base.clone()
    }

    fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base())
    }

    fn set_keys(&self, jwks: String) {
        self.state.lock().unwrap().jwks = jwks;
    }

    fn fail(&self, fail: bool) {
        self.state.lock().unwrap().fail = fail;
    }

    /// JWKS fetches so far.
    fn fetches(&self) -> usize {
        self.server
            .seen()
            .iter()
            .filter(|s| s.uri.path() == "/jwks")
            .count()
    }

    /// Waits until at least `n` JWKS fetches arrived.
    async fn wait_fetches(&self, n: usize) {
        let deadline = Instant::now() + LIMIT;
        while self.fetches() < n {
            assert!(
                Instant::now() < deadline,
                "JWKS fetched {} times",
                self.fetches()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway

/// An upstream answering 200 `ok`.
async fn app() -> Upstream {
    upstream::start(|_| Response::new(Full::new(Bytes::from_static(b"ok")))).await
}

/// A gateway with provider `idp` (`provider` is the YAML flow map of its
/// `jwt` settings) guarding the route `/` to `up`; `route` adds keys to the
/// route (e.g. `, authorize: {...}`).
fn gateway(up: &Upstream, provider: &str, route: &str) -> (Gateway, SocketAddr) {
    let yaml = format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
consumers:
  - {{ name: alice-co, subjects: [alice], metadata: {{ tier: gold }} }}
auth_providers:
  idp: {{ jwt: {provider} }}
upstreams:
  u: {{ endpoints: ["{}"] }}
routes:
  - {{ name: api, match: {{ prefix: / }}, upstream: u, auth: {{ providers: [idp] }}{route} }}
"#,
        up.addr
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    (gw, addr)
}

/// `GET path` with `Authorization: Bearer token`.
async fn bearer(addr: SocketAddr, path: &str, token: &str) -> Reply {
    let req = Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await
}

/// Asserts a 401 refusing a token, with the RFC 6750 challenge naming `why`.
fn assert_refused(r: &Reply, why: &str) {
    assert_eq!(r.status, 401, "{why}: {}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge
            .starts_with(r#"Bearer realm="portico", error="invalid_token", error_description=""#),
        "{why}: {challenge}"
    );
    assert!(challenge.contains(why), "expected `{why}` in {challenge}");
}

/// Waits (without blocking the test's runtime, which serves the identity
/// provider) until the gateway logged `needle`.
async fn wait_log(gw: &Gateway, needle: &str) {
    let deadline = Instant::now() + LIMIT;
    while !gw.stderr().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn jwks_provider(idp: &Idp, extra: &str) -> String {
    format!("{{ jwks_url: \"{}\"{extra} }}", idp.jwks_url())
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn every_algorithm_family_is_accepted() {
    let (rsa, es256, es384, ed) = (
        Signer::rsa("rsa"),
        Signer::ec("es256", Algorithm::ES256),
        Signer::ec("es384", Algorithm::ES384),
        Signer::ed("ed"),
    );
    let idp = Idp::start(jwks(&[&rsa, &es256, &es384, &ed])).await;
    let up = app().await;
    // A config key next to the JWKS: HS256 by its secret.
    let provider = jwks_provider(
        &idp,
        &format!(", keys: [{{ kid: hs, alg: HS256, secret: \"{SECRET}\" }}]"),
    );
    let (_gw, addr) = gateway(&up, &provider, "");
    idp.wait_fetches(1).await;
    let c = claims(json!({}));
    let hs = Signer {
        kid: "hs".into(),
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(SECRET.as_bytes()),
        jwk: Value::Null,
    };
    let mut tokens = vec![
        ("ES256", es256.sign(&c)),
        ("ES384", es384.sign(&c)),
        ("EdDSA", ed.sign(&c)),
        ("HS256", hs.sign(&c)),
    ];
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        tokens.push(("RSA", rsa.sign_as(alg, &c)));
    }
    for (what, token) in &tokens {
        let r = bearer(addr, "/x", token).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    // The credential was removed before going upstream.
    assert_eq!(up.count(), tokens.len());
    assert!(
        up.seen()
            .iter()
            .all(|s| !s.headers.contains_key("authorization"))
    );
    // One fetch served them all.
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_bearer_challenge() {
    let (rsa, es256, es384) = (
        Signer::rsa("rsa"),
        Signer::ec("es256", Algorithm::ES256),
        Signer::ec("es384", Algorithm::ES384),
    );
    let mut rs_only = Signer::rsa("rs-only");
    rs_only.jwk["alg"] = "RS256".into();
    let idp = Idp::start(jwks(&[&rsa, &es256, &rs_only])).await;
    let up = app().await;
    let provider = jwks_provider(
        &idp,
        ", issuer: https://idp.example, audiences: [api], leeway: 30s, min_refetch_interval: 1h",
    );
    let (_gw, addr) = gateway(&up, &provider, "");
    idp.wait_fetches(1).await;
    let good = |extra: Value| {
        let mut c = claims(json!({ "iss": "https://idp.example", "aud": "api" }));
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    assert_eq!(
        bearer(addr, "/", &es256.sign(&good(json!({}))))
            .await
            .status,
        200
    );

    // No credential at all: a plain challenge, no error (RFC 6750 §3.1).
    let r = support::get_path(addr, "/").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="portico""#)
    );

    let unsigned = format!(
        "{}.{}.",
        b64json(&json!({ "alg": "none", "typ": "JWT" })),
        b64json(&good(json!({})))
    );
    assert_refused(&bearer(addr, "/", &unsigned).await, "unsupported algorithm");
    // HS256 keyed with the RSA public key, naming the RSA key: algorithm confusion.
    let confused = Signer {
        kid: "rsa".into(),
        alg: Algorithm::HS256,
        key: EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        jwk: Value::Null,
    };
    assert_refused(
        &bearer(addr, "/", &confused.sign(&good(json!({})))).await,
        "algorithm does not match the key",
    );
    // An ES384 token naming the P-256 key.
    let mut wrong_curve = es384.sign(&good(json!({})));
    let header = b64json(&json!({ "alg": "ES384", "kid": "es256", "typ": "JWT" }));
    wrong_curve.replace_range(..wrong_curve.find('.').unwrap(), &header);
    assert_refused(
        &bearer(addr, "/", &wrong_curve).await,
        "algorithm does not match the key",
    );
    // The JWK's own `alg` (RS256) is respected: PS256 with the same key is refused.
    assert_refused(
        &bearer(
            addr,
            "/",
            &rs_only.sign_as(Algorithm::PS256, &good(json!({}))),
        )
        .await,
        "algorithm does not match the key",
    );
    assert_eq!(
        bearer(
            addr,
            "/",
            &rs_only.sign_as(Algorithm::RS256, &good(json!({})))
        )
        .await
        .status,
        200
    );
    let expired = es256.sign(&good(json!({ "exp": now() - 120 })));
    assert_refused(&bearer(addr, "/", &expired).await, "token expired");
    let early = es256.sign(&good(json!({ "nbf": now() + 120 })));
    assert_refused(&bearer(addr, "/", &early).await, "token not valid yet");
    // Within the leeway both ways.
    let skewed = es256.sign(&good(json!({ "nbf": now() + 10, "exp": now() - 10 })));
    assert_eq!(bearer(addr, "/", &skewed).await.status, 200);
    let no_exp = {
        let mut c = good(json!({}));
        c.as_object_mut().unwrap().remove("exp");
        es256.sign(&c)
    };
    assert_refused(&bearer(addr, "/", &no_exp).await, "token has no exp");
    let aud = es256.sign(&good(json!({ "aud": ["web", "mobile"] })));
    assert_refused(&bearer(addr, "/", &aud).await, "audience not accepted");
    let iss = es256.sign(&good(json!({ "iss": "https://evil.example" })));
    assert_refused(&bearer(addr, "/", &iss).await, "issuer not accepted");
    // Signed by a key the provider does not have, under a known kid.
    let impostor = Signer::ec("es256", Algorithm::ES256);
    assert_refused(
        &bearer(addr, "/", &impostor.sign(&good(json!({})))).await,
        "invalid signature",
    );
    // A valid token whose payload was swapped.
    let valid = es256.sign(&good(json!({})));
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64json(&good(json!({ "sub": "admin" }))),
        parts[2]
    );
    assert_refused(&bearer(addr, "/", &tampered).await, "invalid signature");
    for junk in [
        "x",
        "a.b.c",
        "a.b.c.d.e",
        "eyJhbGciOiJFUzI1NiJ9..",
        "Zm9v.YmFy.YmF6",
    ] {
        let r = bearer(addr, "/", junk).await;
        assert_eq!(r.status, 401, "{junk}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token")
        );
    }
    // Only the good ones went upstream.
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn tokens_from_a_cookie_or_the_query() {
    let key = Signer::ec("k", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&key])).await;
    let up = app().await;
    let provider = jwks_provider(&idp, ", from: [{ cookie: at }, { query: access_token }]");
    let (_gw, addr) = gateway(&up, &provider, "");
    let token = key.sign(&claims(json!({})));
    let req = Request::get("/c")
        .header("host", "localhost")
        .header("cookie", format!("theme=dark; at={token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(addr, req).await.status, 200);
    let r = support::get_path(addr, &format!("/q?access_token={token}&page=2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The header is not a source here.
    assert_eq!(bearer(addr, "/h", &token).await.status, 401);
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    // Stripped from the query before going upstream, the rest kept.
    assert_eq!(seen[1].uri.query(), Some("page=2"));
}

#[tokio::test]
async fn keys_rotate_without_restart() {
    let (a, b, c) = (
        Signer::ec("a", Algorithm::ES256),
        Signer::ec("b", Algorithm::ES256),
        Signer::ed("c"),
    );
    let idp = Idp::start(jwks(&[&a])).await;
    let up = app().await;
    let provider = jwks_provider(&idp, ", min_refetch_interval: 300ms");
    let (_gw, addr) = gateway(&up, &provider, "");
    idp.wait_fetches(1).await;
    let token_a = a.sign(&claims(json!({})));
    assert_eq!(bearer(addr, "/", &token_a).await.status, 200);
    // The issuer publishes b next to a: a token naming b is accepted at once,
    // through one fetch caused by the unknown kid.
    idp.set_keys(jwks(&[&a, &b]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        bearer(addr, "/", &b.sign(&claims(json!({})))).await.status,
        200
    );
    assert_eq!(idp.fetches(), 2);
    // a leaves the published set: tokens of a keep working while the
    // fetched set still holds it.
    idp.set_keys(jwks(&[&b, &c]));
    assert_eq!(bearer(addr, "/", &token_a).await.status, 200);
    assert_eq!(idp.fetches(), 2);
    // The next fetch (caused by c, a new kid) drops a.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        bearer(addr, "/", &c.sign(&claims(json!({})))).await.status,
        200
    );
    assert_eq!(idp.fetches(), 3);
    let r = bearer(addr, "/", &token_a).await;
    assert_refused(&r, "unknown key id");
    assert_eq!(
        bearer(addr, "/", &b.sign(&claims(json!({})))).await.status,
        200
    );
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_interval() {
    let key = Signer::ec("known", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&key])).await;
    let up = app().await;
    let provider = jwks_provider(&idp, ", min_refetch_interval: 2s");
    let (_gw, addr) = gateway(&up, &provider, "");
    idp.wait_fetches(1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // A burst of tokens naming kids nobody published, concurrently.
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..40 {
        let stranger = Signer::ec(&format!("stranger-{i}"), Algorithm::ES256);
        let token = stranger.sign(&claims(json!({})));
        burst.spawn(async move { bearer(addr, "/", &token).await.status });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 401);
    }
    // The startup fetch, and one for the whole burst.
    assert_eq!(idp.fetches(), 2);
    // Known keys are unaffected.
    assert_eq!(
        bearer(addr, "/", &key.sign(&claims(json!({}))))
            .await
            .status,
        200
    );
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn cached_keys_are_used_while_the_issuer_is_down() {
    let (key, newer) = (
        Signer::ec("k1", Algorithm::ES256),
        Signer::ec("k2", Algorithm::ES256),
    );
    let idp = Idp::start(jwks(&[&key])).await;
    let up = app().await;
    let provider = jwks_provider(&idp, ", min_refetch_interval: 200ms, fetch_timeout: 1s");
    let (mut gw, addr) = gateway(&up, &provider, "");
    idp.wait_fetches(1).await;
    let token = key.sign(&claims(json!({})));
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    // The issuer fails: a new kid cannot be fetched, the cached key still works.
    idp.fail(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = bearer(addr, "/", &newer.sign(&claims(json!({})))).await;
    assert_refused(&r, "unknown key id");
    assert_eq!(idp.fetches(), 2);
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    // The issuer is gone altogether.
    idp.server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bearer(addr, "/", &newer.sign(&claims(json!({}))))
            .await
            .status,
        401
    );
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    wait_log(&gw, "JWKS fetch failed").await;
    // Warned once for the streak, not per request.
    assert_eq!(gw.count_log("JWKS fetch failed"), 1, "{}", gw.stderr());
    // Fetches are counted by result.
    let admin = gw.addr("admin");
    let metrics = support::get_path(admin, "/metrics").await.text();
    let line = |result: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("portico_auth_backend_calls_total")
                    && l.contains("provider=\"idp\"")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {result} count in:\n{metrics}"))
    };
    assert_eq!(line("success"), 1.0);
    assert!(line("failure") >= 2.0);
}

#[tokio::test]
async fn an_unreachable_key_set_is_503_until_it_loads() {
    let key = Signer::ec("k", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&key])).await;
    idp.fail(true);
    let up = app().await;
    let provider = jwks_provider(&idp, ", min_refetch_interval: 200ms");
    let (_gw, addr) = gateway(&up, &provider, "");
    idp.wait_fetches(1).await;
    let token = key.sign(&claims(json!({})));
    let r = bearer(addr, "/", &token).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/problem+json"),
        "{:?}",
        r.headers
    );
    assert_eq!(up.count(), 0);
    // The issuer recovers: the next request (past the interval) fetches the
    // keys itself instead of waiting for the background retry.
    idp.fail(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn keys_are_found_by_openid_connect_discovery() {
    let (key, next) = (Signer::rsa("r1"), Signer::ec("e2", Algorithm::ES256));
    let idp = Idp::start(jwks(&[&key])).await;
    let up = app().await;
    let issuer = idp.base();
    let provider =
        format!("{{ issuer: \"{issuer}\", discovery: true, min_refetch_interval: 200ms }}");
    let (_gw, addr) = gateway(&up, &provider, "");
    idp.wait_fetches(1).await;
    let token = key.sign(&claims(json!({ "iss": issuer })));
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    // `iss` is checked against the issuer.
    let other = key.sign(&claims(json!({ "iss": "http://elsewhere" })));
    assert_refused(&bearer(addr, "/", &other).await, "issuer not accepted");
    let no_iss = key.sign(&claims(json!({})));
    assert_refused(&bearer(addr, "/", &no_iss).await, "token has no iss");
    // A new kid is fetched from the `jwks_uri` found before.
    idp.set_keys(jwks(&[&key, &next]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = next.sign(&claims(json!({ "iss": issuer })));
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    assert_eq!(idp.fetches(), 2);
    let discovered = idp
        .server
        .seen()
        .iter()
        .filter(|s| s.uri.path() == "/.well-known/openid-configuration")
        .count();
    assert_eq!(discovered, 1);
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_not_trusted() {
    let key = Signer::ec("k", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&key])).await;
    idp.state.lock().unwrap().named_issuer = "https://evil.example".into();
    let up = app().await;
    let issuer = idp.base();
    let provider = format!("{{ issuer: \"{issuer}\", discovery: true }}");
    let (gw, addr) = gateway(&up, &provider, "");
    wait_log(&gw, "JWKS fetch failed").await;
    let token = key.sign(&claims(json!({ "iss": issuer })));
    assert_eq!(bearer(addr, "/", &token).await.status, 503);
    assert_eq!(idp.fetches(), 0);
    assert!(gw.stderr().contains("evil.example"), "{}", gw.stderr());
}

#[tokio::test]
async fn claims_reach_the_upstream_and_scopes_authorize() {
    let key = Signer::ec("k", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&key])).await;
    let up = app().await;
    let (_gw, addr) = gateway(
        &up,
        &jwks_provider(&idp, ""),
        ", authorize: { scopes: [orders.read] }",
    );
    let token = key.sign(&claims(
        json!({ "scope": "orders.read orders.write", "email": "alice@example.com" }),
    ));
    let r = bearer(addr, "/orders", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen();
    // `sub` names the consumer `alice-co` through its `subjects`.
    assert_eq!(seen[0].headers.get("x-consumer").unwrap(), "alice-co");
    let no_scope = key.sign(&claims(json!({ "scope": "orders.write" })));
    let r = bearer(addr, "/orders", &no_scope).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn a_reload_keeps_the_key_set_of_an_unchanged_provider() {
    let key = Signer::ec("k", Algorithm::ES256);
    let idp = Idp::start(jwks(&[&key])).await;
    let up = app().await;
    let config = |provider: &str, route: &str| {
        format!(
            r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
auth_providers:
  idp: {{ jwt: {provider} }}
upstreams:
  u: {{ endpoints: ["{}"] }}
routes:
  - {{ name: {route}, match: {{ prefix: / }}, upstream: u, auth: {{ providers: [idp] }} }}
"#,
            up.addr
        )
    };
    let provider = jwks_provider(&idp, "");
    let mut gw = Gateway::start(&config(&provider, "one"));
    let addr = gw.addr("main");
    idp.wait_fetches(1).await;
    let token = key.sign(&claims(json!({})));
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    // Another route, the same provider: its keys stay, nothing is fetched.
    gw.replace_config(&config(&provider, "two"));
    wait_log(&gw, "config reloaded").await;
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(idp.fetches(), 1);
    // A changed provider is a new key set, fetched anew.
    gw.replace_config(&config(&jwks_provider(&idp, ", leeway: 1s"), "two"));
    idp.wait_fetches(2).await;
    assert_eq!(bearer(addr, "/", &token).await.status, 200);
}

#[tokio::test]
async fn claims_to_headers_with_a_jwt() {
    let key = Signer::ed("k");
    let idp = Idp::start(jwks(&[&key])).await;
    let up = app().await;
    let yaml = format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
consumers:
  - {{ name: acme, subjects: [client-7], metadata: {{ tier: gold }} }}
auth_providers:
  idp: {{ jwt: {{ jwks_url: "{}", consumer_claim: client_id }} }}
upstreams:
  u: {{ endpoints: ["{}"] }}
routes:
  - name: api
    match: {{ prefix: / }}
    upstream: u
    auth:
      providers: [idp]
      claims_to_headers: {{ x-email: email, x-org-tier: org.tier, x-tier: consumer.tier }}
"#,
        idp.jwks_url(),
        up.addr
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    let token = key.sign(&claims(json!({
        "client_id": "client-7",
        "email": "alice@example.com",
        "org": { "tier": "platinum" },
    })));
    let r = bearer(addr, "/", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &up.seen()[0].headers;
    assert_eq!(h.get("x-email").unwrap(), "alice@example.com");
    assert_eq!(h.get("x-org-tier").unwrap(), "platinum");
    assert_eq!(h.get("x-tier").unwrap(), "gold");
    assert_eq!(h.get("x-consumer").unwrap(), "acme");
}

#[tokio::test]
async fn static_keys_from_a_pem_file() {
    let up = app().await;
    let dir = tempfile::tempdir().unwrap();
    // A relative path resolves against the config file's folder: the gateway's
    // temp dir, so write the key with an absolute path here.
    let pem = dir.path().join("rsa.pem");
    std::fs::write(&pem, RSA_PUBLIC).unwrap();
    let provider = format!(
        "{{ keys: [{{ alg: PS384, public_key: \"{}\" }}], algorithms: [PS384] }}",
        pem.display()
    );
    let (_gw, addr) = gateway(&up, &provider, "");
    let rsa = Signer::rsa("any");
    assert_eq!(
        bearer(
            addr,
            "/",
            &rsa.sign_as(Algorithm::PS384, &claims(json!({})))
        )
        .await
        .status,
        200
    );
    assert_refused(
        &bearer(
            addr,
            "/",
            &rsa.sign_as(Algorithm::RS256, &claims(json!({}))),
        )
        .await,
        "algorithm not allowed",
    );
}

#[test]
fn config_errors_are_reported_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{ name: main, address: "127.0.0.1:0" }]
auth_providers:
  idp: { jwt: { keys: [{ kid: main, alg: HS256, public_key: "/etc/none.pem" }] } }
routes:
  - { name: r, match: { prefix: / }, respond: { body: x }, auth: { providers: [idp] } }
"#,
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "auth provider `idp`: keys[0] (kid `main`): alg `HS256` verifies with a `secret`"
        ),
        "{err}"
    );
}

/// A token signed with the HMAC `secret` (no `kid`).
fn hs256(secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `GET path` with one `Authorization` header per value.
async fn with_authorization(addr: SocketAddr, path: &str, values: &[String]) -> Reply {
    let mut req = Request::get(path).header("host", "localhost");
    for v in values {
        req = req.header("authorization", v.as_str());
    }
    send(addr, req.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn a_bearer_value_with_a_tab_is_refused_never_forwarded() {
    let up = app().await;
    let yaml = format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
auth_providers:
  idp: {{ jwt: {{ keys: [{{ alg: HS256, secret: "{SECRET}" }}] }} }}
upstreams:
  u: {{ endpoints: ["{}"] }}
routes:
  - {{ name: anon, match: {{ prefix: /anon }}, upstream: u, auth: {{ providers: [idp], anonymous: true }} }}
  - {{ name: api, match: {{ prefix: / }}, upstream: u, auth: {{ providers: [idp] }} }}
"#,
        up.addr
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    let good = hs256(SECRET, &claims(json!({})));
    let forged = format!(
        "{}.{}.",
        b64json(&json!({ "alg": "none" })),
        b64json(&claims(json!({ "sub": "admin" })))
    );

    // A valid token next to a tab-separated forged one: the second value is
    // of the same scheme, so the token is sent twice.
    let both = [format!("Bearer {good}"), format!("Bearer\t{forged}")];
    for path in ["/", "/anon"] {
        let r = with_authorization(addr, path, &both).await;
        assert_eq!(r.status, 401, "{path}: {}", r.text());
    }
    // Alone, on a route that lets requests without a credential through.
    for v in [
        format!("Bearer\t{forged}"),
        "Bearer".into(),
        format!("bearer,{forged}"),
    ] {
        let r = with_authorization(addr, "/anon", std::slice::from_ref(&v)).await;
        assert_eq!(r.status, 401, "{v:?}: {}", r.text());
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    // Several spaces are still `1*SP`; the credential is not forwarded.
    let r = with_authorization(
        addr,
        "/",
        &[format!("bearer   {good}"), "Basic dTpw".into()],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let left: Vec<_> = up.seen()[0]
        .headers
        .get_all("authorization")
        .iter()
        .cloned()
        .collect();
    assert_eq!(left, ["Basic dTpw"]);
}

#[tokio::test]
async fn a_subject_names_a_consumer_only_for_its_provider() {
    const PARTNER: &str = "the-partner-secret-of-32-bytes-or-more";
    let up = app().await;
    let yaml = format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
consumers:
  - name: alice
    groups: [staff]
    subjects: [{{ provider: corp, subject: alice-sub }}]
auth_providers:
  corp: {{ jwt: {{ keys: [{{ alg: HS256, secret: "{SECRET}" }}] }} }}
  partner: {{ jwt: {{ keys: [{{ alg: HS256, secret: "{PARTNER}" }}] }} }}
upstreams:
  u: {{ endpoints: ["{}"] }}
routes:
  - {{ name: staff, match: {{ prefix: /staff }}, upstream: u, auth: {{ providers: [corp, partner] }}, authorize: {{ groups: [staff] }} }}
  - {{ name: api, match: {{ prefix: / }}, upstream: u, auth: {{ providers: [corp, partner] }} }}
"#,
        up.addr
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    let sub = claims(json!({ "sub": "alice-sub" }));
    let corp = hs256(SECRET, &sub);
    let partner = hs256(PARTNER, &sub);

    let r = bearer(addr, "/staff", &partner).await;
    assert_eq!(r.status, 403, "a partner token is not alice: {}", r.text());
    let r = bearer(addr, "/open", &partner).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(up.seen()[0].headers.get("x-consumer").is_none());

    let r = bearer(addr, "/staff", &corp).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.seen()[1].headers.get("x-consumer").unwrap(), "alice");
    assert_eq!(up.count(), 2);
}
