//! The limiter against a real `redis-server` (started per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/support/redis.rs"]
mod server;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::config::units::Dur;

fn redis_config(urls: Vec<String>, cluster: bool) -> RedisConfig {
    RedisConfig {
        urls,
        cluster,
        timeout: Dur(Duration::from_secs(2)),
        key_prefix: "t".into(),
        ca: None,
        client_cert: None,
    }
}

fn store(urls: Vec<String>, cluster: bool) -> Arc<RedisStore> {
    RedisStore::new(&redis_config(urls, cluster), "portico.yaml").unwrap()
}

fn limiter(store: &Arc<RedisStore>, id: &str, json: &str) -> (RedisLimiter, Gcra) {
    let cfg: RateLimitConfig = serde_json::from_str(json).unwrap();
    let rate = cfg.rate.unwrap();
    let gcra = Gcra::new(rate, cfg.burst.unwrap_or(rate.count));
    (RedisLimiter::new(id, &cfg, gcra, store.clone()), gcra)
}

/// Connects the way `supervise` does (bounded).
async fn connected(store: &Arc<RedisStore>) {
    let mut upkeep = Upkeep::new(store.clone());
    for _ in 0..200 {
        upkeep.run().await;
        if store.available() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("store did not connect");
}

/// Runs one reconcile sync of every reconcile limiter of `store`.
async fn sync(store: &Arc<RedisStore>) {
    for inner in store.reconcilers() {
        if let Some(r) = &inner.reconcile {
            r.sync(&inner).await;
        }
    }
}

#[test]
fn config_errors_name_the_key_and_value() {
    let cfg = |urls: &[&str], cluster: bool, prefix: &str| RedisConfig {
        urls: urls.iter().map(|s| (*s).to_owned()).collect(),
        cluster,
        timeout: Dur(Duration::from_millis(100)),
        key_prefix: prefix.into(),
        ca: None,
        client_cert: None,
    };
    let err = |c: RedisConfig| RedisStore::new(&c, "portico.yaml").err().unwrap();
    assert!(err(cfg(&[], false, "p")).starts_with("urls:"));
    assert!(err(cfg(&["redis://a:1", "redis://b:1"], false, "p")).contains("cluster: true"));
    let insecure = err(cfg(&["rediss://user:secret@h:6380/0#insecure"], false, "p"));
    assert!(
        insecure.starts_with("urls:") && insecure.contains("rediss://***@h:6380/0#insecure"),
        "{insecure}"
    );
    assert!(!insecure.contains("secret"));
    let mixed = err(cfg(&["rediss://a:1", "redis://b:1"], true, "p"));
    assert!(
        mixed.starts_with("urls:") && mixed.contains("mixes"),
        "{mixed}"
    );
    assert!(err(cfg(&["http://h"], false, "p")).contains("not a Redis URL"));
    assert!(err(cfg(&["redis://h:1"], false, "a{b}")).starts_with("key_prefix:"));
    let mut zero = cfg(&["redis://h:1"], false, "p");
    zero.timeout = Dur(Duration::ZERO);
    assert!(err(zero).starts_with("timeout:"));
    let ok = |c: RedisConfig| RedisStore::new(&c, "portico.yaml").is_ok();
    assert!(ok(cfg(&["redis://h:1", "redis://i:1"], true, "p")));
    assert!(ok(cfg(&["redis://:pw@h:1/2"], false, "p")));
    // TLS with the system roots.
    assert!(ok(cfg(&["rediss://:pw@h:6380/2"], false, "p")));
    assert!(ok(cfg(&["rediss://h:1", "rediss://i:1"], true, "p")));
}

#[test]
fn tls_config_errors_name_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portico.yaml").display().to_string();
    let files = server::TlsFiles::new(dir.path(), false);
    let other = tempfile::tempdir().unwrap();
    let other = server::TlsFiles::new(other.path(), false);
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    write("empty.pem", "no PEM here\n");
    let tls = |ca: Option<&str>, client: Option<(&Path, &Path)>| RedisConfig {
        ca: ca.map(str::to_owned),
        client_cert: client.map(|(cert, key)| crate::config::CertificateConfig {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        }),
        ..redis_config(vec!["rediss://127.0.0.1:6380".into()], false)
    };
    let err = |c: RedisConfig| RedisStore::new(&c, &file).err().unwrap();

    // `ca` and `client_cert` need a TLS URL.
    let mut plain = tls(Some("ca.pem"), None);
    plain.urls = vec!["redis://:secret@127.0.0.1:6379".into()];
    let e = err(plain.clone());
    assert!(
        e.starts_with("ca: `ca.pem`") && e.contains("`redis://***@127.0.0.1:6379`"),
        "{e}"
    );
    plain.ca = None;
    plain.client_cert = tls(None, Some((&files.client_cert, &files.client_key))).client_cert;
    assert!(err(plain).starts_with("client_cert:"));

    // Files that cannot be read or hold no usable certificate; relative
    // paths name the file resolved against the config file's folder.
    let missing = dir.path().join("missing.pem").display().to_string();
    let e = err(tls(Some("missing.pem"), None));
    assert!(e.starts_with("ca: ") && e.contains(&missing), "{e}");
    let e = err(tls(Some("empty.pem"), None));
    assert!(e.starts_with("ca: ") && e.contains("empty.pem"), "{e}");
    let e = err(tls(Some("bad.pem"), None));
    assert!(
        e.starts_with("ca: ") && e.contains("bad.pem") && e.contains("trust anchor"),
        "{e}"
    );
    let e = err(tls(
        Some("ca.pem"),
        Some((&files.client_cert, &other.client_key)),
    ));
    assert!(
        e.starts_with("client_cert: ") && e.contains("does not belong"),
        "{e}"
    );
    let e = err(tls(
        Some("ca.pem"),
        Some((&files.client_cert, Path::new("nokey.pem"))),
    ));
    assert!(
        e.starts_with("client_cert: ") && e.contains("nokey.pem"),
        "{e}"
    );

    // A relative `ca` is read from the config file's folder.
    assert!(RedisStore::new(&tls(Some("ca.pem"), None), &file).is_ok());
    let mut cluster = tls(
        Some("ca.pem"),
        Some((&files.client_cert, &files.client_key)),
    );
    cluster.cluster = true;
    cluster.urls.push("rediss://127.0.0.1:6381".into());
    assert!(RedisStore::new(&cluster, &file).is_ok());
}

/// A store for the TLS node `redis` verifying it with the CA file `ca`,
/// presenting the node's client certificate when `client_cert`.
fn tls_store(redis: &server::RedisServer, ca: Option<&Path>, client_cert: bool) -> Arc<RedisStore> {
    let files = redis.tls();
    let cfg = RedisConfig {
        ca: ca.map(|p| p.display().to_string()),
        client_cert: client_cert.then(|| crate::config::CertificateConfig {
            cert: files.client_cert.display().to_string(),
            key: files.client_key.display().to_string(),
        }),
        ..redis_config(vec![redis.url()], false)
    };
    RedisStore::new(&cfg, "portico.yaml").unwrap()
}

#[tokio::test]
async fn tls_verifies_the_server_with_ca() {
    let redis = server::RedisServer::start_tls(false);
    let s = tls_store(&redis, Some(&redis.tls().ca), false);
    connected(&s).await;
    let (l, _) = limiter(&s, "tls", r#"{"rate":"1/h"}"#);
    assert!(l.decide("k", 1).await.unwrap().allowed);
    assert!(!l.decide("k", 1).await.unwrap().allowed);
    assert_eq!(l.errors(), 0);

    // Another CA, or the system roots: the server is not trusted.
    let dir = tempfile::tempdir().unwrap();
    let unrelated = dir.path().join("unrelated.pem");
    std::fs::write(&unrelated, server::unrelated_ca_pem()).unwrap();
    for s in [
        tls_store(&redis, Some(&unrelated), false),
        tls_store(&redis, None, false),
    ] {
        let e = s.connect().await.unwrap_err();
        assert!(
            e.0.contains("cannot connect") && e.0.contains("certificate"),
            "{e}"
        );
        let (l, _) = limiter(&s, "tls", r#"{"rate":"1/h"}"#);
        assert!(l.decide("k", 1).await.is_err());
    }
}

#[tokio::test]
async fn tls_presents_the_client_certificate() {
    let redis = server::RedisServer::start_tls(true);
    let ca = redis.tls().ca.clone();
    let s = tls_store(&redis, Some(&ca), true);
    connected(&s).await;
    let (l, _) = limiter(&s, "mtls", r#"{"rate":"1/h"}"#);
    assert!(l.decide("k", 1).await.unwrap().allowed);
    // Without one, the server refuses the connection.
    let s = tls_store(&redis, Some(&ca), false);
    assert!(s.connect().await.is_err());
}

#[tokio::test]
async fn a_store_never_connected_fails() {
    let s = store(vec!["redis://127.0.0.1:1".into()], false);
    let (l, _) = limiter(&s, "a", r#"{"rate":"10/s"}"#);
    let err = l.decide("k", 1).await.unwrap_err();
    assert!(err.0.contains("not connected"), "{err}");
    assert_eq!(l.errors(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_is_exact_under_concurrency() {
    let redis = server::RedisServer::start();
    let s = store(vec![redis.url()], false);
    connected(&s).await;
    let (l, _) = limiter(&s, "conc", r#"{"rate":"40/h"}"#);
    let l = Arc::new(l);
    let allowed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (l, allowed) = (l.clone(), allowed.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    if l.decide("abc", 1).await.unwrap().allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 40);
}

#[tokio::test]
async fn the_script_computes_what_gcra_computes() {
    let redis = server::RedisServer::start();
    let s = store(vec![redis.url()], false);
    connected(&s).await;
    let (l, gcra) = limiter(&s, "same", r#"{"rate":"3/h","burst":4}"#);
    // Within the same few milliseconds, the same answers (times to the
    // clock difference).
    let mut tat = None;
    let now = 1_000_000_000_000;
    for cost in [1, 2, 1, 1, 3] {
        let (t, want) = gcra.decide(tat, now, cost);
        tat = Some(t);
        let got = l.decide("k", cost).await.unwrap();
        assert_eq!(got.allowed, want.allowed, "cost {cost}");
        assert_eq!(got.remaining, want.remaining, "cost {cost}");
        let close = |a: Duration, b: Duration| a.abs_diff(b) < Duration::from_secs(2);
        assert!(close(got.reset, want.reset), "{got:?} vs {want:?}");
        assert!(
            close(got.retry_after, want.retry_after),
            "{got:?} vs {want:?}"
        );
    }
    // The key holds its TAT in ns since the epoch and expires with it.
    let key = "t:same:{k}";
    let reset = tat.unwrap() - now;
    let pttl: i64 = redis.command(&["PTTL", key])[1..].trim().parse().unwrap();
    let want_ms = i64::try_from(reset / 1_000_000).unwrap();
    assert!((pttl - want_ms).abs() < 2_000, "pttl {pttl} vs {want_ms}");
    let stored = redis.command(&["GET", key]);
    let value: u128 = stored.lines().nth(1).unwrap().parse().unwrap();
    let epoch_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let ahead = value - epoch_ns;
    assert!(
        ahead.abs_diff(u128::from(reset)) < 2_000_000_000,
        "{value} vs now {epoch_ns}"
    );
}

#[tokio::test]
async fn a_flushed_script_cache_falls_back_to_eval() {
    let redis = server::RedisServer::start();
    let s = store(vec![redis.url()], false);
    connected(&s).await;
    let (l, _) = limiter(&s, "flush", r#"{"rate":"2/h"}"#);
    assert!(l.decide("k", 1).await.unwrap().allowed);
    assert!(redis.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    assert!(l.decide("k", 1).await.unwrap().allowed);
    assert!(!l.decide("k", 1).await.unwrap().allowed);
    assert_eq!(l.errors(), 0);
}

#[tokio::test]
async fn an_outage_fails_then_recovers_by_itself() {
    let mut redis = server::RedisServer::start();
    let s = store(vec![redis.url()], false);
    connected(&s).await;
    let (l, _) = limiter(&s, "out", r#"{"rate":"100/h"}"#);
    assert!(l.decide("k", 1).await.unwrap().allowed);
    redis.stop();
    assert!(l.decide("k", 1).await.is_err());
    assert!(!s.available());
    redis.restart();
    connected(&s).await;
    let d = l.decide("k", 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 99, "the restarted server lost its data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_shares_counts_through_syncs() {
    let redis = server::RedisServer::start();
    // Two instances: two stores, the same limit id.
    let (a, b) = (
        store(vec![redis.url()], false),
        store(vec![redis.url()], false),
    );
    connected(&a).await;
    connected(&b).await;
    let cfg = r#"{"rate":"20/h","mode":"reconcile","sync_interval":"50ms"}"#;
    let (la, _) = limiter(&a, "rec", cfg);
    let (lb, _) = limiter(&b, "rec", cfg);
    // The first request on `a` is exact, the rest local.
    let mut allowed = 0;
    for _ in 0..10 {
        allowed += u32::from(la.decide("k", 1).await.unwrap().allowed);
    }
    sync(&a).await;
    // `b`'s first request is exact and sees `a`'s 10.
    let first = lb.decide("k", 1).await.unwrap();
    assert_eq!(first.remaining, 9);
    allowed += 1;
    for _ in 0..20 {
        allowed += u32::from(lb.decide("k", 1).await.unwrap().allowed);
    }
    assert_eq!(allowed, 20, "b knew a's count from its first request");
    sync(&b).await;
    // `a` did not see the key for two sync intervals: its state is stale,
    // and its next request goes to Redis, which has `b`'s count.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        !la.decide("k", 1).await.unwrap().allowed,
        "a learned b's count"
    );
    // Redis holds the whole count: an exact decision finds the key empty.
    let (exact, _) = limiter(&a, "rec", r#"{"rate":"20/h"}"#);
    assert!(!exact.decide("k", 1).await.unwrap().allowed);
}

#[tokio::test]
async fn reconcile_without_redis_limits_locally_or_fails_closed() {
    let s = store(vec!["redis://127.0.0.1:1".into()], false);
    let (open, _) = limiter(&s, "o", r#"{"rate":"2/h","mode":"reconcile"}"#);
    assert!(open.decide("k", 1).await.unwrap().allowed);
    assert!(open.decide("k", 1).await.unwrap().allowed);
    assert!(
        !open.decide("k", 1).await.unwrap().allowed,
        "still limited locally"
    );
    let (closed, _) = limiter(
        &s,
        "c",
        r#"{"rate":"2/h","mode":"reconcile","on_store_error":"closed"}"#,
    );
    assert!(closed.decide("k", 1).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_exact_across_slots() {
    let cluster = server::RedisCluster::start();
    let s = store(cluster.urls(), true);
    connected(&s).await;
    let (l, _) = limiter(&s, "cl", r#"{"rate":"5/h"}"#);
    let l = Arc::new(l);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (l, k) = (l.clone(), format!("{i:032x}"));
            tokio::spawn(async move {
                let mut n = 0;
                for _ in 0..8 {
                    n += u32::from(l.decide(&k, 1).await.unwrap().allowed);
                }
                n
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 5);
    }
    // The keys live on more than one master.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.command(&["DBSIZE"]).trim() != ":0")
        .count();
    assert!(holding > 1, "keys on {holding} node(s)");
}
