//! The access log: one JSON line per request, on stdout by default, off when
//! disabled, or appended to a file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::upstream::{self, Upstream};
use support::{Gateway, Reply, get, send};

const FIELDS: [&str; 13] = [
    "time",
    "request_id",
    "client",
    "method",
    "host",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "route",
    "upstream",
    "upstream_duration_ms",
];

fn config(up: SocketAddr, access_log: &str) -> String {
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
{access_log}
upstreams:
  app: {{ endpoints: ["{up}"] }}
routes:
  - {{ name: api, match: {{ prefix: /api }}, upstream: app }}
  - {{ name: hello, match: {{ path: /hello }}, respond: {{ body: "hi there" }} }}
"#
    )
}

/// A proxied POST with an 11-byte body, a direct answer and a 404.
async fn three_requests(addr: SocketAddr) -> (Reply, Reply, Reply) {
    let post = Request::post("/api/items?x=1")
        .header("host", "shop.example")
        .body(Full::new(Bytes::from_static(b"hello world")))
        .unwrap();
    let proxied = send(addr, post).await;
    assert_eq!(proxied.status, 200);
    let direct = send(addr, get("shop.example", "/hello")).await;
    assert_eq!(direct.status, 200);
    let missing = send(addr, get("other.example", "/nope")).await;
    assert_eq!(missing.status, 404);
    (proxied, direct, missing)
}

/// Parses lines as JSON objects; panics on anything else.
fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

/// Waits (10 s at most) until `read` yields at least `n` lines.
fn wait_lines(n: usize, read: impl Fn() -> Vec<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = read();
        if lines.len() >= n || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn line_for<'a>(entries: &'a [Value], reply: &Reply) -> &'a Value {
    let id = reply.header("x-request-id").unwrap();
    let found: Vec<&Value> = entries.iter().filter(|e| e["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "lines for {id}: {entries:#?}");
    found[0]
}

fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

fn millis(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn check_entries(entries: &[Value], up: &Upstream, replies: &(Reply, Reply, Reply)) {
    assert_eq!(entries.len(), 3, "{entries:#?}");
    for e in entries {
        for f in FIELDS {
            assert!(e.get(f).is_some(), "field {f} missing: {e}");
        }
        assert!(is_rfc3339_utc(e["time"].as_str().unwrap()), "{e}");
        assert_eq!(e["client"], "127.0.0.1");
        assert!(millis(&e["duration_ms"]) >= 0.0);
    }
    let (proxied, direct, missing) = replies;

    let p = line_for(entries, proxied);
    assert_eq!(p["method"], "POST");
    assert_eq!(p["host"], "shop.example");
    assert_eq!(p["path"], "/api/items?x=1");
    assert_eq!(p["status"], 200);
    assert_eq!(p["bytes_in"], 11);
    assert_eq!(p["bytes_out"], proxied.body.len());
    assert_eq!(p["route"], "api");
    assert_eq!(p["upstream"], up.addr.to_string());
    let up_ms = millis(&p["upstream_duration_ms"]);
    assert!(up_ms >= 0.0 && up_ms <= millis(&p["duration_ms"]), "{p}");
    assert_eq!(up.seen()[0].body, "hello world");

    let d = line_for(entries, direct);
    assert_eq!(d["method"], "GET");
    assert_eq!(d["path"], "/hello");
    assert_eq!(d["status"], 200);
    assert_eq!(d["bytes_in"], 0);
    assert_eq!(d["bytes_out"], 8);
    assert_eq!(d["route"], "hello");
    assert_eq!(d["upstream"], Value::Null);
    assert_eq!(d["upstream_duration_ms"], Value::Null);

    let m = line_for(entries, missing);
    assert_eq!(m["host"], "other.example");
    assert_eq!(m["path"], "/nope");
    assert_eq!(m["status"], 404);
    assert_eq!(m["bytes_out"], missing.body.len());
    assert_eq!(m["route"], Value::Null);
    assert_eq!(m["upstream"], Value::Null);
    assert_eq!(m["upstream_duration_ms"], Value::Null);
}

#[tokio::test]
async fn one_json_line_per_request_on_stdout_by_default() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(up.addr, ""));
    let addr = gw.addr("main");
    let replies = three_requests(addr).await;
    let lines = wait_lines(3, || gw.stdout_lines());
    check_entries(&parse(&lines), &up, &replies);
}

#[tokio::test]
async fn disabled_access_log_writes_nothing() {
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(up.addr, "access_log: { enabled: false }"));
    let addr = gw.addr("main");
    three_requests(addr).await;
    // Nothing can be waited for; give a line time to show up if one were written.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gw.stdout_lines(), Vec::<String>::new());
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn file_target_gets_the_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let up = upstream::named("up").await;
    let mut gw = Gateway::start(&config(
        up.addr,
        &format!("access_log: {{ target: \"{}\" }}", file.display()),
    ));
    let addr = gw.addr("main");
    let replies = three_requests(addr).await;
    let read = || {
        std::fs::read_to_string(&file)
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let lines = wait_lines(3, read);
    check_entries(&parse(&lines), &up, &replies);
    assert_eq!(gw.stdout_lines(), Vec::<String>::new());
}

/// Requests cut by the shutdown deadline are still logged: the log is flushed
/// before the process exits.
#[tokio::test]
async fn lines_of_the_last_requests_survive_shutdown() {
    const HELD: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let up = support::raw::upstream(support::raw::Action::Hold(support::raw::ok_response(
        "late",
    )))
    .await;
    let mut gw = Gateway::start(&format!(
        "shutdown_timeout: 300ms\n{}",
        config(
            up.addr,
            &format!("access_log: {{ target: \"{}\" }}", path.display())
        )
    ));
    let addr = gw.addr("main");
    let mut pending = Vec::new();
    for i in 0..HELD {
        pending.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut tx, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let _ = tx
                .send_request(get("localhost", &format!("/api/cut/{i}")))
                .await;
        }));
    }
    assert!(up.wait_requests(HELD, Duration::from_secs(10)).await);
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    for p in pending {
        p.abort();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let entries = parse(&text.lines().map(str::to_owned).collect::<Vec<_>>());
    let cut = entries
        .iter()
        .filter(|e| {
            e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/cut/"))
        })
        .count();
    assert_eq!(cut, HELD, "lines for the cut requests: {cut} of {HELD}");
}
