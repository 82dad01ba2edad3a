//! Test harness: the real `portico` binary on 127.0.0.1:0 in front of real
//! upstream servers started by the test.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod grpc;
pub mod h1;
pub mod raw;
pub mod redis;
pub mod upstream;
pub mod ws;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A running gateway process.
pub struct Gateway {
    child: Child,
    listeners: HashMap<String, SocketAddr>,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

fn collect(lines: Arc<Mutex<Vec<String>>>, src: impl std::io::Read + Send + 'static) {
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
}

impl Gateway {
    /// Writes `yaml` to a temp dir and starts `portico run` on it; waits until
    /// every listener is up (10 s at most).
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &[])
    }

    /// Like [`start`], with extra environment variables.
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("portico.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["run", "-c"])
            .arg(&config_path)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portico");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(stderr.clone(), child.stderr.take().unwrap());
        collect(stdout.clone(), child.stdout.take().unwrap());
        let mut gw = Gateway {
            child,
            listeners: HashMap::new(),
            dir,
            config_path,
            stderr,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if gw.stderr().contains("portico started") {
                break;
            }
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("portico exited with {status}:\n{}", gw.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "portico did not start:\n{}",
                gw.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        gw.refresh_listeners();
        gw
    }

    fn refresh_listeners(&mut self) {
        for line in self.stderr.lock().unwrap().iter() {
            if !line.contains(" listening ") {
                continue;
            }
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(|v| v.trim_matches('"').to_string())
            };
            if let (Some(name), Some(addr)) = (field("listener="), field("address=")) {
                self.listeners.insert(name, addr.parse().unwrap());
            }
        }
    }

    /// The bound address of a listener.
    pub fn addr(&mut self, listener: &str) -> SocketAddr {
        self.refresh_listeners();
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener}:\n{}", self.stderr()))
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Lines written to stdout (the access log by default).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` (bounded).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Counts occurrences of `needle` in stderr.
    pub fn count_log(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Replaces the config file the way editors do: write aside, then rename.
    pub fn replace_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".portico.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Sends a signal (e.g. "HUP", "TERM") to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (bounded) and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response with its body read whole.
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request over a new HTTP/1.1 connection (10 s bound).
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    bounded(async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        read(tx.send_request(req).await.unwrap()).await
    })
    .await
}

/// Sends one request over a new h2c (prior knowledge) connection (10 s bound).
pub async fn send_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    bounded(async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        read(tx.send_request(req).await.unwrap()).await
    })
    .await
}

/// One exchange, bounded to 10 s.
async fn bounded(exchange: impl std::future::Future<Output = Reply>) -> Reply {
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("request timed out")
}

async fn read(resp: Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

/// A GET request for `http://{host}{path}`.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// GET `path` on `addr` with Host `localhost`.
pub async fn get_path(addr: SocketAddr, path: &str) -> Reply {
    send(addr, get("localhost", path)).await
}
