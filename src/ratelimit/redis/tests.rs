//! The limiter against a real `redis-server` (started per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/support/redis.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::config::units::Dur;

fn store(urls: Vec<String>, cluster: bool) -> Arc<RedisStore> {
    RedisStore::new(&RedisConfig {
        urls,
        cluster,
        timeout: Dur(Duration::from_secs(2)),
        key_prefix: "t".into(),
    })
    .unwrap()
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
    };
    let err = |c: RedisConfig| RedisStore::new(&c).err().unwrap();
    assert!(err(cfg(&[], false, "p")).starts_with("urls:"));
    assert!(err(cfg(&["redis://a:1", "redis://b:1"], false, "p")).contains("cluster: true"));
    let tls = err(cfg(&["rediss://user:secret@h:6380/0"], false, "p"));
    assert!(
        tls.contains("TLS") && tls.contains("rediss://***@h:6380/0"),
        "{tls}"
    );
    assert!(!tls.contains("secret"));
    assert!(err(cfg(&["http://h"], false, "p")).contains("not a Redis URL"));
    assert!(err(cfg(&["redis://h:1"], false, "a{b}")).starts_with("key_prefix:"));
    let mut zero = cfg(&["redis://h:1"], false, "p");
    zero.timeout = Dur(Duration::ZERO);
    assert!(err(zero).starts_with("timeout:"));
    assert!(RedisStore::new(&cfg(&["redis://h:1", "redis://i:1"], true, "p")).is_ok());
    assert!(RedisStore::new(&cfg(&["redis://:pw@h:1/2"], false, "p")).is_ok());
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
