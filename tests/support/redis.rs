//! `redis-server` for tests: one node, or a Redis Cluster of three masters,
//! on free loopback ports, killed on drop. A node can be stopped and
//! started again on the same port (a Redis outage, then its recovery).
//!
//! A node can also serve TLS only (`rediss://`), with a certificate for
//! 127.0.0.1 from a CA made for it, optionally requiring client
//! certificates from that CA.
//!
//! Also compiled into the crate's own unit tests (`src/ratelimit/redis`),
//! so it uses nothing but std and the dev-dependencies `tempfile` and `rcgen`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// How long a node may take to answer PING after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files of a TLS node, in its folder.
pub struct TlsFiles {
    /// The CA that signed the node's certificate and `client_cert`.
    pub ca: PathBuf,
    /// A client certificate from `ca`, and its key.
    pub client_cert: PathBuf,
    /// The key of `client_cert`.
    pub client_key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// The node refuses clients without a certificate from `ca`.
    require_client_cert: bool,
}

impl TlsFiles {
    /// Makes a CA, a server certificate for 127.0.0.1 and a client
    /// certificate, written into `dir`.
    pub fn new(dir: &Path, require_client_cert: bool) -> TlsFiles {
        let ca = new_ca("test redis CA");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(Vec::new());
        TlsFiles {
            ca: write("ca.pem", ca.pem()),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            require_client_cert,
        }
    }
}

/// A self-signed CA named `name`.
fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// The PEM of a CA that signed nothing: a TLS node does not verify with it.
pub fn unrelated_ca_pem() -> String {
    new_ca("unrelated CA").pem()
}

/// One running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    cluster: bool,
    /// With TLS, the node serves TLS only, on `port`.
    tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A standalone node on a free port.
    pub fn start() -> RedisServer {
        Self::start_node(false, None)
    }

    /// A standalone node serving TLS only on a free port (see [`Self::tls`]);
    /// with `require_client_cert`, clients must present a certificate from
    /// its CA.
    pub fn start_tls(require_client_cert: bool) -> RedisServer {
        Self::start_node(false, Some(require_client_cert))
    }

    fn start_node(cluster: bool, tls: Option<bool>) -> RedisServer {
        // A port found free can be taken before the server binds it: retry.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                cluster,
                tls: tls.map(|clients| TlsFiles::new(dir.path(), clients)),
                dir,
            };
            if server.try_start() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// The URL of the node: `redis://127.0.0.1:<port>`, or `rediss://` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The TLS files of a node started with [`Self::start_tls`].
    pub fn tls(&self) -> &TlsFiles {
        self.tls.as_ref().expect("not a TLS node")
    }

    /// The node's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the node (SIGKILL: an abrupt outage); its data is lost.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same port (bounded wait for PING).
    pub fn restart(&mut self) {
        self.stop();
        // The port was just released; a few tries cover a slow release.
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.try_start() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends one command (inline protocol, arguments without spaces) and
    /// returns the raw reply; plain nodes only.
    pub fn command(&self, args: &[&str]) -> String {
        assert!(self.tls.is_none(), "`command` speaks plain TCP");
        command(self.addr(), args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn try_start(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let log = self.dir.path().join("redis.log").display().to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--dir", &dir, "--logfile", &log])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            let conf = self.dir.path().join("nodes.conf").display().to_string();
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file", &conf])
                .args(["--cluster-node-timeout", "2000"]);
        }
        if let Some(tls) = &self.tls {
            // TLS only: the plain port is closed.
            cmd.args(["--port", "0", "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(&tls.server_cert)
                .arg("--tls-key-file")
                .arg(&tls.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args([
                    "--tls-auth-clients",
                    if tls.require_client_cert { "yes" } else { "no" },
                ]);
        } else {
            cmd.args(["--port", &port]);
        }
        let mut child = cmd.spawn().expect("start redis-server (is it installed?)");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RedisServer {
    /// Whether the node answers PING (over TLS with `redis-cli`, bounded).
    fn ping(&self) -> bool {
        let Some(tls) = &self.tls else {
            return command(self.addr(), &["PING"]).is_ok_and(|r| r.starts_with("+PONG"));
        };
        // `redis-cli` has no connect timeout: only once the port is open.
        if TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).is_err() {
            return false;
        }
        let mut cli = Command::new("redis-cli");
        cli.args(["--tls", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--cacert")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.client_cert)
            .arg("--key")
            .arg(&tls.client_key)
            .arg("PING")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cli.spawn().expect("run redis-cli (is it installed?)");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
        let mut out = String::new();
        let _ = child.stdout.take().unwrap().read_to_string(&mut out);
        out.trim() == "PONG"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of three masters, no replicas.
pub struct RedisCluster {
    /// The nodes, in the order their URLs are given.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three cluster-enabled nodes, joins them with
    /// `redis-cli --cluster create`, and waits for `cluster_state:ok` on
    /// every node (bounded).
    pub fn start() -> RedisCluster {
        let nodes: Vec<_> = (0..3)
            .map(|_| RedisServer::start_node(true, None))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli (is it installed?)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            while !node
                .command(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
            {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// The URLs of every node (the seeds).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One command over a fresh connection; the reply as read within 2 s.
fn command(addr: SocketAddr, args: &[&str]) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes())?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete(&reply) {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Whether `reply` holds one whole RESP reply of the kinds tests read
/// (simple string, error, integer, bulk string; an array ends the read
/// at its first line's end plus whatever arrived with it).
fn complete(reply: &[u8]) -> bool {
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match reply[0] {
        b'$' => {
            let len: i64 = String::from_utf8_lossy(&reply[1..end])
                .parse()
                .unwrap_or(-1);
            len < 0 || reply.len() >= end + 2 + usize::try_from(len).unwrap_or(0) + 2
        }
        _ => true,
    }
}
