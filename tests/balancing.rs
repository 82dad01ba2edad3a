//! Load balancing through the gateway, over three (or four) real upstreams that
//! each answer with their own name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use support::raw::{self, Action};
use support::upstream::{self, Upstream};
use support::{Gateway, get, send};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// One keep-alive HTTP/1.1 connection to the gateway.
struct Client {
    addr: SocketAddr,
    tx: SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { addr, tx }
    }

    /// GET `path` with `headers`; the body (the upstream's name) of a 200.
    async fn name(&mut self, path: &str, headers: &[(&str, &str)]) -> String {
        let mut b = Request::get(path).header("host", "lb.test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).unwrap();
        let sent = timeout(Duration::from_secs(10), async {
            // The gateway may close a connection (it never should here, but a
            // fresh one keeps a failure about balancing, not about keep-alive).
            if self.tx.ready().await.is_err() {
                *self = Client::connect(self.addr).await;
            }
            let resp = self.tx.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
        .await
        .expect("request timed out");
        assert_eq!(sent.0, 200, "{path}: {}", sent.1);
        sent.1
    }
}

async fn three() -> [Upstream; 3] {
    [
        upstream::named("a").await,
        upstream::named("b").await,
        upstream::named("c").await,
    ]
}

fn tally(names: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

fn count(t: &BTreeMap<String, usize>, name: &str) -> usize {
    t.get(name).copied().unwrap_or(0)
}

#[tokio::test]
async fn round_robin_weights_are_exact_per_cycle() {
    let [a, b, c] = three().await;
    let mut gw = Gateway::start(&format!(
        r#"
workers: 1
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  rr:
    endpoints:
      - {{ address: "{}", weight: 3 }}
      - {{ address: "{}", weight: 1 }}
      - {{ address: "{}", weight: 1 }}
routes:
  - {{ name: rr, match: {{ prefix: / }}, upstream: rr }}
"#,
        a.addr, b.addr, c.addr
    ));
    let mut client = Client::connect(gw.addr("main")).await;
    let mut names = Vec::new();
    for _ in 0..500 {
        names.push(client.name("/rr", &[]).await);
    }
    let t = tally(&names);
    assert_eq!(count(&t, "a"), 300, "{t:?}");
    assert_eq!(count(&t, "b"), 100, "{t:?}");
    assert_eq!(count(&t, "c"), 100, "{t:?}");
    // Every full cycle of 5 holds the weighted shares exactly.
    for (i, cycle) in names.chunks(5).enumerate() {
        let t = tally(cycle);
        assert_eq!(
            (count(&t, "a"), count(&t, "b"), count(&t, "c")),
            (3, 1, 1),
            "cycle {i}: {cycle:?}"
        );
    }
    assert_eq!((a.count(), b.count(), c.count()), (300, 100, 100));
}

#[tokio::test]
async fn random_follows_weights_within_tolerance() {
    let [a, b, c] = three().await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  rnd:
    balance: random
    endpoints:
      - {{ address: "{}", weight: 3 }}
      - {{ address: "{}", weight: 1 }}
      - {{ address: "{}", weight: 1 }}
routes:
  - {{ name: rnd, match: {{ prefix: / }}, upstream: rnd }}
"#,
        a.addr, b.addr, c.addr
    ));
    let mut client = Client::connect(gw.addr("main")).await;
    let mut names = Vec::new();
    for _ in 0..500 {
        names.push(client.name("/rnd", &[]).await);
    }
    let t = tally(&names);
    // Expected 300/100/100; the bounds are over five standard deviations wide.
    assert!((240..=360).contains(&count(&t, "a")), "{t:?}");
    assert!((55..=145).contains(&count(&t, "b")), "{t:?}");
    assert!((55..=145).contains(&count(&t, "c")), "{t:?}");
    assert_eq!(a.count() + b.count() + c.count(), 500);
}

#[tokio::test]
async fn least_request_spreads_evenly_when_idle() {
    let [a, b, c] = three().await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  lr: {{ balance: least_request, endpoints: ["{}", "{}", "{}"] }}
routes:
  - {{ name: lr, match: {{ prefix: / }}, upstream: lr }}
"#,
        a.addr, b.addr, c.addr
    ));
    let mut client = Client::connect(gw.addr("main")).await;
    let mut names = Vec::new();
    for _ in 0..300 {
        names.push(client.name("/lr", &[]).await);
    }
    let t = tally(&names);
    for n in ["a", "b", "c"] {
        assert!((55..=145).contains(&count(&t, n)), "{n}: {t:?}");
    }
}

#[tokio::test]
async fn least_request_avoids_a_busy_endpoint() {
    // `slow` holds every request until released; b and c answer at once.
    let slow = raw::upstream(Action::Hold(raw::ok_response("slow"))).await;
    let b = upstream::named("b").await;
    let c = upstream::named("c").await;
    let mut gw = Gateway::start(&format!(
        r#"
workers: 1
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  lr: {{ balance: least_request, endpoints: ["{}", "{}", "{}"] }}
routes:
  - {{ name: lr, match: {{ prefix: / }}, upstream: lr }}
"#,
        slow.addr, b.addr, c.addr
    ));
    let addr = gw.addr("main");

    // Send requests one by one until one is held by `slow` (each goes to slow
    // with probability 1/3 while nothing is in flight).
    let mut held = None;
    for _ in 0..60 {
        let task = tokio::spawn(send(addr, get("lb.test", "/held")));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if slow.requests() > 0 {
                held = Some(task);
                break;
            }
            if task.is_finished() {
                let r = task.await.unwrap();
                assert_eq!(r.status, 200);
                assert_ne!(r.text(), "slow");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "request neither held nor answered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if held.is_some() {
            break;
        }
    }
    let held = held.expect("no request reached the slow endpoint in 60 tries");
    assert_eq!(slow.requests(), 1);

    // With one request in flight on `slow` and none elsewhere, power of two
    // choices never picks it.
    let mut client = Client::connect(addr).await;
    let mut names = Vec::new();
    for _ in 0..100 {
        names.push(client.name("/lr", &[]).await);
    }
    let t = tally(&names);
    assert_eq!(count(&t, "slow"), 0, "{t:?}");
    assert_eq!(slow.requests(), 1, "{t:?}");
    assert!(count(&t, "b") >= 20 && count(&t, "c") >= 20, "{t:?}");

    slow.release();
    let r = timeout(Duration::from_secs(10), held)
        .await
        .expect("held request not answered after release")
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
}

fn hash_config(addrs: &[SocketAddr]) -> String {
    let eps = addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
forwarding: {{ trusted_proxies: [127.0.0.1] }}
upstreams:
  by-header: {{ balance: {{ consistent_hash: {{ header: x-user }} }}, endpoints: [{eps}] }}
  by-cookie: {{ balance: {{ consistent_hash: {{ cookie: session }} }}, endpoints: [{eps}] }}
  by-ip: {{ balance: {{ consistent_hash: client_ip }}, endpoints: [{eps}] }}
  by-path: {{ balance: {{ consistent_hash: path }}, endpoints: [{eps}] }}
routes:
  - {{ name: header, match: {{ prefix: /header }}, upstream: by-header }}
  - {{ name: cookie, match: {{ prefix: /cookie }}, upstream: by-cookie }}
  - {{ name: ip, match: {{ prefix: /ip }}, upstream: by-ip }}
  - {{ name: path, match: {{ prefix: /path }}, upstream: by-path }}
"#
    )
}

/// For each of 30 keys, 4 requests land on one upstream; the keys use more than one.
async fn assert_sticky<F>(client: &mut Client, what: &str, mut request: F)
where
    F: FnMut(usize) -> (String, Vec<(String, String)>),
{
    let mut by_key = HashMap::new();
    for round in 0..4 {
        for k in 0..30 {
            let (path, headers) = request(k);
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            let name = client.name(&path, &headers).await;
            let first = by_key.entry(k).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "{what}: key {k} moved in round {round}");
        }
    }
    let used: std::collections::BTreeSet<_> = by_key.values().collect();
    assert!(used.len() >= 2, "{what}: every key on {used:?}");
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_upstream() {
    let ups = three().await;
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let mut gw = Gateway::start(&hash_config(&addrs));
    let addr = gw.addr("main");
    let mut client = Client::connect(addr).await;

    assert_sticky(&mut client, "header", |k| {
        (
            "/header".into(),
            vec![("x-user".into(), format!("user-{k}"))],
        )
    })
    .await;
    assert_sticky(&mut client, "cookie", |k| {
        (
            "/cookie".into(),
            vec![(
                "cookie".into(),
                format!("theme=dark; session=s{k}; lang=en"),
            )],
        )
    })
    .await;
    // The client address, as resolved through the trusted proxy 127.0.0.1.
    assert_sticky(&mut client, "client ip", |k| {
        (
            "/ip".into(),
            vec![(
                "x-forwarded-for".into(),
                format!("10.1.{}.{}", k / 200, k % 200 + 1),
            )],
        )
    })
    .await;
    assert_sticky(&mut client, "path", |k| (format!("/path/item-{k}"), vec![])).await;

    // The real peer address, on fresh connections: always the same upstream.
    let first = send(addr, get("lb.test", "/ip")).await.text();
    for _ in 0..10 {
        assert_eq!(send(addr, get("lb.test", "/ip")).await.text(), first);
    }
}

#[tokio::test]
async fn consistent_hash_moves_only_keys_that_go_to_a_new_endpoint() {
    let [a, b, c] = three().await;
    let d = upstream::named("d").await;
    let config = |addrs: &[SocketAddr]| {
        let eps = addrs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  ch: {{ balance: {{ consistent_hash: {{ header: x-key }} }}, endpoints: [{eps}] }}
routes:
  - {{ name: ch, match: {{ prefix: / }}, upstream: ch }}
"#
        )
    };
    let mut gw = Gateway::start(&config(&[a.addr, b.addr, c.addr]));
    let addr = gw.addr("main");
    let mut client = Client::connect(addr).await;
    let keys: Vec<String> = (0..200).map(|k| format!("key-{k}")).collect();
    let mut before = Vec::new();
    for k in &keys {
        before.push(client.name("/", &[("x-key", k)]).await);
    }
    let t = tally(&before);
    assert_eq!(t.len(), 3, "{t:?}");

    gw.replace_config(&config(&[a.addr, b.addr, c.addr, d.addr]));
    // Poll (bounded) until the new endpoint serves some key.
    let deadline = Instant::now() + Duration::from_secs(15);
    'wait: loop {
        for k in &keys {
            if client.name("/", &[("x-key", k)]).await == "d" {
                break 'wait;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new endpoint never served:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut moved = 0;
    for (k, old) in keys.iter().zip(&before) {
        let now = client.name("/", &[("x-key", k)]).await;
        if &now != old {
            assert_eq!(
                now, "d",
                "{k} moved from {old} to {now}, not to the new endpoint"
            );
            moved += 1;
        }
    }
    assert!(moved > 0);
    assert!(
        moved < keys.len() / 2,
        "{moved} of {} keys moved",
        keys.len()
    );
}
