//! The command line: log filter errors, and `portico check` without side
//! effects and with a closed stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const CONFIG: &str = "\
listeners:
  - name: main
    address: 127.0.0.1:8080
routes:
  - name: hello
    match: { path: /hello }
    respond: { body: hi }
";

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("portico.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `portico [args] check -c config` with `RUST_LOG` set or removed.
fn check(config: &Path, args: &[&str], rust_log: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
    cmd.args(args).args(["check", "-c"]).arg(config);
    match rust_log {
        Some(v) => cmd.env("RUST_LOG", v),
        None => cmd.env_remove("RUST_LOG"),
    };
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn an_invalid_rust_log_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), CONFIG);

    let out = check(&config, &[], Some("portico=loud"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid RUST_LOG `portico=loud`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    // `--log-level` wins over RUST_LOG; a valid RUST_LOG or none is fine.
    let out = check(&config, &["--log-level", "warn"], Some("portico=loud"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = check(&config, &[], Some("portico=debug"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = check(&config, &[], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = check(&config, &["--log-level", "portico=loud"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("invalid --log-level"));
}

#[test]
fn check_with_a_closed_stdout_succeeds_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), CONFIG);
    // A pipe whose read end is closed before the process starts: every write
    // to stdout fails with EPIPE, as when piped into `head` that has exited.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A failing check still fails.
    let bad = write_config(dir.path(), &CONFIG.replace("path: /hello", "path: hello"));
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&bad)
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn check_does_not_create_the_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let yaml = format!("access_log: {{ target: \"{}\" }}\n{CONFIG}", log.display());
    let config = write_config(dir.path(), &yaml);
    let out = check(&config, &[], Some("warn"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": ok"), "{}", text(&out.stdout));
    assert!(!log.exists(), "portico check created {}", log.display());

    // A file in a folder that does not exist is still reported.
    let missing = dir.path().join("nowhere").join("access.log");
    let yaml = format!(
        "access_log: {{ target: \"{}\" }}\n{CONFIG}",
        missing.display()
    );
    let config = write_config(dir.path(), &yaml);
    let out = check(&config, &[], Some("warn"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(":0:0: cannot open access log"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
