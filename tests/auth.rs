//! Authentication and authorization against the real binary and a real
//! upstream: API keys, Basic, the route modes, identity headers,
//! `authorize`, `ip_rules`, the access log, the metric and `portico check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::upstream::{self, Upstream};
use support::{Gateway, Reply, send};

const ALICE_KEY: &str = "alice-key-0123456789";
const BOB_KEY: &str = "bob-key-0123456789";

fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn argon2_hash(pw: &str) -> String {
    use argon2::PasswordHasher as _;
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    a.hash_password_with_salt(pw.as_bytes(), b"0123456789abcdef")
        .unwrap()
        .to_string()
}

fn config(up: SocketAddr) -> String {
    let alice_hash = bcrypt::hash("alice-pw", 4).unwrap();
    let bob_hash = argon2_hash("bob-pw");
    let bob_digest = sha256_hex(BOB_KEY);
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
forwarding: {{ trusted_proxies: ["127.0.0.1/32"] }}
consumers:
  - name: alice
    api_keys: ["${{ALICE_KEY}}"]
    groups: [admins]
    metadata: {{ tier: gold }}
    basic: [{{ username: alice, password_hash: "{alice_hash}" }}]
  - name: bob
    api_keys: [{{ sha256: "{bob_digest}" }}]
    groups: [staff]
    basic: [{{ username: bob, password_hash: "{bob_hash}" }}]
auth_providers:
  keys: {{ api_key: {{ from: [{{ header: x-api-key }}, {{ query: api_key }}] }} }}
  basic: {{ basic: {{ realm: shop }} }}
upstreams:
  app: {{ endpoints: ["{up}"] }}
routes:
  - name: keys
    match: {{ prefix: /keys }}
    upstream: app
    auth: {{ providers: [keys], claims_to_headers: {{ x-tier: consumer.tier }} }}
  - {{ name: basic, match: {{ prefix: /basic }}, upstream: app, auth: {{ providers: [basic] }} }}
  - {{ name: any, match: {{ prefix: /any }}, upstream: app, auth: {{ providers: [keys, basic] }} }}
  - {{ name: all, match: {{ prefix: /all }}, upstream: app, auth: {{ providers: [keys, basic], mode: all }} }}
  - {{ name: anon, match: {{ prefix: /open }}, upstream: app, auth: {{ providers: [keys], anonymous: true }} }}
  - name: keep
    match: {{ prefix: /keep }}
    upstream: app
    auth: {{ providers: [keys], keep_credentials: true, consumer_header: x-who }}
  - name: admins
    match: {{ prefix: /admins }}
    upstream: app
    auth: {{ providers: [keys] }}
    authorize: {{ groups: [admins] }}
  - name: only-bob
    match: {{ prefix: /only-bob }}
    upstream: app
    auth: {{ providers: [keys], anonymous: true }}
    authorize: {{ consumers: [bob] }}
  - name: ip
    match: {{ prefix: /ip }}
    upstream: app
    ip_rules: {{ allow: ["10.0.0.0/8"], deny: ["10.9.0.0/16"] }}
"#
    )
}

async fn start() -> (Gateway, Upstream, SocketAddr) {
    let up = upstream::named("app").await;
    let mut gw = Gateway::start_with_env(&config(up.addr), &[("ALICE_KEY", ALICE_KEY)]);
    let addr = gw.addr("main");
    (gw, up, addr)
}

fn request(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(path).header("host", "shop.example");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn basic(user: &str, pw: &str) -> String {
    let raw = format!("{user}:{pw}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn challenges(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Asserts a 401 problem answer with these challenges; the upstream is not called.
fn assert_401(r: &Reply, want: &[&str]) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["type"], "urn:portico:problem:unauthorized");
    assert_eq!(challenges(r), want);
}

#[tokio::test]
async fn api_keys_from_header_and_query_are_removed_before_the_upstream() {
    let (_gw, up, addr) = start().await;
    let r = send(addr, request("/keys/a?x=1", &[("x-api-key", ALICE_KEY)])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The hashed key, from the query, between other parameters.
    let r = send(
        addr,
        request(&format!("/keys/b?a=%2F&api_key={BOB_KEY}&b=2"), &[]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].headers.get("x-api-key").is_none());
    assert_eq!(seen[0].uri.to_string(), "/keys/a?x=1");
    assert_eq!(seen[0].headers["x-consumer"], "alice");
    assert_eq!(seen[0].headers["x-tier"], "gold");
    assert_eq!(seen[1].uri.to_string(), "/keys/b?a=%2F&b=2");
    assert_eq!(seen[1].headers["x-consumer"], "bob");
    assert!(seen[1].headers.get("x-tier").is_none());

    let r = send(addr, request("/keys/c", &[("x-api-key", "wrong")])).await;
    assert_401(&r, &["ApiKey realm=\"portico\", error=\"invalid_key\""]);
    assert_eq!(r.json()["detail"], "invalid API key");
    let r = send(addr, request("/keys/c", &[])).await;
    assert_401(&r, &["ApiKey realm=\"portico\""]);
    // The same key twice is not a credential (RFC 6750 §2).
    let r = send(
        addr,
        request(
            "/keys/c",
            &[("x-api-key", ALICE_KEY), ("x-api-key", ALICE_KEY)],
        ),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn basic_with_bcrypt_and_argon2_hashes() {
    let (_gw, up, addr) = start().await;
    let challenge = "Basic realm=\"shop\", charset=\"UTF-8\"";
    for (user, pw) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("alice", "alice-pw"),
    ] {
        let r = send(
            addr,
            request("/basic", &[("authorization", &basic(user, pw))]),
        )
        .await;
        assert_eq!(r.status, 200, "{user}: {}", r.text());
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.headers["x-consumer"], user);
        assert!(seen.headers.get("authorization").is_none());
    }
    let r = send(
        addr,
        request("/basic", &[("authorization", &basic("alice", "bob-pw"))]),
    )
    .await;
    assert_401(&r, &[challenge]);
    let r = send(
        addr,
        request("/basic", &[("authorization", &basic("carol", "alice-pw"))]),
    )
    .await;
    assert_401(&r, &[challenge]);
    // The scheme is case-insensitive; a malformed credential is refused.
    let lower = basic("bob", "bob-pw").replacen("Basic", "bAsIc", 1);
    let r = send(addr, request("/basic", &[("authorization", &lower)])).await;
    assert_eq!(r.status, 200);
    let r = send(addr, request("/basic", &[("authorization", "Basic !!!")])).await;
    assert_401(&r, &[challenge]);
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn modes_any_all_and_anonymous() {
    let (_gw, up, addr) = start().await;
    let alice_basic = basic("alice", "alice-pw");
    let key_challenge = "ApiKey realm=\"portico\"";
    let basic_challenge = "Basic realm=\"shop\", charset=\"UTF-8\"";

    // any: either credential; the first that accepts wins.
    let r = send(addr, request("/any", &[("authorization", &alice_basic)])).await;
    assert_eq!(r.status, 200);
    let r = send(addr, request("/any", &[("x-api-key", BOB_KEY)])).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().pop().unwrap().headers["x-consumer"], "bob");
    let r = send(addr, request("/any", &[])).await;
    assert_401(&r, &[key_challenge, basic_challenge]);

    // all: both, of the same consumer.
    let r = send(
        addr,
        request(
            "/all",
            &[("x-api-key", ALICE_KEY), ("authorization", &alice_basic)],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen().pop().unwrap();
    assert!(seen.headers.get("x-api-key").is_none());
    assert!(seen.headers.get("authorization").is_none());
    let r = send(
        addr,
        request(
            "/all",
            &[("x-api-key", BOB_KEY), ("authorization", &alice_basic)],
        ),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(addr, request("/all", &[("x-api-key", ALICE_KEY)])).await;
    assert_eq!(r.status, 401);

    // anonymous: no credential passes unidentified, a bad one does not; a
    // client-sent identity header never reaches the upstream.
    let r = send(addr, request("/open", &[("x-consumer", "alice")])).await;
    assert_eq!(r.status, 200);
    assert!(up.seen().pop().unwrap().headers.get("x-consumer").is_none());
    let r = send(addr, request("/open", &[("x-api-key", "wrong")])).await;
    assert_eq!(r.status, 401);
    let r = send(
        addr,
        request("/open", &[("x-api-key", BOB_KEY), ("x-consumer", "alice")]),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.seen().pop().unwrap();
    let consumers: Vec<_> = seen.headers.get_all("x-consumer").iter().collect();
    assert_eq!(consumers, ["bob"]);
    assert_eq!(up.count(), 5);
}

#[tokio::test]
async fn keep_credentials_and_a_custom_consumer_header() {
    let (_gw, up, addr) = start().await;
    let r = send(
        addr,
        request(
            "/keep?api_key=x",
            &[("x-api-key", ALICE_KEY), ("x-who", "mallory")],
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.headers["x-api-key"], ALICE_KEY);
    assert_eq!(seen.uri.to_string(), "/keep?api_key=x");
    assert_eq!(seen.headers["x-who"], "alice");
    assert!(seen.headers.get("x-consumer").is_none());
}

#[tokio::test]
async fn authorize_answers_401_or_403() {
    let (_gw, up, addr) = start().await;
    let cases = [
        ("/admins", None, 401),
        ("/admins", Some(ALICE_KEY), 200),
        ("/admins", Some(BOB_KEY), 403),
        ("/only-bob", None, 401),
        ("/only-bob", Some(ALICE_KEY), 403),
        ("/only-bob", Some(BOB_KEY), 200),
    ];
    for (path, key, want) in cases {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let r = send(addr, request(path, &headers)).await;
        assert_eq!(r.status, want, "{path} {key:?}: {}", r.text());
        match want {
            401 => assert_eq!(challenges(&r), ["ApiKey realm=\"portico\""], "{path}"),
            403 => {
                assert_eq!(r.json()["type"], "urn:portico:problem:forbidden");
                assert!(r.header("www-authenticate").is_none());
            }
            _ => {}
        }
    }
    assert_eq!(up.count(), 2);
    let r = send(addr, request("/admins", &[("x-api-key", BOB_KEY)])).await;
    assert_eq!(
        r.json()["detail"],
        "membership of one of the route's groups is required"
    );
}

#[tokio::test]
async fn ip_rules_use_the_client_address_through_trusted_proxies() {
    let (_gw, up, addr) = start().await;
    let xff = |ip: &'static str| request("/ip", &[("x-forwarded-for", ip)]);
    assert_eq!(send(addr, xff("10.1.2.3")).await.status, 200);
    let r = send(addr, xff("10.9.1.1")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["type"], "urn:portico:problem:forbidden");
    assert_eq!(send(addr, xff("192.0.2.1")).await.status, 403);
    // Without the header the client is 127.0.0.1, outside `allow`.
    assert_eq!(send(addr, request("/ip", &[])).await.status, 403);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn access_log_names_the_consumer_and_metrics_count_outcomes() {
    let (mut gw, _up, addr) = start().await;
    let r = send(addr, request("/keys/logged", &[("x-api-key", BOB_KEY)])).await;
    assert_eq!(r.status, 200);
    let r = send(addr, request("/keys/logged", &[("x-api-key", "nope")])).await;
    assert_eq!(r.status, 401);
    let r = send(addr, request("/open/logged", &[])).await;
    assert_eq!(r.status, 200);
    // Keys sent in the query, accepted or not, never reach the log.
    let r = send(
        addr,
        request(&format!("/keys/q?a=1&api_key={ALICE_KEY}"), &[]),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(addr, request("/keys/q?api_key=wrong-key-123", &[])).await;
    assert_eq!(r.status, 401);

    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let found = gw.stdout_lines().into_iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            (v["path"] == "/keys/logged" && v["status"] == 200).then_some(v)
        });
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line:\n{:?}",
            gw.stdout_lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["consumer"], "bob");
    let logged = |path: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if gw.stdout_lines().iter().any(|l| l.contains(path)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(
        logged("\"/keys/q?a=1&api_key=REDACTED\""),
        "{:?}",
        gw.stdout_lines()
    );
    assert!(
        logged("\"/keys/q?api_key=REDACTED\""),
        "{:?}",
        gw.stdout_lines()
    );
    let out = gw.stdout_lines().join("\n");
    assert!(
        !out.contains(ALICE_KEY) && !out.contains("wrong-key-123"),
        "{out}"
    );

    let admin = gw.addr("admin");
    let metrics = support::get_path(admin, "/metrics").await.text();
    let value = |route: &str, result: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("portico_auth_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("result=\"{result}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    };
    assert_eq!(value("keys", "accepted"), 2.0, "{metrics}");
    assert_eq!(value("keys", "unauthorized"), 2.0, "{metrics}");
    assert_eq!(value("anon", "anonymous"), 1.0, "{metrics}");
}

#[test]
fn check_refuses_a_plain_password_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.yaml");
    std::fs::write(
        &path,
        "listeners: [{ name: main, address: \"127.0.0.1:0\" }]\nconsumers:\n  - name: alice\n    basic:\n      - { username: alice, password_hash: hunter2 }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:5:9: consumer `alice`: user `alice`:", path.display());
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("plain passwords are not accepted"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn cookie_headers_with_non_ascii_bytes_are_read_and_stripped() {
    let up = upstream::named("app").await;
    let yaml = format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
consumers:
  - {{ name: alice, api_keys: ["${{ALICE_KEY}}"] }}
auth_providers:
  ck: {{ api_key: {{ from: [{{ cookie: session }}] }} }}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: open, match: {{ prefix: /open }}, upstream: app, auth: {{ providers: [ck], anonymous: true }} }}
  - {{ name: c, match: {{ prefix: / }}, upstream: app, auth: {{ providers: [ck] }} }}
"#,
        up.addr
    );
    let mut gw = Gateway::start_with_env(&yaml, &[("ALICE_KEY", ALICE_KEY)]);
    let addr = gw.addr("main");
    let with_cookies = |path: &str, cookies: &[&[u8]]| {
        let mut b = Request::get(path).header("host", "shop.example");
        for c in cookies {
            b = b.header("cookie", http::HeaderValue::from_bytes(c).unwrap());
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let alice = format!("session={ALICE_KEY}");

    // A second, non-ASCII cookie header carrying the credential again.
    let r = send(
        addr,
        with_cookies("/c", &[alice.as_bytes(), b"session=forged; t=\xff"]),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // Alone, on a route that lets requests without a credential through.
    let r = send(addr, with_cookies("/open", &[b"t=\xff; session=forged"])).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(up.count(), 0);

    // Read from such a header, and stripped from it, the rest kept.
    let mut cookie = alice.into_bytes();
    cookie.extend_from_slice(b"; t=\xff");
    let r = send(addr, with_cookies("/c", &[&cookie])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.headers["x-consumer"], "alice");
    let left: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(left, [&b"t=\xff"[..]]);
}
