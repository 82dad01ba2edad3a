//! Shared rate limits in Redis, end to end: real `portico` processes in
//! front of a real upstream, sharing a real `redis-server` (or a Redis
//! Cluster of three masters).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::redis::{RedisCluster, RedisServer, unrelated_ca_pem};
use support::{Gateway, Reply, send, upstream};

/// A gateway config: the `redis` section from `urls` (and `cluster`), one
/// route `/<name>` per limit in `limits` (`name: { ...limit... }` lines of
/// `rate_limits`), all to `upstream`.
fn config(upstream: SocketAddr, urls: &[String], cluster: bool, limits: &[(&str, &str)]) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut yaml = format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
redis: {{ urls: [{urls}], cluster: {cluster}, timeout: 500ms, key_prefix: test }}
upstreams:
  app: {{ endpoints: ["{upstream}"] }}
rate_limits:
"#
    );
    for (name, limit) in limits {
        yaml.push_str(&format!(
            "  {name}: {{ key: \"header:x-key\", store: redis, {limit} }}\n"
        ));
    }
    yaml.push_str("routes:\n");
    for (name, _) in limits {
        yaml.push_str(&format!(
            "  - {{ name: {name}, match: {{ prefix: /{name} }}, upstream: app, rate_limit: [{name}] }}\n"
        ));
    }
    yaml
}

/// One GET of `/<path>` counted under `key`.
async fn hit(addr: SocketAddr, path: &str, key: &str) -> Reply {
    let req = Request::get(format!("/{path}"))
        .header("host", "localhost")
        .header("x-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await
}

/// Sends `per_gateway` requests to each of `addrs` at once (8 connections
/// per gateway); returns how many each let through.
async fn load(
    addrs: &[SocketAddr],
    path: &'static str,
    key: &'static str,
    per_gateway: u64,
) -> Vec<u64> {
    let counts: Vec<Arc<AtomicU64>> = addrs.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = Vec::new();
    for (addr, count) in addrs.iter().zip(&counts) {
        for worker in 0..8 {
            let (addr, count) = (*addr, count.clone());
            tasks.push(tokio::spawn(async move {
                for _ in (worker..per_gateway).step_by(8) {
                    let r = hit(addr, path, key).await;
                    match r.status.as_u16() {
                        200 => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        s => panic!("unexpected {s}: {}", r.text()),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

/// `portico_rate_limit_decisions_total{limit, result}` from the admin API.
async fn decisions(gw: &mut Gateway, limit: &str, result: &str) -> u64 {
    let r = support::get_path(gw.addr("admin"), "/metrics").await;
    assert_eq!(r.status, 200);
    let (l, res) = (format!("limit=\"{limit}\""), format!("result=\"{result}\""));
    r.text()
        .lines()
        .filter(|line| line.starts_with("portico_rate_limit_decisions_total{"))
        .filter(|line| line.contains(&l) && line.contains(&res))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Polls `path` with a fresh key each time until it answers `want`
/// (bounded: 15 s).
async fn until_status(addr: SocketAddr, path: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        let r = hit(addr, path, &format!("probe-{n}")).await;
        if r.status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {} (wanted {want}): {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_mode_two_gateways_allow_exactly_the_limit() {
    let redis = RedisServer::start();
    let up = upstream::named("app").await;
    let yaml = config(up.addr, &[redis.url()], false, &[("shared", "rate: 40/h")]);
    let mut a = Gateway::start(&yaml);
    let mut b = Gateway::start(&yaml);
    let addrs = [a.addr("main"), b.addr("main")];
    let counts = load(&addrs, "shared", "one-client", 100).await;
    println!("exact mode: allowed {counts:?} of 100 + 100");
    assert_eq!(counts.iter().sum::<u64>(), 40, "{counts:?}");
    for gw in [&mut a, &mut b] {
        assert_eq!(decisions(gw, "shared", "store_error").await, 0);
    }
    assert_eq!(
        decisions(&mut a, "shared", "allowed").await + decisions(&mut b, "shared", "allowed").await,
        40
    );
    // The answers carry the shared count.
    let r = hit(addrs[0], "shared", "other-client").await;
    assert_eq!(r.status, 200);
    let r = hit(addrs[1], "shared", "other-client").await;
    assert_eq!(r.status, 200);
    let state = r.header("ratelimit").unwrap_or_default().to_owned();
    assert!(state.contains("r=38"), "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_mode_two_gateways_stay_within_the_bound() {
    let redis = RedisServer::start();
    let up = upstream::named("app").await;
    let yaml = config(
        up.addr,
        &[redis.url()],
        false,
        &[("rec", "rate: 40/h, mode: reconcile, sync_interval: 100ms")],
    );
    let mut a = Gateway::start(&yaml);
    let mut b = Gateway::start(&yaml);
    let addrs = [a.addr("main"), b.addr("main")];
    // Worst case (N = 2, burst 40, rate 40/h): (N - 1) * (burst + rate * W)
    // with W = 3 * sync_interval + round trip: 40 + 0.004 → at most 80 pass.
    let bound = 40 + 40 + 1;

    // A burst: 100 requests at once on each gateway.
    let counts = load(&addrs, "rec", "burst-client", 100).await;
    let total: u64 = counts.iter().sum();
    println!(
        "reconcile, burst: allowed {counts:?} of 100 + 100, overshoot {}",
        total.saturating_sub(40)
    );
    assert!(
        (40..=bound).contains(&total),
        "{total} allowed ({counts:?})"
    );

    // Paced: 100 requests on each gateway over about 2 s (λ = 50/s per
    // gateway, 5 per sync interval).
    let mut total = 0;
    for i in 0..100 {
        for addr in addrs {
            total += u64::from(hit(addr, "rec", "paced-client").await.status == 200);
        }
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "reconcile, paced: allowed {total} of 200, overshoot {}",
        total.saturating_sub(40)
    );
    assert!((40..=bound).contains(&total), "{total} allowed");

    // Both gateways counted store errors nowhere.
    for gw in [&mut a, &mut b] {
        assert_eq!(decisions(gw, "rec", "store_error").await, 0);
    }
    // The shared state has every admitted request: an exact limit with
    // the same id would refuse (checked through the keys' TTLs: live).
    assert!(redis.command(&["DBSIZE"]).trim() != ":0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_applies_the_fail_mode_and_recovers() {
    let mut redis = RedisServer::start();
    let up = upstream::named("app").await;
    let yaml = config(
        up.addr,
        &[redis.url()],
        false,
        &[
            ("open", "rate: 3/h, on_store_error: open"),
            ("closed", "rate: 3/h, on_store_error: closed"),
        ],
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    until_status(addr, "closed", 200).await;
    for _ in 0..3 {
        assert_eq!(hit(addr, "open", "k").await.status, 200);
    }
    assert_eq!(hit(addr, "open", "k").await.status, 429);

    redis.stop();
    let before = decisions(&mut gw, "open", "store_error").await;
    for _ in 0..5 {
        assert_eq!(hit(addr, "open", "k").await.status, 200, "fails open");
    }
    assert!(decisions(&mut gw, "open", "store_error").await >= before + 5);
    let r = hit(addr, "closed", "k").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        r.json()["type"],
        "urn:portico:problem:rate-limiter-unavailable"
    );

    redis.restart();
    until_status(addr, "closed", 200).await;
    // Limiting works again, counted in the new Redis.
    for _ in 0..3 {
        assert_eq!(hit(addr, "open", "after").await.status, 200);
    }
    assert_eq!(hit(addr, "open", "after").await.status, 429);
    assert!(redis.command(&["DBSIZE"]).trim() != ":0");
    assert_eq!(gw.count_log("redis reachable again"), 1, "{}", gw.stderr());
    assert!(gw.count_log("redis unreachable") <= 2, "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_mode_limits_locally_or_fails_closed_during_an_outage() {
    let mut redis = RedisServer::start();
    let up = upstream::named("app").await;
    let yaml = config(
        up.addr,
        &[redis.url()],
        false,
        &[
            ("ropen", "rate: 3/h, mode: reconcile, on_store_error: open"),
            (
                "rclosed",
                "rate: 3/h, mode: reconcile, on_store_error: closed",
            ),
        ],
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    until_status(addr, "rclosed", 200).await;
    redis.stop();
    // `open`: this instance goes on limiting on its own.
    for _ in 0..3 {
        assert_eq!(hit(addr, "ropen", "k").await.status, 200);
    }
    assert_eq!(hit(addr, "ropen", "k").await.status, 429);
    // `closed`: refused while Redis is unreachable.
    let r = hit(addr, "rclosed", "k").await;
    assert_eq!(r.status, 503, "{}", r.text());
    redis.restart();
    // Recovery needs no traffic on the limit: the background probe finds it.
    until_status(addr, "rclosed", 200).await;
    for _ in 0..3 {
        assert_eq!(hit(addr, "rclosed", "after").await.status, 200);
    }
    assert_eq!(hit(addr, "rclosed", "after").await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_starts_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start();
    redis.stop();
    let up = upstream::named("app").await;
    let yaml = config(
        up.addr,
        &[redis.url()],
        false,
        &[("closed", "rate: 2/h, on_store_error: closed")],
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    assert_eq!(hit(addr, "closed", "k").await.status, 503);
    redis.restart();
    until_status(addr, "closed", 200).await;
    assert_eq!(hit(addr, "closed", "k").await.status, 200);
    assert_eq!(hit(addr, "closed", "k").await.status, 200);
    assert_eq!(hit(addr, "closed", "k").await.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_limits_exactly_across_slots() {
    let cluster = RedisCluster::start();
    let up = upstream::named("app").await;
    // One seed is enough: the topology is discovered.
    let yaml = config(up.addr, &cluster.urls()[..1], true, &[("cl", "rate: 5/h")]);
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            tokio::spawn(async move {
                let key = format!("client-{i}");
                let mut allowed = 0;
                for _ in 0..8 {
                    allowed += u32::from(hit(addr, "cl", &key).await.status == 200);
                }
                allowed
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 5);
    }
    assert_eq!(decisions(&mut gw, "cl", "store_error").await, 0);
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.command(&["DBSIZE"]).trim() != ":0")
        .count();
    assert!(holding > 1, "keys on {holding} node(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_survive_a_reload_and_a_restart() {
    let redis = RedisServer::start();
    let up = upstream::named("app").await;
    let yaml = config(up.addr, &[redis.url()], false, &[("kept", "rate: 6/h")]);
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    for _ in 0..2 {
        assert_eq!(hit(addr, "kept", "k").await.status, 200);
    }
    // A reload that changes something else keeps the limit's counts.
    gw.replace_config(&yaml.replace(
        "routes:\n",
        "routes:\n  - { name: extra, match: { path: /extra }, respond: { status: 204 } }\n",
    ));
    assert!(
        gw.wait_for_log("config reloaded", Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
    assert_eq!(hit(addr, "extra", "k").await.status, 204);
    for _ in 0..2 {
        assert_eq!(hit(addr, "kept", "k").await.status, 200);
    }
    // A new process finds them in Redis.
    drop(gw);
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    for _ in 0..2 {
        assert_eq!(hit(addr, "kept", "k").await.status, 200);
    }
    let r = hit(addr, "kept", "k").await;
    assert_eq!(r.status, 429, "6 of 6 used over two processes");
    assert!(r.header("retry-after").is_some());
    assert_eq!(decisions(&mut gw, "kept", "limited").await, 1);
}

/// [`config`] for one TLS node, verified with the CA file `ca`.
fn tls_config(
    upstream: SocketAddr,
    redis: &RedisServer,
    ca: &Path,
    limits: &[(&str, &str)],
) -> String {
    let yaml = config(upstream, &[redis.url()], false, limits);
    let section = "key_prefix: test }";
    assert!(yaml.contains(section));
    yaml.replace(
        section,
        &format!("key_prefix: test, ca: \"{}\" }}", ca.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_redis_verified_with_its_ca_shares_limits() {
    let redis = RedisServer::start_tls(false);
    let up = upstream::named("app").await;
    let yaml = tls_config(up.addr, &redis, &redis.tls().ca, &[("tls", "rate: 1/h")]);
    assert!(yaml.contains("rediss://127.0.0.1:"), "{yaml}");
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    assert_eq!(hit(addr, "tls", "k").await.status, 200);
    let r = hit(addr, "tls", "k").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(decisions(&mut gw, "tls", "store_error").await, 0);
    assert_eq!(decisions(&mut gw, "tls", "allowed").await, 1);
    assert_eq!(decisions(&mut gw, "tls", "limited").await, 1);
    // A second instance shares the count through the TLS node.
    let mut other = Gateway::start(&yaml);
    assert_eq!(hit(other.addr("main"), "tls", "k").await.status, 429);
    assert_eq!(decisions(&mut other, "tls", "store_error").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_redis_signed_by_another_ca_is_not_trusted() {
    let redis = RedisServer::start_tls(false);
    let dir = tempfile::tempdir().unwrap();
    let unrelated = dir.path().join("unrelated.pem");
    std::fs::write(&unrelated, unrelated_ca_pem()).unwrap();
    let up = upstream::named("app").await;
    let yaml = tls_config(
        up.addr,
        &redis,
        &unrelated,
        &[
            ("open", "rate: 1/h, on_store_error: open"),
            ("closed", "rate: 1/h, on_store_error: closed"),
        ],
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("main");
    // Never limited, never connected: every decision is a store error.
    for _ in 0..3 {
        assert_eq!(hit(addr, "open", "k").await.status, 200, "fails open");
    }
    assert!(decisions(&mut gw, "open", "store_error").await >= 3);
    assert_eq!(decisions(&mut gw, "open", "allowed").await, 0);
    let r = hit(addr, "closed", "k").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["type"],
        "urn:portico:problem:rate-limiter-unavailable"
    );
    assert!(
        gw.wait_for_log("UnknownIssuer", Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
}
