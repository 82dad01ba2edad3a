//! A port another process listens on is refused, even though Portico's own
//! sockets use `SO_REUSEPORT`: at startup (exit 1) and on reload (the old
//! config keeps serving).
// Test helpers panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Gateway, get_path};

const LIMIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `(name, address)` listeners, answering every path with `body`.
fn config(listeners: &[(&str, String)], body: &str) -> String {
    let mut yaml = String::from("workers: 2\nlisteners:\n");
    for (name, address) in listeners {
        yaml.push_str(&format!("  - {{ name: {name}, address: \"{address}\" }}\n"));
    }
    yaml.push_str(&format!(
        "routes:\n  - {{ name: all, match: {{ prefix: / }}, respond: {{ body: \"{body}\" }} }}\n"
    ));
    yaml
}

#[test]
fn a_second_process_on_the_same_port_exits_1() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut first = Gateway::start(&config(&[("main", address.clone())], "first"));
    assert_eq!(first.addr("main"), SocketAddr::from(([127, 0, 0, 1], port)));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.yaml");
    std::fs::write(&path, config(&[("main", address.clone())], "second")).unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if status.is_none() {
        let _ = second.kill();
        let _ = second.wait();
    }
    let mut stderr = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on {address} (listener `main`): address already in use"
        )),
        "{stderr}"
    );

    // The first one still has the port to itself.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = rt.block_on(get_path(first.addr("main"), "/"));
        assert_eq!((r.status.as_u16(), r.text()), (200, "first".into()));
    }
}

#[tokio::test]
async fn a_reload_adding_a_port_in_use_fails_and_keeps_the_old_config() {
    let port = free_port();
    let taken = format!("127.0.0.1:{port}");
    let mut other = Gateway::start(&config(&[("main", taken.clone())], "other"));
    let other_addr = other.addr("main");

    let mut gw = Gateway::start(&config(&[("main", "127.0.0.1:0".into())], "v1"));
    let main = gw.addr("main");
    gw.replace_config(&config(
        &[("main", "127.0.0.1:0".into()), ("extra", taken.clone())],
        "v2",
    ));
    assert!(
        gw.wait_for_log("config reload failed", LIMIT),
        "{}",
        gw.stderr()
    );
    assert!(
        gw.stderr().contains(&format!(
            "cannot listen on {taken} (listener `extra`): address already in use"
        )),
        "{}",
        gw.stderr()
    );
    assert!(!gw.stderr().contains("listener=extra"), "{}", gw.stderr());
    let r = get_path(main, "/").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "v1".into()));
    // Every connection to the port still reaches the other process.
    for _ in 0..10 {
        let r = get_path(other_addr, "/").await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "other".into()));
    }
}
