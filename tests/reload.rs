//! Config reload: under load, by file replacement and by SIGHUP; broken files
//! refused while the old config keeps serving; listeners added and removed;
//! upstream pools kept when their definition did not change.
// Test helpers panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::{Gateway, upstream};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// GET `path` over a new connection; `None` when the exchange fails.
async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    timeout(Duration::from_secs(5), async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let resp = tx
            .send_request(support::get("localhost", path))
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .ok()
    .flatten()
}

/// Polls `path` until it answers 200 with `want` (10 s at most).
async fn wait_body(addr: SocketAddr, path: &str, want: &str) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if let Some((200, body)) = try_get(addr, path).await
            && body == want
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A config: `/version` answers `v{version}` directly, `/app` goes to `app_upstream`.
fn versioned(version: u32, a: SocketAddr, b: SocketAddr, app_upstream: &str) -> String {
    format!(
        r#"listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  a: {{ endpoints: ["{a}"] }}
  b: {{ endpoints: ["{b}"] }}
routes:
  - name: version
    match: {{ path: /version }}
    respond: {{ body: "v{version}" }}
  - name: app
    match: {{ prefix: /app }}
    upstream: {app_upstream}
"#
    )
}

#[derive(Default, Debug)]
struct Stats {
    ok: usize,
    failures: Vec<String>,
    versions_seen: Vec<u32>,
}

/// Sequential requests until `stop`: `/version` then `/app`, over one
/// keep-alive connection or a new connection each time.
async fn load(addr: SocketAddr, keep_alive: bool, stop: Arc<AtomicBool>) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut last_version = 0;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let path = if i.is_multiple_of(2) {
            "/version"
        } else {
            "/app"
        };
        i += 1;
        if conn.as_ref().is_none_or(|c| c.is_closed()) || !keep_alive {
            let stream = match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    stats.failures.push(format!("connect: {e}"));
                    continue;
                }
            };
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok((tx, c)) => {
                    tokio::spawn(c);
                    conn = Some(tx);
                }
                Err(e) => {
                    stats.failures.push(format!("handshake: {e}"));
                    continue;
                }
            }
        }
        let Some(tx) = conn.as_mut() else { continue };
        let result = timeout(Duration::from_secs(5), async {
            tx.ready().await?;
            let resp = tx.send_request(support::get("localhost", path)).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        match result {
            Err(_) => stats.failures.push(format!("{path}: timed out")),
            Ok(Err(e)) => {
                stats.failures.push(format!("{path}: {e}"));
                conn = None;
            }
            Ok(Ok((status, body))) => {
                let body = String::from_utf8_lossy(&body).into_owned();
                if status != 200 {
                    stats.failures.push(format!("{path}: {status} {body}"));
                } else if path == "/version" {
                    let v: u32 = body.trim_start_matches('v').parse().unwrap_or(0);
                    if v < last_version {
                        stats
                            .failures
                            .push(format!("version went back from {last_version} to {v}"));
                    }
                    last_version = v;
                    if stats.versions_seen.last() != Some(&v) {
                        stats.versions_seen.push(v);
                    }
                    stats.ok += 1;
                } else if body == "a" || body == "b" {
                    stats.ok += 1;
                } else {
                    stats
                        .failures
                        .push(format!("{path}: unexpected body {body:?}"));
                }
            }
        }
    }
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let a = upstream::named("a").await;
    let b = upstream::named("b").await;
    let mut gw = Gateway::start(&versioned(0, a.addr, b.addr, "a"));
    let addr = gw.addr("main");

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|t| tokio::spawn(load(addr, t % 2 == 0, stop.clone())))
        .collect();

    for version in 1..=6u32 {
        let app = if version % 2 == 0 { "a" } else { "b" };
        let yaml = versioned(version, a.addr, b.addr, app);
        if version % 2 == 0 {
            // Through SIGHUP (the file watcher may notice the change too).
            std::fs::write(&gw.config_path, &yaml).unwrap();
            gw.signal("HUP");
        } else {
            gw.replace_config(&yaml);
        }
        assert!(
            wait_body(addr, "/version", &format!("v{version}")).await,
            "version {version} never served:\n{}",
            gw.stderr()
        );
        assert!(
            wait_body(addr, "/app", app).await,
            "/app never moved to {app}:\n{}",
            gw.stderr()
        );
        // Spread the reloads over the load.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let rest = Duration::from_secs(3).saturating_sub(started.elapsed());
    tokio::time::sleep(rest).await;
    stop.store(true, Ordering::Relaxed);

    let mut total = 0;
    for (t, task) in tasks.into_iter().enumerate() {
        let stats = timeout(LIMIT, task)
            .await
            .expect("load task did not stop")
            .unwrap();
        assert!(
            stats.failures.is_empty(),
            "task {t}: {} failures, first: {:?}",
            stats.failures.len(),
            &stats.failures[..stats.failures.len().min(5)]
        );
        assert!(stats.ok > 0, "task {t} made no request");
        assert_eq!(
            stats.versions_seen.last(),
            Some(&6),
            "task {t} saw {:?}",
            stats.versions_seen
        );
        total += stats.ok;
    }
    assert!(total >= 40, "only {total} requests under load");
    let deadline = Instant::now() + LIMIT;
    while gw.count_log("config reloaded") < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.count_log("config reloaded") >= 6, "{}", gw.stderr());
    assert!(gw.wait_for_log(r#"trigger="SIGHUP""#, LIMIT));
    assert_eq!(gw.count_log("config reload failed"), 0, "{}", gw.stderr());
}

#[tokio::test]
async fn sighup_alone_reloads() {
    let a = upstream::named("a").await;
    let b = upstream::named("b").await;
    let mut gw = Gateway::start(&versioned(1, a.addr, b.addr, "a"));
    let addr = gw.addr("main");

    // Point the config path at a file in another folder: the gateway watches
    // the config's own folder, so edits to the target raise no file event and
    // only SIGHUP can pick them up.
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("real.yaml");
    std::fs::write(&target, versioned(1, a.addr, b.addr, "a")).unwrap();
    // Swapping the link in is a change the watcher sees: let it reload once
    // (with a marker body) so that it has settled before the real edit.
    std::fs::write(
        &target,
        versioned(1, a.addr, b.addr, "a").replace("v1", "v1-link"),
    )
    .unwrap();
    let link = gw.config_path.with_file_name(".link.tmp");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    std::fs::rename(&link, &gw.config_path).unwrap();
    assert!(
        wait_body(addr, "/version", "v1-link").await,
        "{}",
        gw.stderr()
    );
    assert!(gw.wait_for_log(r#"trigger="file change""#, LIMIT));

    std::fs::write(&target, versioned(2, a.addr, b.addr, "b")).unwrap();
    gw.signal("HUP");
    assert!(wait_body(addr, "/version", "v2").await, "{}", gw.stderr());
    assert!(wait_body(addr, "/app", "b").await, "{}", gw.stderr());
    assert!(gw.wait_for_log(r#"config reloaded trigger="SIGHUP""#, LIMIT));
    assert_eq!(gw.count_log(r#"config reloaded trigger="SIGHUP""#), 1);
    assert_eq!(
        gw.count_log(r#"trigger="file change""#),
        1,
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn broken_files_are_refused_and_the_old_config_keeps_serving() {
    let a = upstream::named("a").await;
    let b = upstream::named("b").await;
    let mut gw = Gateway::start(&versioned(1, a.addr, b.addr, "a"));
    let addr = gw.addr("main");
    let file = gw.config_path.display().to_string();

    // A YAML syntax error: the second `}` on line 7 (column 30) closes nothing.
    let syntax = versioned(2, a.addr, b.addr, "b")
        .replace("match: { path: /version }", "match: { path: /version }}");
    let line7 = syntax.lines().nth(6).unwrap();
    assert_eq!(line7, "    match: { path: /version }}");
    assert_eq!(line7.rfind('}'), Some(29));
    gw.replace_config(&syntax);
    assert!(
        gw.wait_for_log("config reload failed", LIMIT),
        "{}",
        gw.stderr()
    );
    let stderr = gw.stderr();
    assert!(
        stderr.contains(&format!("{file}:7:30: misplaced bracket")),
        "no {file}:7:30 in:\n{stderr}"
    );
    assert_eq!(try_get(addr, "/version").await, Some((200, "v1".into())));
    assert_eq!(try_get(addr, "/app").await, Some((200, "a".into())));

    // A reference to an upstream that does not exist: reported at its value.
    let unknown = versioned(3, a.addr, b.addr, "nope");
    assert_eq!(unknown.lines().nth(10), Some("    upstream: nope"));
    gw.replace_config(&unknown);
    let deadline = Instant::now() + LIMIT;
    while gw.count_log("config reload failed") < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stderr = gw.stderr();
    assert!(
        stderr.contains(&format!(
            "{file}:11:15: route `app` names upstream `nope`, which is not defined"
        )),
        "no {file}:11:15 in:\n{stderr}"
    );
    assert_eq!(try_get(addr, "/version").await, Some((200, "v1".into())));
    assert_eq!(try_get(addr, "/app").await, Some((200, "a".into())));

    // Fixed: picked up.
    gw.replace_config(&versioned(4, a.addr, b.addr, "b"));
    assert!(wait_body(addr, "/version", "v4").await, "{}", gw.stderr());
    assert!(wait_body(addr, "/app", "b").await, "{}", gw.stderr());
    assert_eq!(gw.count_log("config reload failed"), 2, "{}", gw.stderr());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn listeners_added_and_removed_on_reload() {
    let base = r#"listeners: [{ name: main, address: "127.0.0.1:0" }]
routes:
  - name: hello
    match: { path: /hello }
    respond: { body: "hello" }
"#;
    let mut gw = Gateway::start(base);
    let main = gw.addr("main");
    let port = free_port();
    let with_extra = format!(
        r#"listeners:
  - {{ name: main, address: "127.0.0.1:0" }}
  - {{ name: extra, address: "127.0.0.1:{port}" }}
routes:
  - name: hello
    match: {{ path: /hello }}
    respond: {{ body: "hello" }}
  - name: only-extra
    listeners: [extra]
    match: {{ path: /extra }}
    respond: {{ body: "extra" }}
"#
    );
    gw.replace_config(&with_extra);
    assert!(gw.wait_for_log("listener=extra", LIMIT), "{}", gw.stderr());
    let extra = gw.addr("extra");
    assert_eq!(extra, SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(wait_body(extra, "/extra", "extra").await, "{}", gw.stderr());
    assert!(wait_body(extra, "/hello", "hello").await);
    assert_eq!(try_get(main, "/extra").await.map(|r| r.0), Some(404));
    assert_eq!(try_get(main, "/hello").await, Some((200, "hello".into())));

    gw.replace_config(base);
    assert!(
        gw.wait_for_log("listener removed", LIMIT),
        "{}",
        gw.stderr()
    );
    let deadline = Instant::now() + LIMIT;
    let mut refused = false;
    while Instant::now() < deadline {
        match TcpStream::connect(extra).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            // While the workers' SO_REUSEPORT sockets close one by one, a
            // handshake that landed in a closing socket's queue is reset.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the removed listener still accepts");
    assert_eq!(try_get(main, "/hello").await, Some((200, "hello".into())));
}

/// An HTTP/1.1 upstream that counts the TCP connections it accepted and
/// records the peer of each request.
struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

async fn counting_upstream() -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (acc, rec) = (accepted.clone(), peers.clone());
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    rec.lock().unwrap().push(peer);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("pooled")))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Counting {
        addr,
        accepted,
        peers,
    }
}

#[tokio::test]
async fn unchanged_upstream_keeps_its_pool() {
    let up = counting_upstream().await;
    // Each version adds a comment line at the top, so the upstream's
    // definition moves down the file without changing.
    let config = |version: u32, pool: &str| {
        format!(
            r#"{}workers: 1
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"]{pool} }}
routes:
  - name: version
    match: {{ path: /version }}
    respond: {{ body: "v{version}" }}
  - name: app
    match: {{ prefix: /app }}
    upstream: app
"#,
            "# a comment line\n".repeat(version as usize),
            up.addr
        )
    };
    let mut gw = Gateway::start(&config(1, ""));
    let addr = gw.addr("main");

    assert_eq!(try_get(addr, "/app").await, Some((200, "pooled".into())));
    assert_eq!(try_get(addr, "/app").await, Some((200, "pooled".into())));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);

    // Only a route changes: the upstream, and its pooled connection, stay.
    gw.replace_config(&config(2, ""));
    assert!(wait_body(addr, "/version", "v2").await, "{}", gw.stderr());
    assert_eq!(try_get(addr, "/app").await, Some((200, "pooled".into())));
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "a new upstream connection after a route-only reload"
    );
    let peers = up.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 3);
    assert!(peers.iter().all(|p| *p == peers[0]), "{peers:?}");

    // The upstream's definition changes: it gets a fresh pool.
    gw.replace_config(&config(3, ", pool: { max_idle: 8 }"));
    assert!(wait_body(addr, "/version", "v3").await, "{}", gw.stderr());
    assert_eq!(try_get(addr, "/app").await, Some((200, "pooled".into())));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}

/// `n` distinct free ports below the ephemeral range: no client connection
/// (of this test or another running at the same time) can be using one as its
/// local port, which would make binding it fail.
fn ports_outside_the_ephemeral_range(n: usize) -> Vec<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let floor = 10_000u16;
    assert!(
        usize::from(low - floor) > n * 4,
        "ephemeral range starts at {low}"
    );
    // Start somewhere different per process, so that parallel runs rarely meet.
    let span = low - floor - 2 * n as u16;
    let start = floor + (std::process::id() % u32::from(span)) as u16;
    let mut held = Vec::new();
    for port in start..low {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
            if held.len() == n {
                break;
            }
        }
    }
    assert_eq!(held.len(), n, "not enough free ports below {low}");
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// GET /hello on a new connection to `addr`, connecting again until the port
/// accepts (bounded); the status, or `None` when it never answered.
async fn first_answer(addr: SocketAddr) -> Option<u16> {
    let deadline = Instant::now() + LIMIT;
    let stream = loop {
        match TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(_) => return None,
        }
    };
    timeout(LIMIT, async {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let resp = tx
            .send_request(support::get("localhost", "/hello"))
            .await
            .ok()?;
        Some(resp.status().as_u16())
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_listeners_route_with_the_new_config_from_the_first_connection() {
    // Many listeners added at once: if accepting started before the new config
    // is in place, the first ones would accept while the rest are still being
    // started, and route by the old config (which has no such listener: 404).
    // Clients are already connecting when the sockets are bound, so their
    // requests are the first each new listener serves.
    const ADDED: usize = 200;
    const PROBED: usize = 8;
    let base = r#"workers: 1
listeners: [{ name: main, address: "127.0.0.1:0" }]
routes:
  - name: hello
    match: { path: /hello }
    respond: { body: "hello" }
"#;
    let mut gw = Gateway::start(base);
    let ports = ports_outside_the_ephemeral_range(ADDED);
    let mut extended =
        String::from("workers: 1\nlisteners:\n  - { name: main, address: \"127.0.0.1:0\" }\n");
    for (i, port) in ports.iter().enumerate() {
        extended.push_str(&format!(
            "  - {{ name: l{i}, address: \"127.0.0.1:{port}\" }}\n"
        ));
    }
    extended.push_str(
        "routes:\n  - name: hello\n    match: { path: /hello }\n    respond: { body: \"hello\" }\n",
    );

    for round in 1..=4 {
        let clients: Vec<_> = ports[..PROBED]
            .iter()
            .map(|&p| tokio::spawn(first_answer(SocketAddr::from(([127, 0, 0, 1], p)))))
            .collect();
        // Renamed into place, so that no reload reads a half-written file.
        gw.replace_config(&extended);
        gw.signal("HUP");
        for (i, c) in clients.into_iter().enumerate() {
            let status = c.await.unwrap();
            assert_eq!(
                status,
                Some(200),
                "round {round}, listener l{i}: first request answered {status:?}"
            );
        }
        assert_eq!(gw.count_log("config reload failed"), 0, "{}", gw.stderr());
        let reloaded = gw.count_log("config reloaded");

        // Back to one listener, and wait until every port is closed again.
        gw.replace_config(base);
        gw.signal("HUP");
        let deadline = Instant::now() + LIMIT;
        while gw.count_log("config reloaded") == reloaded && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for &p in &ports {
            let deadline = Instant::now() + LIMIT;
            while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], p)))
                .await
                .is_ok()
            {
                assert!(Instant::now() < deadline, "port {p} still accepts");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let main = gw.addr("main");
    assert_eq!(try_get(main, "/hello").await, Some((200, "hello".into())));
}
