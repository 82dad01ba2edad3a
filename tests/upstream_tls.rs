//! TLS towards upstreams: HTTPS/1.1 and h2 over TLS to real TLS servers,
//! verification against a given CA, SNI name override, client certificates
//! (upstream mTLS), `insecure_skip_verify`, connection reuse, and the config
//! checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use support::{Gateway, Reply, get_path};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A CA that signs leaf certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names` (DNS names or IPs): (cert PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A self-signed leaf for `localhost` (no CA): (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a TLS upstream saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    versions: Mutex<Vec<http::Version>>,
}

/// A TLS upstream serving HTTP/1.1 and h2 (by ALPN) with `cert`/`key`;
/// with `client_ca`, it requires a client certificate from that CA. Answers
/// `/trailers` with a body and gRPC-style trailers, anything else with the
/// HTTP version it saw.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    fn requests(&self) -> usize {
        self.seen.versions.lock().unwrap().len()
    }
}

async fn tls_upstream(cert: &str, key: &str, client_ca: Option<&str>) -> TlsUpstream {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let rec = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            rec.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                rec.handshakes.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    async move {
                        rec.versions.lock().unwrap().push(req.version());
                        let path = req.uri().path().to_owned();
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(answer(&path))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsUpstream { addr, seen, task }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn answer(path: &str) -> Response<Body> {
    if path.ends_with("/trailers") {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "fine".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers)),
        ];
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap();
    }
    Response::new(BodyExt::boxed(Full::new(Bytes::from_static(b"ok"))))
}

/// A gateway with `/u` proxied to upstream `u` defined by `upstream` (YAML
/// flow mapping), and a direct `/ok` route. One worker, so that every request
/// meets the same connection pool.
fn gateway(upstream: &str) -> (Gateway, SocketAddr) {
    let mut gw = Gateway::start(&format!(
        r#"
workers: 1
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  u: {upstream}
routes:
  - {{ name: ok, match: {{ path: /ok }}, respond: {{ body: still-here }} }}
  - {{ name: u, match: {{ prefix: /u }}, upstream: u }}
"#
    ));
    let addr = gw.addr("main");
    (gw, addr)
}

/// A 502 `upstream-connect-failed` problem.
fn assert_connect_failed(r: &Reply) {
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        r.json()["type"],
        "urn:portico:problem:upstream-connect-failed"
    );
}

/// A CA, its PEM file in `dir`, and a TLS upstream with a leaf for
/// `localhost` and `127.0.0.1`.
async fn verified_upstream(dir: &Path, client_ca: Option<&str>) -> (Ca, PathBuf, TlsUpstream) {
    let ca = Ca::new("test CA");
    let ca_file = write(dir, "ca.pem", &ca.pem());
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let up = tls_upstream(&cert, &key, client_ca).await;
    (ca, ca_file, up)
}

#[tokio::test]
async fn https_upstream_verified_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, ca_file, up) = verified_upstream(dir.path(), None).await;
    // By IP (IP SAN) and by DNS name (the endpoint's host is the SNI name).
    for endpoint in [up.addr.to_string(), format!("localhost:{}", up.addr.port())] {
        let (_gw, addr) = gateway(&format!(
            r#"{{ endpoints: ["{endpoint}"], tls: {{ ca: "{}" }} }}"#,
            ca_file.display()
        ));
        let r = get_path(addr, "/u/x").await;
        assert_eq!(r.status, 200, "{endpoint}: {}", r.text());
    }
    assert!(
        up.seen
            .versions
            .lock()
            .unwrap()
            .iter()
            .all(|v| *v == http::Version::HTTP_11)
    );
}

#[tokio::test]
async fn h2_over_tls_upstream_speaks_http2_and_passes_trailers() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, ca_file, up) = verified_upstream(dir.path(), None).await;
    let (_gw, addr) = gateway(&format!(
        r#"{{ endpoints: ["{}"], protocol: h2, tls: {{ ca: "{}" }} }}"#,
        up.addr,
        ca_file.display()
    ));
    let r = get_path(addr, "/u/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        *up.seen.versions.lock().unwrap(),
        vec![http::Version::HTTP_2]
    );

    // gRPC-style trailers pass through to an HTTP/2 client.
    let req = Request::get(format!("http://localhost:{}/u/trailers", addr.port()))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status();
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (status, collected.to_bytes(), trailers)
    })
    .await
    .unwrap();
    assert_eq!(resp.0, 200);
    assert_eq!(&resp.1[..], b"payload");
    let trailers = resp.2.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
}

#[tokio::test]
async fn a_wrong_ca_is_refused_and_the_upstream_sees_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, _ca_file, up) = verified_upstream(dir.path(), None).await;
    let other = write(dir.path(), "other.pem", &Ca::new("other CA").pem());
    for protocol in ["http1", "h2"] {
        let (gw, addr) = gateway(&format!(
            r#"{{ endpoints: ["{}"], protocol: {protocol}, tls: {{ ca: "{}" }} }}"#,
            up.addr,
            other.display()
        ));
        let r = get_path(addr, "/u/x").await;
        assert_connect_failed(&r);
        assert!(
            !r.text().contains(&up.addr.to_string()),
            "leaks the address: {}",
            r.text()
        );
        assert_eq!(get_path(addr, "/ok").await.status, 200);
        // The reason reaches the log, not the client.
        assert!(
            gw.wait_for_log("TLS handshake with", Duration::from_secs(5)),
            "{}",
            gw.stderr()
        );
    }
    assert_eq!(up.requests(), 0);
    assert_eq!(up.seen.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn server_name_overrides_the_verified_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let ca_file = write(dir.path(), "ca.pem", &ca.pem());
    let (cert, key) = ca.leaf(&["api.internal"]);
    let up = tls_upstream(&cert, &key, None).await;

    let (_gw, addr) = gateway(&format!(
        r#"{{ endpoints: ["{}"], tls: {{ ca: "{}", server_name: api.internal }} }}"#,
        up.addr,
        ca_file.display()
    ));
    let r = get_path(addr, "/u/x").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Without it, 127.0.0.1 is verified, and the certificate does not name it.
    let (_gw, addr) = gateway(&format!(
        r#"{{ endpoints: ["{}"], tls: {{ ca: "{}" }} }}"#,
        up.addr,
        ca_file.display()
    ));
    assert_connect_failed(&get_path(addr, "/u/x").await);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn client_certificate_for_an_upstream_that_requires_one() {
    let dir = tempfile::tempdir().unwrap();
    let clients = Ca::new("client CA");
    let (_ca, ca_file, up) = verified_upstream(dir.path(), Some(&clients.pem())).await;
    let (cert, key) = clients.leaf(&["gateway.internal"]);
    let cert_file = write(dir.path(), "client.pem", &cert);
    let key_file = write(dir.path(), "client.key", &key);

    let (_gw, addr) = gateway(&format!(
        r#"{{ endpoints: ["{}"], tls: {{ ca: "{}", client_cert: {{ cert: "{}", key: "{}" }} }} }}"#,
        up.addr,
        ca_file.display(),
        cert_file.display(),
        key_file.display()
    ));
    let r = get_path(addr, "/u/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests(), 1);

    let (_gw, addr) = gateway(&format!(
        r#"{{ endpoints: ["{}"], tls: {{ ca: "{}" }} }}"#,
        up.addr,
        ca_file.display()
    ));
    assert_connect_failed(&get_path(addr, "/u/x").await);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_self_signed_certificate_and_says_so() {
    let (cert, key) = self_signed();
    let up = tls_upstream(&cert, &key, None).await;
    let (gw, addr) = gateway(&format!(
        r#"{{ endpoints: ["{}"], tls: {{ insecure_skip_verify: true }} }}"#,
        up.addr
    ));
    let r = get_path(addr, "/u/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let warning = gw
        .stderr()
        .lines()
        .find(|l| l.contains("TLS certificate verification is OFF"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no warning:\n{}", gw.stderr()));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("upstream u: TLS certificate verification is OFF (insecure_skip_verify)"),
        "{warning}"
    );
}

#[tokio::test]
async fn pooled_tls_connections_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, ca_file, up) = verified_upstream(dir.path(), None).await;
    for protocol in ["http1", "h2"] {
        let before = up.seen.connections.load(Ordering::SeqCst);
        let (_gw, addr) = gateway(&format!(
            r#"{{ endpoints: ["{}"], protocol: {protocol}, tls: {{ ca: "{}" }} }}"#,
            up.addr,
            ca_file.display()
        ));
        for _ in 0..10 {
            let r = get_path(addr, "/u/x").await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let opened = up.seen.connections.load(Ordering::SeqCst) - before;
        assert_eq!(opened, 1, "{protocol}: TLS connections for 10 requests");
        assert_eq!(up.requests(), 10 * if protocol == "h2" { 2 } else { 1 });
    }
}

#[tokio::test]
async fn health_checks_of_a_tls_upstream_use_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, ca_file, up) = verified_upstream(dir.path(), None).await;
    for protocol in ["http1", "h2"] {
        let before = up.requests();
        let (_gw, addr) = gateway(&format!(
            r#"{{ endpoints: ["{}"], protocol: {protocol}, tls: {{ ca: "{}" }}, health_check: {{ path: /healthz, interval: 100ms, timeout: 1s, unhealthy_threshold: 1 }} }}"#,
            up.addr,
            ca_file.display()
        ));
        // Over plain TCP a check would never reach the TLS server as a
        // request, and would mark the endpoint down.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while up.requests() < before + 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "{protocol}: no checks arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = get_path(addr, "/u/x").await;
        assert_eq!(r.status, 200, "{protocol}: {}", r.text());
    }
}

/// `portico check` on `yaml` written as `portico.yaml` in `dir`: (exit code, stderr).
fn check(dir: &Path, yaml: &str) -> (Option<i32>, String) {
    let config = write(dir, "portico.yaml", yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn check_config(upstream: &str) -> String {
    format!(
        "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nupstreams:\n  u: {upstream}\nroutes:\n  - {{ name: u, match: {{ prefix: / }}, upstream: u }}\n"
    )
}

#[test]
fn check_refuses_inconsistent_upstream_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    write(dir.path(), "ca.pem", &ca.pem());

    // `h2` needs `tls`; `h2c` refuses it.
    let (code, out) = check(
        dir.path(),
        &check_config(r#"{ endpoints: ["127.0.0.1:1"], protocol: h2 }"#),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("portico.yaml:3:"), "{out}");
    assert!(
        out.contains("`protocol: h2`") && out.contains("needs `tls`"),
        "{out}"
    );
    let (code, out) = check(
        dir.path(),
        &check_config(r#"{ endpoints: ["127.0.0.1:1"], protocol: h2c, tls: { ca: ca.pem } }"#),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("`protocol: h2c`"), "{out}");

    // A relative path is read from the config file's folder.
    let (code, out) = check(
        dir.path(),
        &check_config(r#"{ endpoints: ["127.0.0.1:1"], protocol: h2, tls: { ca: ca.pem } }"#),
    );
    assert_eq!(code, Some(0), "{out}");

    // Files that do not load, and a bad server name, are reported at the upstream.
    let (code, out) = check(
        dir.path(),
        &check_config(r#"{ endpoints: ["127.0.0.1:1"], tls: { ca: missing.pem } }"#),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("portico.yaml:3:"), "{out}");
    assert!(out.contains("missing.pem"), "{out}");
    let (code, out) = check(
        dir.path(),
        &check_config(
            r#"{ endpoints: ["127.0.0.1:1"], tls: { ca: ca.pem, client_cert: { cert: ca.pem, key: nokey.pem } } }"#,
        ),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("nokey.pem"), "{out}");
    // A key that is not the certificate's.
    let (cert, _) = ca.leaf(&["gateway.internal"]);
    let (_, other_key) = ca.leaf(&["gateway.internal"]);
    write(dir.path(), "client.pem", &cert);
    write(dir.path(), "other.key", &other_key);
    let (code, out) = check(
        dir.path(),
        &check_config(
            r#"{ endpoints: ["127.0.0.1:1"], tls: { client_cert: { cert: client.pem, key: other.key } } }"#,
        ),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("client_cert"), "{out}");
    let (code, out) = check(
        dir.path(),
        &check_config(
            r#"{ endpoints: ["127.0.0.1:1"], tls: { ca: ca.pem, insecure_skip_verify: true } }"#,
        ),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("insecure_skip_verify"), "{out}");
    let (code, out) = check(
        dir.path(),
        &check_config(r#"{ endpoints: ["127.0.0.1:1"], tls: { server_name: "bad name" } }"#),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("server_name"), "{out}");
}
