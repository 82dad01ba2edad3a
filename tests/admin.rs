//! The admin API, against the real binary: every endpoint, the bearer token,
//! reloads that work and reloads that fail, and the answers to wrong paths
//! and methods.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use support::{Gateway, Reply, get_path, send, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A config with the admin API on a free port, a direct response and a
/// proxied route; `admin_extra` goes inside `admin: { ... }`.
fn config(upstream: SocketAddr, body: &str, admin_extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
admin: {{ address: "127.0.0.1:0"{admin_extra} }}
upstreams:
  app: {{ endpoints: ["{upstream}"] }}
routes:
  - name: hello
    match: {{ path: /hello }}
    respond: {{ status: 200, body: "{body}" }}
  - name: app
    match: {{ prefix: /app }}
    upstream: app
"#
    )
}

/// One admin request, with an optional bearer token.
async fn admin(addr: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(addr, req.body(Full::new(Bytes::new())).unwrap()).await
}

fn assert_problem(r: &Reply, status: u16, slug: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["status"], status);
    assert_eq!(p["type"], format!("urn:portico:problem:{slug}"), "{p}");
}

#[tokio::test]
async fn every_endpoint_answers() {
    let up = upstream::named("alpha").await;
    let mut gw = Gateway::start(&config(up.addr, "hi", ""));
    let addr = gw.addr("admin");
    assert_ne!(addr, gw.addr("main"));

    let r = admin(addr, Method::GET, "/health", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!({ "status": "ok" }));
    let r = admin(addr, Method::HEAD, "/health", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    let r = admin(addr, Method::GET, "/ready", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");

    let r = admin(addr, Method::GET, "/config", None).await;
    assert_eq!(r.status, 200);
    let cfg = r.json();
    assert_eq!(cfg["listeners"][0]["name"], "main");
    assert_eq!(cfg["routes"][1]["upstream"], "app");
    assert_eq!(cfg["admin"]["token"], serde_json::Value::Null);

    // An endpoint that has served a request.
    assert_eq!(get_path(gw.addr("main"), "/app/x").await.status, 200);
    let r = admin(addr, Method::GET, "/upstreams", None).await;
    assert_eq!(r.status, 200);
    let ups = r.json();
    let app = &ups["upstreams"][0];
    assert_eq!(app["name"], "app");
    let ep = &app["endpoints"][0];
    assert_eq!(ep["address"], up.addr.to_string());
    assert_eq!(ep["resolved"], serde_json::json!([up.addr.to_string()]));
    assert_eq!(ep["healthy"], true);
    assert_eq!(ep["ejected"], false);
    assert_eq!(ep["ejected_for_ms"], serde_json::Value::Null);
    assert_eq!(ep["ejections"], 0);
    assert_eq!(ep["in_flight"], 0);
    // Latency is tracked only for `peak_ewma`.
    assert_eq!(ep["ewma_ms"], serde_json::Value::Null);
    assert_eq!(ep["warmth"], 1.0);

    let r = admin(addr, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.text().contains("portico_requests_total{"), "{}", r.text());
    let req = Request::get("/metrics")
        .header("host", "localhost")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,*/*;q=0.1",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(addr, req).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.text().ends_with("# EOF\n"), "{}", r.text());

    // The admin listener is not a proxy listener, and the proxy has no admin.
    assert_problem(
        &admin(addr, Method::GET, "/hello", None).await,
        404,
        "admin-not-found",
    );
    assert_eq!(get_path(gw.addr("main"), "/health").await.status, 404);
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow() {
    let up = upstream::named("alpha").await;
    let mut gw = Gateway::start(&config(up.addr, "hi", ""));
    let addr = gw.addr("admin");
    let r = admin(addr, Method::GET, "/reload", None).await;
    assert_problem(&r, 405, "admin-method-not-allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    for path in ["/health", "/ready", "/config", "/upstreams", "/metrics"] {
        let r = admin(addr, Method::POST, path, None).await;
        assert_problem(&r, 405, "admin-method-not-allowed");
        assert_eq!(r.header("allow"), Some("GET, HEAD"), "{path}");
    }
    assert_problem(
        &admin(addr, Method::DELETE, "/nope", None).await,
        404,
        "admin-not-found",
    );
}

#[tokio::test]
async fn a_configured_token_is_required_everywhere() {
    let up = upstream::named("alpha").await;
    // The token may come from the environment, like any value.
    let mut gw = Gateway::start_with_env(
        &config(up.addr, "hi", ", token: \"${ADMIN_TOKEN}\""),
        &[("ADMIN_TOKEN", "s3cret-t0ken")],
    );
    let addr = gw.addr("admin");
    for (token, path) in [
        (None, "/health"),
        (Some("wrong"), "/health"),
        (Some("s3cret-t0ke"), "/metrics"),
        (None, "/no-such-path"),
    ] {
        let r = admin(addr, Method::GET, path, token).await;
        assert_problem(&r, 401, "admin-unauthorized");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portico-admin\"")
        );
    }
    let r = admin(addr, Method::POST, "/reload", Some("wrong")).await;
    assert_eq!(r.status, 401);

    let r = admin(addr, Method::GET, "/health", Some("s3cret-t0ken")).await;
    assert_eq!(r.status, 200);
    // The scheme is case-insensitive.
    let req = Request::get("/ready")
        .header("host", "localhost")
        .header("authorization", "bearer s3cret-t0ken")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(addr, req).await.status, 200);

    let r = admin(addr, Method::GET, "/config", Some("s3cret-t0ken")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["admin"]["token"], "[redacted]");
    assert!(!r.text().contains("s3cret"), "{}", r.text());
    let r = admin(addr, Method::GET, "/metrics", Some("s3cret-t0ken")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn reload_applies_the_file_or_returns_its_errors() {
    let up = upstream::named("alpha").await;
    let mut gw = Gateway::start(&config(up.addr, "one", ""));
    let addr = gw.addr("admin");
    let main = gw.addr("main");
    assert_eq!(get_path(main, "/hello").await.text(), "one");

    gw.replace_config(&config(up.addr, "two", ""));
    let r = admin(addr, Method::POST, "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "reloaded");
    assert_eq!(get_path(main, "/hello").await.text(), "two");

    // Invalid: the error text, with its position in the file, and the
    // previous config keeps serving.
    let broken = config(up.addr, "three", "").replace("upstream: app", "upstream: nope");
    gw.replace_config(&broken);
    let r = admin(addr, Method::POST, "/reload", None).await;
    assert_problem(&r, 422, "admin-config-invalid");
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("portico.yaml:"), "{detail}");
    assert!(
        detail.contains("names upstream `nope`, which is not defined"),
        "{detail}"
    );
    assert_eq!(get_path(main, "/hello").await.text(), "two");

    // Valid but not applicable: a new listener's address is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let with_listener = config(up.addr, "four", "").replace(
        "listeners: [",
        &format!("listeners: [{{ name: extra, address: \"{busy}\" }}, "),
    );
    gw.replace_config(&with_listener);
    let r = admin(addr, Method::POST, "/reload", None).await;
    assert_problem(&r, 500, "admin-reload-failed");
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains(&format!("cannot listen on {busy}")),
        "{detail}"
    );
    assert_eq!(get_path(main, "/hello").await.text(), "two");
}

#[tokio::test]
async fn a_reload_that_changes_admin_warns_that_it_waits_for_a_restart() {
    let up = upstream::named("alpha").await;
    let mut gw = Gateway::start(&config(up.addr, "one", ""));
    let addr = gw.addr("admin");
    gw.replace_config(&config(up.addr, "one", ", token: later"));
    let r = admin(addr, Method::POST, "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(gw.wait_for_log(
        "`admin` changed; it takes effect at the next restart",
        Duration::from_secs(5)
    ));
    // Still no token needed: the admin API was set up at start.
    assert_eq!(admin(addr, Method::GET, "/health", None).await.status, 200);
}

#[tokio::test]
async fn ready_turns_503_when_shutdown_starts() {
    // An upstream that holds its answer until told, so that the drain waits.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    let (answer, answer_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = s.read(&mut head).await.unwrap();
        let _ = arrived_tx.send(());
        let _ = answer_rx.await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
            .await
            .unwrap();
    });
    let mut gw = Gateway::start(&config(upstream_addr, "hi", ""));
    let addr = gw.addr("admin");
    let main = gw.addr("main");
    let in_flight = tokio::spawn(async move { get_path(main, "/app/slow").await });
    tokio::time::timeout(Duration::from_secs(5), arrived)
        .await
        .unwrap()
        .unwrap();

    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin(addr, Method::GET, "/ready", None).await;
        if r.status == 503 {
            assert_eq!(r.json()["status"], "not ready");
            break;
        }
        assert!(Instant::now() < deadline, "still ready while draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Health is about the process, not about taking traffic.
    assert_eq!(admin(addr, Method::GET, "/health", None).await.status, 200);
    answer.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().text(), "late");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn an_admin_address_in_use_stops_the_start_with_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nadmin: {{ address: \"{busy}\" }}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["run", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("portico kept running with its admin address taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {busy} (admin API)")),
        "{stderr}"
    );
    assert!(!stderr.contains("portico started"), "{stderr}");
}

#[tokio::test]
async fn admin_is_off_unless_configured() {
    let up = upstream::named("alpha").await;
    let yaml = config(up.addr, "hi", "").replace("admin: { address: \"127.0.0.1:0\" }\n", "");
    assert!(!yaml.contains("admin"));
    let gw = Gateway::start(&yaml);
    assert!(!gw.stderr().contains("listener=admin"), "{}", gw.stderr());
}
