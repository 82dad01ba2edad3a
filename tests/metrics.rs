//! Prometheus metrics, against the real binary: the scrape parses with a
//! strict exposition-format parser, and its numbers match what was sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use support::{Gateway, get_path, send, upstream};

fn config(app: SocketAddr, down: SocketAddr, hello: &str) -> String {
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0" }}
upstreams:
  app: {{ endpoints: ["{app}"] }}
  down: {{ endpoints: ["{down}"] }}
routes:
  - name: app
    match: {{ prefix: /app }}
    upstream: app
  - name: down
    match: {{ prefix: /down }}
    upstream: down
  - name: hello
    match: {{ path: /hello }}
    respond: {{ status: 200, body: "{hello}" }}
"#
    )
}

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One parsed scrape.
struct Scrape(MetricsExposition<OpenMetricsType, OpenMetricsValue>);

impl Scrape {
    /// `GET /metrics` as Prometheus asks for it, parsed as OpenMetrics; the
    /// classic text format must parse too.
    async fn take(admin: SocketAddr) -> Scrape {
        let req = Request::get("/metrics")
            .header("host", "localhost")
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
            )
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(admin, req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let text = r.text();
        let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&text)
            .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{text}"));
        let classic = support::get_path(admin, "/metrics").await.text();
        openmetrics_parser::prometheus::parse_prometheus(&classic)
            .unwrap_or_else(|e| panic!("not Prometheus text ({e:?}):\n{classic}"));
        Scrape(parsed)
    }

    /// The value of the series of `family` with exactly `labels`.
    fn value(&self, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = self.0.families.get(family)?;
        family.iter_samples().find_map(|s| {
            let set = s.get_labelset().ok()?;
            let same = set.iter().count() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v));
            if !same {
                return None;
            }
            Some(match &s.value {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Gauge(g) => g.as_f64(),
                OpenMetricsValue::Histogram(h) => h.count.unwrap_or_default() as f64,
                other => panic!("unexpected value {other:?}"),
            })
        })
    }

    /// `portico_requests_total` of one route, method and status class.
    fn requests(&self, route: &str, method: &str, status_class: &str) -> f64 {
        let labels = [
            ("route", route),
            ("method", method),
            ("status_class", status_class),
        ];
        self.value("portico_requests", &labels)
            .unwrap_or_else(|| panic!("no series {labels:?}"))
    }

    /// The sum of every series of a counter family.
    fn total(&self, family: &str) -> f64 {
        self.0.families[family]
            .iter_samples()
            .map(|s| match &s.value {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                other => panic!("not a counter: {other:?}"),
            })
            .sum()
    }
}

/// Scrapes until `done` holds (responses are counted when their body is
/// done, which the client may see a moment before the gateway does).
async fn scrape_until(admin: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = Scrape::take(admin).await;
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn counters_match_the_requests_sent() {
    let up = upstream::named("alpha").await;
    let mut gw = Gateway::start(&config(up.addr, closed_port(), "hi"));
    let main = gw.addr("main");
    let admin = gw.addr("admin");

    let before = Scrape::take(admin).await;
    assert_eq!(before.total("portico_requests"), 0.0);
    assert_eq!(before.requests("app", "GET", "2xx"), 0.0);

    for _ in 0..7 {
        assert_eq!(get_path(main, "/app/x").await.status, 200);
    }
    for _ in 0..3 {
        let req = Request::post("/nowhere")
            .header("host", "localhost")
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        assert_eq!(send(main, req).await.status, 404);
    }
    for _ in 0..2 {
        assert_eq!(get_path(main, "/down/x").await.status, 502);
    }
    let head = Request::head("/hello")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(main, head).await.status, 200);

    let s = scrape_until(admin, |s| s.total("portico_requests") >= 13.0).await;
    assert_eq!(s.total("portico_requests"), 13.0);
    assert_eq!(s.requests("app", "GET", "2xx"), 7.0);
    assert_eq!(s.requests("", "POST", "4xx"), 3.0);
    assert_eq!(s.requests("down", "GET", "5xx"), 2.0);
    assert_eq!(s.requests("hello", "HEAD", "2xx"), 1.0);
    assert_eq!(s.requests("app", "POST", "2xx"), 0.0);
    assert_eq!(s.requests("hello", "other", "5xx"), 0.0);

    let duration = |route| {
        s.value("portico_request_duration_seconds", &[("route", route)])
            .unwrap()
    };
    assert_eq!(duration("app"), 7.0);
    assert_eq!(duration(""), 3.0);
    assert_eq!(duration("down"), 2.0);
    assert_eq!(duration("hello"), 1.0);

    // Upstream side: seven answers from `app`; the down upstream has none.
    let app = [("upstream", "app")];
    assert_eq!(
        s.value("portico_upstream_request_duration_seconds", &app),
        Some(7.0)
    );
    let opened = s
        .value("portico_upstream_connections_opened", &app)
        .unwrap();
    let reused = s
        .value("portico_upstream_connections_reused", &app)
        .unwrap();
    assert!(opened >= 1.0, "{opened}");
    assert_eq!(opened + reused, 7.0);
    assert_eq!(
        s.value("portico_upstream_connect_duration_seconds", &app),
        Some(opened)
    );
    assert!(s.value("portico_upstream_idle_connections", &app).unwrap() >= 1.0);
    let endpoint = [("upstream", "app"), ("endpoint", &*up.addr.to_string())];
    assert_eq!(
        s.value("portico_upstream_endpoint_healthy", &endpoint),
        Some(1.0)
    );
    assert_eq!(
        s.value("portico_upstream_endpoint_active_requests", &endpoint),
        Some(0.0)
    );
    assert_eq!(
        s.value(
            "portico_upstream_circuit_breaker_rejections",
            &[("upstream", "down"), ("cap", "max_requests")]
        ),
        Some(0.0)
    );

    assert!(
        s.value("portico_process_resident_memory_bytes", &[])
            .unwrap()
            > 1e6
    );
    assert!(
        s.value("portico_process_virtual_memory_bytes", &[])
            .unwrap()
            > 1e6
    );
}

#[tokio::test]
async fn open_connections_are_gauged_per_listener() {
    let up = upstream::named("alpha").await;
    let mut gw = Gateway::start(&config(up.addr, closed_port(), "hi"));
    let main = gw.addr("main");
    let admin = gw.addr("admin");
    let open = |n: f64| {
        move |s: &Scrape| {
            s.value("portico_listener_connections", &[("listener", "main")]) == Some(n)
        }
    };

    let held: Vec<_> =
        futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(main))).await;
    let s = scrape_until(admin, open(3.0)).await;
    assert!(open(3.0)(&s), "three connections held");
    drop(held);
    let s = scrape_until(admin, open(0.0)).await;
    assert!(open(0.0)(&s), "all closed");
}

#[tokio::test]
async fn reloads_are_counted_and_change_the_config_hash() {
    let up = upstream::named("alpha").await;
    let down = closed_port();
    let mut gw = Gateway::start(&config(up.addr, down, "one"));
    let admin = gw.addr("admin");
    let reloads = |s: &Scrape, result| {
        s.value("portico_config_reloads", &[("result", result)])
            .unwrap()
    };
    let hash = |s: &Scrape| s.value("portico_config_hash", &[]).unwrap();

    let s = Scrape::take(admin).await;
    assert_eq!((reloads(&s, "success"), reloads(&s, "failure")), (0.0, 0.0));
    let first = hash(&s);
    assert!(first > 0.0 && first < 2f64.powi(53), "{first}");
    // Stable: the same config hashes the same.
    assert_eq!(hash(&Scrape::take(admin).await), first);

    gw.replace_config(&config(up.addr, down, "two"));
    assert!(gw.wait_for_log("config reloaded", Duration::from_secs(5)));
    let s = Scrape::take(admin).await;
    assert_eq!((reloads(&s, "success"), reloads(&s, "failure")), (1.0, 0.0));
    let second = hash(&s);
    assert_ne!(second, first);

    gw.replace_config("listeners: [}\n");
    assert!(gw.wait_for_log("config reload failed", Duration::from_secs(5)));
    let s = Scrape::take(admin).await;
    assert_eq!((reloads(&s, "success"), reloads(&s, "failure")), (1.0, 1.0));
    assert_eq!(hash(&s), second);
}
