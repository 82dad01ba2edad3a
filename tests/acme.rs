//! ACME end to end against pebble (the Let's Encrypt test CA) started here on
//! loopback, with pebble-challtestsrv answering its DNS queries with
//! 127.0.0.1: a certificate is issued (HTTP-01, TLS-ALPN-01), served at once,
//! renewed at two thirds of its (short) life, and the renewed one served on
//! the next handshake. Skipped when pebble is not installed.
#![cfg(feature = "acme")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use support::Gateway;
use support::upstream;

const DOMAIN: &str = "acme.portico.test";
/// Pebble's certificate lifetime here: renewal is due 20 s after issuance.
const VALIDITY_SECS: u64 = 30;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn installed(bin: &str) -> bool {
    Command::new(bin)
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

struct Pebble {
    _pebble: Proc,
    _dns: Proc,
    directory: String,
    management: SocketAddr,
    /// The CA pebble's own HTTPS endpoints are signed by (made here).
    ca_file: PathBuf,
    ca_der: CertificateDer<'static>,
}

/// Starts pebble with its validation ports pointing at the gateway's.
fn start_pebble(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble wfe test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::NoCa;
    let cert = params.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("wfe-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(dir.join("wfe.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("wfe.key"), key.serialize_pem()).unwrap();

    // A port picked free may be taken again before pebble binds it (tests
    // run side by side), so a pebble that exits at start is tried again on
    // new ports; one that neither listens nor exits fails with its log.
    // (pebble-challtestsrv logs a failed bind and keeps running: a taken DNS
    // port shows as a failed validation, not here.)
    let mut attempts = 0;
    let (pebble, dns, acme_port, mgmt_port) = loop {
        attempts += 1;
        let (acme_port, mgmt_port, dns_port) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": dir.join("wfe.pem"),
                "privateKey": dir.join("wfe.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": VALIDITY_SECS,
            }
        });
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let dns = Proc(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{}", free_port())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let log_file = dir.join("pebble.log");
        let log = std::fs::File::create(&log_file).unwrap();
        let logged = || std::fs::read_to_string(&log_file).unwrap_or_default();
        let mut pebble = Proc(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_file)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_AUTHZREUSE", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let exited = loop {
            if TcpStream::connect(("127.0.0.1", acme_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", mgmt_port)).is_ok()
            {
                break false;
            }
            if pebble.0.try_wait().unwrap().is_some() {
                break true;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                logged()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        if !exited {
            break (pebble, dns, acme_port, mgmt_port);
        }
        assert!(
            attempts < 3,
            "pebble exited at start {attempts} times:\n{}",
            logged()
        );
    };
    Pebble {
        _pebble: pebble,
        _dns: dns,
        directory: format!("https://127.0.0.1:{acme_port}/dir"),
        management: SocketAddr::from(([127, 0, 0, 1], mgmt_port)),
        ca_file,
        ca_der: ca_cert.der().clone(),
    }
}

fn client_config(root: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// The root pebble issues under, from its management endpoint.
fn issuing_root(p: &Pebble) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(p.management).unwrap();
    let conn = rustls::ClientConnection::new(
        client_config(p.ca_der.clone()),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /roots/0 HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let pem = &text[text.find("-----BEGIN").expect("a PEM root")..];
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// The leaf a verified handshake with SNI `DOMAIN` gets, or the error.
fn served(addr: SocketAddr, root: &CertificateDer<'static>) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(
        client_config(root.clone()),
        ServerName::try_from(DOMAIN).unwrap(),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls.conn.peer_certificates().unwrap()[0].to_vec())
}

fn stored_leaf(storage: &Path) -> Option<Vec<u8>> {
    let pem = std::fs::read(storage.join(DOMAIN).join("cert.pem")).ok()?;
    CertificateDer::pem_slice_iter(&pem)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

fn wait_served(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    not: Option<&[u8]>,
    timeout: Duration,
    gw: &Gateway,
) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match served(addr, root) {
            Ok(leaf) if Some(leaf.as_slice()) != not => return leaf,
            Ok(_) => "the previous certificate".to_owned(),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "no new ACME certificate served ({last}):\n{}",
            gw.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn issue_and_renew(challenge: &str) {
    if !installed("pebble") || !installed("pebble-challtestsrv") {
        eprintln!("SKIPPED: `pebble` is not installed (apt-get install pebble)");
        return;
    }
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = start_pebble(dir.path(), http_port, tls_port);
    let storage = dir.path().join("acme");
    let yaml = format!(
        r#"
listeners:
  - name: plain
    address: "127.0.0.1:{http_port}"
  - name: tls
    address: "127.0.0.1:{tls_port}"
    tls:
      acme:
        directory: "{}"
        domains: ["{DOMAIN}"]
        storage: "{}"
        ca: "{}"
        challenge: {challenge}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: app, match: {{ prefix: / }}, upstream: app }}
"#,
        pebble.directory,
        storage.display(),
        pebble.ca_file.display(),
        up.addr
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("tls");
    let root = issuing_root(&pebble);

    // Issued, verified against pebble's root, and the one on disk.
    let first = wait_served(addr, &root, None, Duration::from_secs(30), &gw);
    assert_eq!(stored_leaf(&storage).as_deref(), Some(first.as_slice()));
    assert!(gw.stderr().contains("ACME certificate installed"));

    // Renewed at two thirds of its 30 s life, and the renewal is served on
    // the next handshake (not only written to disk).
    let second = wait_served(addr, &root, Some(&first), Duration::from_secs(40), &gw);
    assert_ne!(first, second);
    assert_eq!(stored_leaf(&storage).as_deref(), Some(second.as_slice()));

    // A restart serves the stored certificate from the first handshake.
    drop(gw);
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("tls");
    let again = served(addr, &root).unwrap();
    assert!(again == second || Some(again.clone()) == stored_leaf(&storage));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_issues_renews_and_serves_at_once() {
    issue_and_renew("http_01").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_issues_renews_and_serves_at_once() {
    issue_and_renew("tls_alpn_01").await;
}
