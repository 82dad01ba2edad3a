//! W3C Trace Context through the gateway: what the upstream receives as
//! `traceparent` and `tracestate`, the trace id in the access log, the config
//! checks, and (with the `otel` feature) the spans a collector receives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::upstream::{self, Seen, Upstream};
use support::{Gateway, get, send, send_h2};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

/// A gateway with `extra` top-level settings, proxying `/api` to `up` and
/// answering `/hello` itself.
fn gateway(up: SocketAddr, extra: &str) -> (Gateway, SocketAddr) {
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
{extra}
upstreams:
  app: {{ endpoints: ["{up}"] }}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: app }}
  - {{ name: hello, match: {{ path: /hello }}, respond: {{ body: hi }} }}
"#
    ));
    let addr = gw.addr("main");
    (gw, addr)
}

/// GET /api with `headers` (a name may repeat).
fn request(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get("/api").header("host", "shop.example");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// The upstream's view of the trace context.
#[derive(Debug)]
struct Propagated {
    trace_id: String,
    parent_id: String,
    flags: String,
    tracestate: Vec<String>,
}

/// Splits the single `traceparent` the upstream got, checking it is a
/// well-formed version 00 value with non-zero ids.
fn trace_context(seen: &Seen) -> Propagated {
    let tps: Vec<&str> = seen
        .headers
        .get_all("traceparent")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tps.len(), 1, "{tps:?}");
    let parts: Vec<&str> = tps[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{}", tps[0]);
    assert_eq!(parts[0], "00");
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        lower_hex(parts[1], 32) && parts[1] != "0".repeat(32),
        "{}",
        tps[0]
    );
    assert!(
        lower_hex(parts[2], 16) && parts[2] != "0".repeat(16),
        "{}",
        tps[0]
    );
    assert!(lower_hex(parts[3], 2), "{}", tps[0]);
    Propagated {
        trace_id: parts[1].to_owned(),
        parent_id: parts[2].to_owned(),
        flags: parts[3].to_owned(),
        tracestate: seen
            .headers
            .get_all("tracestate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
    }
}

/// Sends GET /api with `headers` and returns what the upstream saw.
async fn through(addr: SocketAddr, up: &Upstream, headers: &[(&str, &str)]) -> Propagated {
    let before = up.count();
    let reply = send(addr, request(headers)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = up.seen();
    assert_eq!(seen.len(), before + 1);
    trace_context(&seen[before])
}

/// Waits (10 s at most) until `read` yields at least `n` items, letting the
/// test's own servers run meanwhile.
async fn wait_for<T>(n: usize, read: impl Fn() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let items = read();
        if items.len() >= n || Instant::now() >= deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_trace_is_started_and_logged() {
    let up = upstream::named("up").await;
    let (gw, addr) = gateway(up.addr, "access_log: { target: stdout }");

    let reply = send(addr, request(&[("tracestate", "foo=1")])).await;
    assert_eq!(reply.status, 200);
    let tc = trace_context(&up.seen()[0]);
    assert_eq!(tc.flags, "01", "sample_ratio defaults to 1");
    assert!(tc.tracestate.is_empty(), "tracestate without traceparent");

    let id = reply.header("x-request-id").unwrap().to_owned();
    let lines = wait_for(1, || gw.stdout_lines()).await;
    let line: serde_json::Value = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|v: &serde_json::Value| v["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"));
    assert_eq!(line["trace_id"], tc.trace_id.as_str());
    assert_eq!(line["span_id"], tc.parent_id.as_str());

    // Each request is a new trace and a new span.
    let again = through(addr, &up, &[]).await;
    assert_ne!(again.trace_id, tc.trace_id);
    assert_ne!(again.parent_id, tc.parent_id);

    // A direct answer is logged with a trace id too.
    let direct = send(addr, get("shop.example", "/hello")).await;
    let id = direct.header("x-request-id").unwrap().to_owned();
    let lines = wait_for(3, || gw.stdout_lines()).await;
    let line: serde_json::Value = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .find(|v: &serde_json::Value| v["request_id"] == id.as_str())
        .unwrap();
    assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn a_valid_traceparent_is_continued() {
    let up = upstream::named("up").await;
    let (_gw, addr) = gateway(up.addr, "access_log: { enabled: false }");

    for (traceparent, flags) in [
        (format!("00-{TRACE}-{PARENT}-01"), "01"),
        (format!("00-{TRACE}-{PARENT}-00"), "00"),
        // Unknown flags are not passed on.
        (format!("00-{TRACE}-{PARENT}-09"), "01"),
        // Optional whitespace.
        (format!(" 00-{TRACE}-{PARENT}-01\t"), "01"),
        // A later version, parsed by its first four fields, sent on as 00.
        (
            format!("cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"),
            "01",
        ),
    ] {
        let tc = through(addr, &up, &[("traceparent", &traceparent)]).await;
        assert_eq!(tc.trace_id, TRACE, "{traceparent}");
        assert_ne!(tc.parent_id, PARENT, "{traceparent}");
        assert_eq!(tc.flags, flags, "{traceparent}");
    }

    // Header names in any case; tracestate passes unchanged.
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let tc = through(
        addr,
        &up,
        &[
            ("TraceParent", &tp),
            ("TRACESTATE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(tc.trace_id, TRACE);
    assert_eq!(tc.tracestate, ["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]);

    // Several tracestate fields are combined, in order.
    let tc = through(
        addr,
        &up,
        &[
            ("traceparent", &tp),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", ""),
            ("tracestate", "baz=3"),
        ],
    )
    .await;
    assert_eq!(tc.tracestate, ["foo=1,bar=2,baz=3"]);

    // A client naming traceparent in Connection does not strip the
    // gateway's own (hop-by-hop removal runs first).
    let tc = through(
        addr,
        &up,
        &[("traceparent", &tp), ("connection", "traceparent")],
    )
    .await;
    assert_eq!(tc.trace_id, TRACE);
    assert_ne!(tc.parent_id, PARENT);

    // An invalid tracestate is dropped; the trace still continues.
    for state in ["foo=1,foo=2", "FOO=1", "foo=", "foo@@bar=1", ""] {
        let tc = through(addr, &up, &[("traceparent", &tp), ("tracestate", state)]).await;
        assert_eq!(tc.trace_id, TRACE, "{state:?}");
        assert!(tc.tracestate.is_empty(), "{state:?}: {:?}", tc.tracestate);
    }

    // The same over HTTP/2 from the client.
    let req = Request::get("http://shop.example/api")
        .header("traceparent", &tp)
        .header("tracestate", "foo=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send_h2(addr, req).await.status, 200);
    let tc = trace_context(&up.seen().pop().unwrap());
    assert_eq!(tc.trace_id, TRACE);
    assert_ne!(tc.parent_id, PARENT);
    assert_eq!(tc.tracestate, ["foo=1"]);
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace() {
    let up = upstream::named("up").await;
    let (_gw, addr) = gateway(up.addr, "access_log: { enabled: false }");

    let zero_trace = format!("00-{}-{PARENT}-01", "0".repeat(32));
    let zero_parent = format!("00-{TRACE}-{}-01", "0".repeat(16));
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![(
            "traceparent",
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
        )],
        vec![(
            "traceparent",
            format!("00-{TRACE}-{}-01", PARENT.to_uppercase()),
        )],
        vec![("traceparent", zero_trace.clone())],
        vec![("traceparent", zero_parent)],
        vec![("traceparent", format!("ff-{TRACE}-{PARENT}-01"))],
        vec![("traceparent", format!("00-{TRACE}-{PARENT}-01."))],
        vec![("traceparent", format!("00-{TRACE}-{PARENT}-01-extra"))],
        vec![("traceparent", format!("cc-{TRACE}-{PARENT}-01.extra"))],
        vec![("traceparent", format!("00-{TRACE}1-{PARENT}-01"))],
        vec![("traceparent", format!("00-{TRACE}-{PARENT}1-01"))],
        vec![("traceparent", format!("00-{TRACE}-{PARENT}-1"))],
        vec![("traceparent", format!("0-{TRACE}-{PARENT}-01"))],
        vec![("traceparent", "garbage".into())],
        vec![
            ("traceparent", format!("00-{TRACE}-{PARENT}-01")),
            ("traceparent", format!("00-{TRACE}-{PARENT}-01")),
        ],
        vec![("trace-parent", format!("00-{TRACE}-{PARENT}-01"))],
    ];
    for case in cases {
        let mut headers: Vec<(&str, &str)> = case.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.push(("tracestate", "foo=1"));
        let tc = through(addr, &up, &headers).await;
        assert_ne!(tc.trace_id, TRACE, "{case:?}");
        assert_ne!(tc.trace_id.to_uppercase(), TRACE.to_uppercase(), "{case:?}");
        assert_ne!(tc.parent_id, PARENT, "{case:?}");
        assert_eq!(tc.flags, "01", "{case:?}");
        assert!(tc.tracestate.is_empty(), "{case:?}: {:?}", tc.tracestate);
    }

    // Each invalid request starts its own trace.
    let a = through(addr, &up, &[("traceparent", &zero_trace)]).await;
    let b = through(addr, &up, &[("traceparent", &zero_trace)]).await;
    assert_ne!(a.trace_id, b.trace_id);
    assert_ne!(a.parent_id, b.parent_id);
}

#[tokio::test]
async fn sample_ratio_zero_leaves_new_traces_unsampled() {
    let up = upstream::named("up").await;
    let (_gw, addr) = gateway(up.addr, "tracing: { sample_ratio: 0 }");
    for _ in 0..5 {
        assert_eq!(through(addr, &up, &[]).await.flags, "00");
    }
    // The caller's decision is kept.
    let tc = through(
        addr,
        &up,
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    )
    .await;
    assert_eq!(tc.flags, "01");
}

/// `portico check` on `yaml`: its exit code and everything it printed.
fn check(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

const LISTENER: &str = "listeners: [{ name: main, address: \"127.0.0.1:0\" }]\n";

#[test]
fn tracing_settings_are_checked() {
    let (code, text) = check(&format!("{LISTENER}tracing: {{ sample_ratio: 1.5 }}\n"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("`tracing.sample_ratio` must be between 0 and 1, got 1.5"),
        "{text}"
    );

    let (code, text) = check(&format!(
        "{LISTENER}tracing: {{ otlp: {{ endpoint: \"http://127.0.0.1:4318/v1/traces\", buffer: 0, flush_interval: 0s, service_name: \"\" }} }}\n"
    ));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("`tracing.otlp.buffer` must be between 1 and"),
        "{text}"
    );
    assert!(
        text.contains("`tracing.otlp.flush_interval` must be greater than 0"),
        "{text}"
    );
    assert!(
        text.contains("`tracing.otlp.service_name` must not be empty"),
        "{text}"
    );
}

#[cfg(not(feature = "otel"))]
#[test]
fn otlp_needs_the_otel_feature() {
    let (code, text) = check(&format!(
        "{LISTENER}tracing: {{ otlp: {{ endpoint: \"http://127.0.0.1:4318/v1/traces\" }} }}\n"
    ));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("tracing.otlp needs portico built with `--features otel`"),
        "{text}"
    );
}

#[cfg(feature = "otel")]
mod otel {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Response;
    use serde_json::Value;

    use super::*;

    /// A collector answering like an OTLP/HTTP receiver.
    async fn collector() -> Upstream {
        upstream::start(|_| {
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        })
        .await
    }

    fn otlp(collector: &Upstream, flush: &str) -> String {
        format!(
            "access_log: {{ enabled: false }}\ntracing:\n  otlp: {{ endpoint: \"http://{}/v1/traces\", service_name: edge, flush_interval: {flush} }}",
            collector.addr
        )
    }

    /// Every span the collector received, checking each export request.
    fn spans(collector: &Upstream) -> Vec<Value> {
        let mut out = Vec::new();
        for s in collector.seen() {
            assert_eq!(s.method, "POST");
            assert_eq!(s.uri.path(), "/v1/traces");
            assert_eq!(s.headers["content-type"], "application/json");
            let v: Value = serde_json::from_slice(&s.body).unwrap();
            let rs = &v["resourceSpans"][0];
            assert_eq!(
                rs["resource"]["attributes"][0],
                serde_json::json!({"key": "service.name", "value": {"stringValue": "edge"}})
            );
            assert_eq!(rs["scopeSpans"][0]["scope"]["name"], "portico");
            out.extend(
                rs["scopeSpans"][0]["spans"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .cloned(),
            );
        }
        out
    }

    fn attr(span: &Value, key: &str) -> Option<Value> {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    }

    fn span_named<'a>(spans: &'a [Value], trace_id: &str) -> &'a Value {
        spans
            .iter()
            .find(|s| s["traceId"] == trace_id)
            .unwrap_or_else(|| panic!("no span of trace {trace_id}: {spans:#?}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sampled_requests_are_exported() {
        let col = collector().await;
        let up = upstream::named("up").await;
        // Nothing listens on port 1: that route fails with a 5xx.
        let mut gw = Gateway::start(&format!(
            r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
{}
upstreams:
  app: {{ endpoints: ["{}"] }}
  gone: {{ endpoints: ["127.0.0.1:1"] }}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: app }}
  - {{ name: broken, match: {{ prefix: /broken }}, upstream: gone }}
"#,
            otlp(&col, "100ms"),
            up.addr
        ));
        let addr = gw.addr("main");

        let tp = format!("00-{TRACE}-{PARENT}-01");
        let continued = through(addr, &up, &[("traceparent", &tp)]).await;
        let started = through(addr, &up, &[]).await;
        // Unsampled by the caller: not exported.
        let unsampled = "11111111111111111111111111111111";
        through(
            addr,
            &up,
            &[("traceparent", &format!("00-{unsampled}-{PARENT}-00"))],
        )
        .await;
        let missing = send(addr, get("shop.example:8080", "/nope?q=1")).await;
        assert_eq!(missing.status, 404);
        let broken = send(addr, get("shop.example", "/broken")).await;
        assert!(broken.status.is_server_error(), "{}", broken.status);

        let spans = wait_for(4, || spans(&col)).await;
        assert_eq!(spans.len(), 4, "{spans:#?}");
        assert!(spans.iter().all(|s| s["traceId"] != unsampled));

        let s = span_named(&spans, TRACE);
        assert_eq!(s["spanId"], continued.parent_id.as_str());
        assert_eq!(s["parentSpanId"], PARENT);
        assert_eq!(s["name"], "GET api");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["flags"], 0x301);
        let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start > 1_600_000_000_000_000_000 && end >= start, "{s}");
        assert_eq!(
            attr(s, "http.request.method").unwrap(),
            serde_json::json!({"stringValue": "GET"})
        );
        assert_eq!(attr(s, "url.path").unwrap()["stringValue"], "/api");
        assert_eq!(
            attr(s, "http.response.status_code").unwrap(),
            serde_json::json!({"intValue": "200"})
        );
        assert_eq!(attr(s, "http.route").unwrap()["stringValue"], "api");
        assert_eq!(
            attr(s, "server.address").unwrap()["stringValue"],
            "shop.example"
        );
        assert_eq!(
            attr(s, "client.address").unwrap()["stringValue"],
            "127.0.0.1"
        );
        assert_eq!(
            attr(s, "portico.upstream.address").unwrap()["stringValue"],
            up.addr.to_string().as_str()
        );
        assert!(s.get("status").is_none(), "{s}");

        let s = span_named(&spans, &started.trace_id);
        assert_eq!(s["spanId"], started.parent_id.as_str());
        assert!(s.get("parentSpanId").is_none(), "{s}");
        assert_eq!(s["flags"], 0x101);

        let s = spans.iter().find(|s| s["name"] == "GET").unwrap();
        assert_eq!(
            attr(s, "http.response.status_code").unwrap()["intValue"],
            "404"
        );
        assert_eq!(attr(s, "url.path").unwrap()["stringValue"], "/nope");
        assert_eq!(
            attr(s, "server.address").unwrap()["stringValue"],
            "shop.example"
        );
        assert!(attr(s, "http.route").is_none());
        assert!(
            s.get("status").is_none(),
            "a 4xx is the client's error: {s}"
        );

        let s = spans.iter().find(|s| s["name"] == "GET broken").unwrap();
        assert_eq!(s["status"]["code"], 2);
        assert!(s["status"]["message"].is_string(), "{s}");
        drop(gw);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_throttling_collector_gets_the_spans_later() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let col = upstream::start(move |_| {
            let status = if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                503
            } else {
                200
            };
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        })
        .await;
        let up = upstream::named("up").await;
        let (_gw, addr) = gateway(up.addr, &otlp(&col, "100ms"));
        let tc = through(addr, &up, &[]).await;

        let seen = wait_for(2, || col.seen()).await;
        assert!(seen.len() >= 2, "{} export requests", seen.len());
        let retried: Value = serde_json::from_slice(&seen[1].body).unwrap();
        assert_eq!(
            retried["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"],
            tc.trace_id.as_str()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_are_sent_at_exit() {
        let col = collector().await;
        let up = upstream::named("up").await;
        let (mut gw, addr) = gateway(up.addr, &otlp(&col, "1h"));
        let tc = through(addr, &up, &[]).await;
        gw.signal("TERM");
        assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
        let spans = spans(&col);
        assert_eq!(spans.len(), 1, "{spans:#?}");
        assert_eq!(spans[0]["traceId"], tc.trace_id.as_str());
    }

    #[test]
    fn the_endpoint_is_checked() {
        let (code, text) = check(&format!(
            "{LISTENER}tracing: {{ otlp: {{ endpoint: \"https://collector:4318/v1/traces\" }} }}\n"
        ));
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("`tracing.otlp.endpoint`"), "{text}");
        assert!(text.contains("only `http://`"), "{text}");
    }
}
