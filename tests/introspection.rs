//! OAuth2 token introspection (RFC 7662) against the real binary: a test
//! authorization server that checks the gateway's client credentials (HTTP
//! Basic), knows a few tokens and counts the calls it gets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::json;
use support::upstream::{self, Seen, Upstream};
use support::{Gateway, Reply, send};

const CLIENT_ID: &str = "portico gw";
const CLIENT_SECRET: &str = "s3cr:t/+";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The token of an introspection call (`token=...` in the form).
fn token_of(seen: &Seen) -> String {
    let body = String::from_utf8_lossy(&seen.body);
    body.split('&')
        .find_map(|p| p.strip_prefix("token="))
        .unwrap_or_default()
        .replace('+', " ")
}

/// The authorization server. Tokens: `good` (active, `exp` in an hour),
/// `short.<exp>` (active until `<exp>`, inactive after), `no-scope` (active,
/// without `orders.read`), anything else inactive.
async fn authorization_server() -> Upstream {
    // RFC 6749 §2.3.1: each part form-urlencoded, then Basic.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("portico+gw:s3cr%3At%2F%2B")
    );
    upstream::start(move |seen| {
        let json_answer = |status: u16, v: serde_json::Value| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())))
                .unwrap()
        };
        let authorized = seen
            .headers
            .get("authorization")
            .is_some_and(|v| v == expected.as_str());
        let form = seen
            .headers
            .get("content-type")
            .is_some_and(|v| v == "application/x-www-form-urlencoded");
        let hinted = String::from_utf8_lossy(&seen.body).contains("token_type_hint=access_token");
        if seen.method != http::Method::POST || !authorized || !form || !hinted {
            return json_answer(401, json!({ "error": "invalid_client" }));
        }
        let token = token_of(seen);
        let answer = if token == "good" {
            json!({
                "active": true, "sub": "user-1", "client_id": "acme-app",
                "scope": "orders.read profile", "exp": now() + 3600,
            })
        } else if let Some(exp) = token.strip_prefix("short.") {
            let exp: u64 = exp.parse().unwrap();
            if exp > now() {
                json!({ "active": true, "sub": "user-2", "scope": "orders.read", "exp": exp })
            } else {
                json!({ "active": false })
            }
        } else if token == "no-scope" {
            json!({ "active": true, "sub": "user-3", "scope": "profile" })
        } else {
            json!({ "active": false })
        };
        json_answer(200, answer)
    })
    .await
}

/// Calls the authorization server got for `token`.
fn calls(server: &Upstream, token: &str) -> usize {
    server
        .seen()
        .iter()
        .filter(|s| token_of(s) == token)
        .count()
}

fn gateway(endpoint: &str, up: &Upstream, secret: &str) -> (Gateway, SocketAddr) {
    let yaml = format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
consumers:
  - {{ name: acme, subjects: [acme-app] }}
auth_providers:
  idp:
    introspection:
      endpoint: "{endpoint}"
      client_id: "{CLIENT_ID}"
      client_secret: "{secret}"
      cache_ttl: 5m
      negative_cache_ttl: 1m
      timeout: 1s
      consumer_claim: client_id
upstreams:
  u: {{ endpoints: ["{}"] }}
routes:
  - name: api
    match: {{ prefix: / }}
    upstream: u
    auth: {{ providers: [idp], claims_to_headers: {{ x-user: sub }} }}
    authorize: {{ scopes: [orders.read] }}
"#,
        up.addr
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    (gw, addr)
}

async fn app() -> Upstream {
    upstream::start(|_| Response::new(Full::new(Bytes::from_static(b"ok")))).await
}

async fn bearer(addr: SocketAddr, token: &str) -> Reply {
    let req = Request::get("/orders")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await
}

#[tokio::test]
async fn active_tokens_pass_and_answers_are_cached() {
    let idp = authorization_server().await;
    let up = app().await;
    let (_gw, addr) = gateway(
        &format!("http://{}/introspect", idp.addr),
        &up,
        CLIENT_SECRET,
    );
    for _ in 0..3 {
        let r = bearer(addr, "good").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // One call for three requests.
    assert_eq!(calls(&idp, "good"), 1);
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].headers.get("x-user").unwrap(), "user-1");
    assert_eq!(seen[0].headers.get("x-consumer").unwrap(), "acme");
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(idp.seen()[0].uri.path(), "/introspect");
}

#[tokio::test]
async fn inactive_tokens_are_401_and_cached_briefly() {
    let idp = authorization_server().await;
    let up = app().await;
    let (_gw, addr) = gateway(
        &format!("http://{}/introspect", idp.addr),
        &up,
        CLIENT_SECRET,
    );
    for _ in 0..2 {
        let r = bearer(addr, "revoked").await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                r#"Bearer realm="portico", error="invalid_token", error_description="token not active""#
            )
        );
    }
    assert_eq!(calls(&idp, "revoked"), 1);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_token_expiring_before_the_cache_ttl_is_asked_again() {
    let idp = authorization_server().await;
    let up = app().await;
    let (_gw, addr) = gateway(
        &format!("http://{}/introspect", idp.addr),
        &up,
        CLIENT_SECRET,
    );
    let token = format!("short.{}", now() + 2);
    assert_eq!(bearer(addr, &token).await.status, 200);
    assert_eq!(calls(&idp, &token), 1);
    // Past its `exp` the cached answer is gone (cache_ttl is 5 minutes).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(bearer(addr, &token).await.status, 401);
    assert_eq!(calls(&idp, &token), 2);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_503_and_nothing_is_cached() {
    let idp = authorization_server().await;
    let up = app().await;
    let (_gw, addr) = gateway(
        &format!("http://{}/introspect", idp.addr),
        &up,
        CLIENT_SECRET,
    );
    assert_eq!(bearer(addr, "good").await.status, 200);
    idp.stop();
    // A cached answer still serves; a token never seen cannot be checked.
    assert_eq!(bearer(addr, "good").await.status, 200);
    let r = bearer(addr, "short.9999999999").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/problem+json"),
        "{:?}",
        r.headers
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn refused_client_credentials_are_503_not_401() {
    let idp = authorization_server().await;
    let up = app().await;
    let (_gw, addr) = gateway(&format!("http://{}/introspect", idp.addr), &up, "wrong");
    for _ in 0..2 {
        assert_eq!(bearer(addr, "good").await.status, 503);
    }
    // A failed call is not cached.
    assert_eq!(calls(&idp, "good"), 2);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn missing_scope_is_403() {
    let idp = authorization_server().await;
    let up = app().await;
    let (_gw, addr) = gateway(
        &format!("http://{}/introspect", idp.addr),
        &up,
        CLIENT_SECRET,
    );
    let r = bearer(addr, "no-scope").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(up.count(), 0);
}
