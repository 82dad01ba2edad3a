//! TLS termination end to end: SNI selection (exact, wildcard, default,
//! refusal), ALPN h2 and http/1.1, minimum version, certificate reload from
//! disk and with the config, mTLS, the 421 SNI/Host binding, HSTS and the
//! redirect to HTTPS. Certificates are made here with rcgen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use support::Gateway;
use support::upstream::{self, Upstream};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A fixed RSA key: ring signs with RSA keys but cannot generate them.
const RSA_KEY: &str = "
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCC30hA4FyFxswH
tZEdYOJnEiUsqq9zcYnyPlwH40JYyPQgYgEXWGyvV7fAVgO5fXJ39iDQSxGLDgfP
vlMKHgQWOncVSLo79RxAr2YZ7q8VEfIuics3fTCT7GXncxsp2N4j5QhDRUL30Fo/
IXAQoTU2w+zraFQ16DtG9P3N2/LWtJ0g7ZaPkEljd164SAda17ME8Y5oZpkSZp29
BkF7bk7tQJTaSGqeYx//MCFRfsaHj1gzNFjlN+3A/SdD2yNbi4M89CTnh8SjNtAO
RO7knyH2okOVPguRqsoRIC9032zT8A6Ysu2JScMaDtZV52I3Qm5UBsqqN2N6yE0r
YlPnsmJJAgMBAAECggEAA116GPpL7BVaXgu2prKSOm6Wgx6ucpb695N6lVSsJOah
6bVAwZjApATq5iiwDCnOyDPi0HL7CVV725p8EyNbcouKpVhLOvXIsLHHO9J4hl+s
Ql3BBR+/IIabG4eeWAX0tv08KFKpxVUtBOOMuKNp4Asgq/BGU2Pce6zFW/DpvnM5
ZKKMoHaSB8m830wmlVMoWAS6WExW6Ho7iiOKMnKehg1JBIOFDuyGXdWcYfzOOrvB
m3yRxF1a4wl47oP66XNPrvc2IKCXEwnPQ6DmmzV5r7GD/SyiiwV42fETmU8yR0y2
4wtAH5GzEGxEdvDKIG98U584rdv93AB1zQkKVhZ+UwKBgQC35qTGjqXasMlwfw2E
bANrIDnPbsVEGYy13paWG2I7wspeDEGYcyxuBNoc34AbfWFZhdXclnX9wVBF2Ug1
w2ivBkiOS7mGZJopQXRZRyHnmAbSfR+Gci4Q18G65I92wQC4jyxRlTWM4CU3waP/
dIV+18seUBAkD17WpiKJaPSQzwKBgQC2Ll4xTWzM+2FKgXxB8WAKi048wXhVogLY
CewPo+EWbmvsjKw4Ap1ewCGS+eDcLY1rvV5/aBVTQ/TkdNdtSdDgYA6yqUSAr/UL
c8sn5DfLRQeaG34+SDkdrXEo7ZFfP+CL+l086HwGTd068VkF9TT7xiHAZHuaQ9cs
t2ejIUOxZwKBgQCBLJ89YWGalWdJf9Us2Polu0MgM3yY8yFldm5sDdwYgiDHovBI
d04UEZBri4pexNkmmt23znAeyDTse00/hnz3xAAfA43TmsK2i+V/+HkWRjE0lPMZ
6wX0irjn4DftgHBTMy48OASfaap62aeqflxu1oE0T6Smz60cNSI5RuHS/QKBgHXG
hB5bb3sVCFCiZTI8WVp3tJySdrjlg/EmePWjfGCEAkFqr+uFxTb7/riF0liFGmgM
hIrZPvAVfrwyzRJaJi7n6piV1TNcjY5ZzXx8jZVbiw6Vt4eMKWCGQCG1c8WgBgp4
UM6PfZ6Vt+/jFypC233pGOjIDSAtu22tI9LSLnEBAoGAIxz5f4IiMfCjaLiWUJkK
2YyMlrGMT8fWc5Vd0CxLx0Ar0fe/dw4g6RtfQ3Fg6oqBwMCffv/qa2N+cjC2l4Cd
JetkgjvfKNgLG8jaxGBpohnX0EL2RMhz5UDyUCSbDiMXafJRg45kyM23tWmyY25c
Utdqpgh9iGv6wJzDum82SLk=
-----END PRIVATE KEY-----
";

type Issuer = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str) -> Issuer {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate signed by `ca`, with its chain (leaf, CA) and key as PEM.
struct Leaf {
    chain: String,
    key: String,
    der: CertificateDer<'static>,
}

fn leaf_with(ca: &Issuer, names: &[&str], key: KeyPair, cn: &str) -> Leaf {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name
        .push(DnType::OrganizationName, "Portico Tests");
    let cert = p.signed_by(&key, ca).unwrap();
    Leaf {
        chain: format!("{}{}", cert.pem(), ca.pem()),
        key: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn leaf(ca: &Issuer, names: &[&str]) -> Leaf {
    leaf_with(ca, names, KeyPair::generate().unwrap(), names[0])
}

fn rsa_leaf(ca: &Issuer, names: &[&str]) -> Leaf {
    let key = KeyPair::from_pem_and_sign_algo(RSA_KEY.trim(), &rcgen::PKCS_RSA_SHA256).unwrap();
    leaf_with(ca, names, key, names[0])
}

/// Writes `content` to `dir/name` atomically (write aside, rename).
fn put(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Writes a leaf's chain and key as `<stem>.crt` / `<stem>.key`; returns the
/// YAML flow mapping for `certificates`.
fn install(dir: &Path, stem: &str, leaf: &Leaf) -> String {
    let c = put(dir, &format!("{stem}.crt"), &leaf.chain);
    let k = put(dir, &format!("{stem}.key"), &leaf.key);
    format!("{{ cert: \"{}\", key: \"{}\" }}", c.display(), k.display())
}

fn gateway_yaml(up: &Upstream, tls: &str, extra_listeners: &str) -> String {
    format!(
        r#"
listeners:
  - name: tls
    address: "127.0.0.1:0"
    tls:
{tls}
{extra_listeners}
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - {{ name: app, match: {{ prefix: / }}, upstream: app }}
"#,
        up.addr
    )
}

/// Accepts any server certificate (the tests check which one was served by
/// its bytes), but checks the handshake signatures.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Clone, Default)]
struct ClientOpts<'a> {
    /// Verify the server against this CA (default: accept any certificate).
    trust: Option<&'a Issuer>,
    alpn: Option<&'a [&'a [u8]]>,
    tls12_only: bool,
    client_cert: Option<&'a Leaf>,
}

fn client_config(o: &ClientOpts<'_>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if o.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap();
    let b = match o.trust {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            b.with_root_certificates(roots)
        }
        None => b
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider))),
    };
    let mut cfg = match o.client_cert {
        Some(l) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(l.chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap();
            let key = PrivateKeyDer::from_pem_slice(l.key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = o
        .alpn
        .unwrap_or(&[b"http/1.1"])
        .iter()
        .map(|p| p.to_vec())
        .collect();
    Arc::new(cfg)
}

/// What a TLS exchange gave.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    /// The leaf certificate the server presented.
    served: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
}

/// Connects (SNI `sni`, or none for an IP) and sends `GET path` with `host`.
async fn fetch(
    addr: std::net::SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
    opts: &ClientOpts<'_>,
) -> Result<Got, String> {
    let cfg = client_config(opts);
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .header("x-client-cert-subject", "CN=forged")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .header("x-client-cert-subject", "CN=forged")
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = Response::into_parts(resp);
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        served,
        alpn,
    })
}

async fn get(addr: std::net::SocketAddr, name: &str) -> Result<Got, String> {
    fetch(addr, name, name, "/", &ClientOpts::default()).await
}

#[tokio::test]
async fn sni_picks_exact_wildcard_and_default_certificates() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let a = leaf(&ca, &["a.test"]);
    let wild = leaf(&ca, &["*.wild.test"]);
    let exact = rsa_leaf(&ca, &["x.wild.test"]);
    let certs = format!(
        "      certificates: [{}, {}, {}]",
        install(dir.path(), "a", &a),
        install(dir.path(), "wild", &wild),
        install(dir.path(), "exact", &exact)
    );
    let mut gw = Gateway::start(&gateway_yaml(&up, &certs, ""));
    let addr = gw.addr("tls");

    // Exact name, verified against the CA.
    let trusted = ClientOpts {
        trust: Some(&ca),
        ..Default::default()
    };
    let got = fetch(addr, "a.test", "a.test", "/", &trusted)
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "app");
    assert_eq!(got.served, a.der);
    // A wildcard covers one label; an exact name (an RSA certificate) beats it.
    assert_eq!(get(addr, "y.wild.test").await.unwrap().served, wild.der);
    assert_eq!(get(addr, "Y.WILD.test").await.unwrap().served, wild.der);
    let rsa = fetch(addr, "x.wild.test", "x.wild.test", "/", &trusted)
        .await
        .unwrap();
    assert_eq!(rsa.served, exact.der);
    assert_eq!(rsa.status, 200);
    // Two labels under the wildcard, or an unknown name: the first certificate.
    assert_eq!(get(addr, "a.b.wild.test").await.unwrap().served, a.der);
    assert_eq!(get(addr, "other.test").await.unwrap().served, a.der);
    // No SNI at all (an IP address): the first certificate too.
    let ip = fetch(addr, "127.0.0.1", "127.0.0.1", "/", &ClientOpts::default())
        .await
        .unwrap();
    assert_eq!(ip.served, a.der);
    assert_eq!(
        ip.status, 200,
        "a connection without SNI is not bound to a host"
    );
}

#[tokio::test]
async fn unknown_sni_can_be_refused() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let a = leaf(&ca, &["a.test"]);
    let tls = format!(
        "      unknown_sni: refuse\n      certificates: [{}]",
        install(dir.path(), "a", &a)
    );
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, ""));
    let addr = gw.addr("tls");
    assert_eq!(get(addr, "a.test").await.unwrap().status, 200);
    assert!(get(addr, "other.test").await.is_err());
    assert!(get(addr, "127.0.0.1").await.is_err());
}

#[tokio::test]
async fn alpn_h2_and_http1_are_both_proxied_and_https_is_forwarded() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let tls = format!(
        "      certificates: [{}]",
        install(dir.path(), "a", &leaf(&ca, &["a.test"]))
    );
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, ""));
    let addr = gw.addr("tls");
    for (alpn, want) in [
        (&[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], b"http/1.1"),
    ] {
        let opts = ClientOpts {
            alpn: Some(alpn),
            ..Default::default()
        };
        let got = fetch(addr, "a.test", "a.test", "/p", &opts).await.unwrap();
        assert_eq!(got.alpn.as_deref(), Some(want));
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "app");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers["x-forwarded-proto"], "https");
        assert!(
            s.headers.get("x-client-cert-subject").is_some(),
            "no client auth: headers untouched"
        );
    }
}

#[tokio::test]
async fn a_tls13_only_listener_refuses_a_tls12_client() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let tls = format!(
        "      min_version: \"1.3\"\n      certificates: [{}]",
        install(dir.path(), "a", &leaf(&ca, &["a.test"]))
    );
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, ""));
    let addr = gw.addr("tls");
    let tls12 = ClientOpts {
        tls12_only: true,
        ..Default::default()
    };
    assert!(fetch(addr, "a.test", "a.test", "/", &tls12).await.is_err());
    assert_eq!(get(addr, "a.test").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_requests() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let old = leaf(&ca, &["a.test"]);
    let tls = format!("      certificates: [{}]", install(dir.path(), "a", &old));
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, ""));
    let addr = gw.addr("tls");
    assert_eq!(get(addr, "a.test").await.unwrap().served, old.der);

    // Continuous traffic while the files are replaced.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(addr, "a.test").await {
                    Ok(g) if g.status == 200 => done.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let renewed = leaf(&ca, &["a.test"]);
    install(dir.path(), "a", &renewed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(addr, "a.test").await.unwrap().served == renewed.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "renewed certificate not served:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(done.load(Ordering::Relaxed) > 0);
    assert!(gw.wait_for_log("certificates reloaded", Duration::from_secs(2)));

    // A broken file: logged, and the renewed certificate keeps serving.
    put(
        dir.path(),
        "a.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    assert!(
        gw.wait_for_log("certificate reload failed", Duration::from_secs(5)),
        "{}",
        gw.stderr()
    );
    assert_eq!(get(addr, "a.test").await.unwrap().served, renewed.der);
    // A key of another certificate: refused too.
    put(dir.path(), "a.crt", &renewed.chain);
    put(dir.path(), "a.key", &old.key);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get(addr, "a.test").await.unwrap().served, renewed.der);
    assert!(
        gw.count_log("certificate reload failed") >= 2,
        "{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn a_config_reload_with_a_broken_certificate_is_refused() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let a = leaf(&ca, &["a.test"]);
    let tls = format!("      certificates: [{}]", install(dir.path(), "a", &a));
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, ""));
    let addr = gw.addr("tls");
    let missing =
        "      certificates: [{ cert: \"/nonexistent/x.crt\", key: \"/nonexistent/x.key\" }]";
    gw.replace_config(&gateway_yaml(&up, missing, ""));
    assert!(
        gw.wait_for_log("cannot load certificate", Duration::from_secs(5)),
        "{}",
        gw.stderr()
    );
    assert!(gw.stderr().contains("/nonexistent/x.crt"));
    assert_eq!(get(addr, "a.test").await.unwrap().served, a.der);
}

fn mtls_yaml(up: &Upstream, dir: &Path, ca: &Issuer, server: &Leaf, mode: &str) -> String {
    let ca_path = put(dir, "clients.pem", &ca.pem());
    let tls = format!(
        "      certificates: [{}]\n      client_auth: {{ mode: {mode}, ca: \"{}\" }}",
        install(dir, "srv", server),
        ca_path.display()
    );
    gateway_yaml(up, &tls, "")
}

#[tokio::test]
async fn mtls_required() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("Server CA");
    let client_ca = ca("Client CA");
    let other_ca = ca("Other CA");
    let yaml = mtls_yaml(
        &up,
        dir.path(),
        &client_ca,
        &leaf(&server_ca, &["a.test"]),
        "required",
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("tls");

    assert!(get(addr, "a.test").await.is_err(), "no client certificate");
    let stranger = leaf(&other_ca, &["client.test"]);
    let opts = ClientOpts {
        client_cert: Some(&stranger),
        ..Default::default()
    };
    assert!(
        fetch(addr, "a.test", "a.test", "/", &opts).await.is_err(),
        "unknown CA"
    );

    let good = leaf_with(
        &client_ca,
        &["client.test"],
        KeyPair::generate().unwrap(),
        "client one",
    );
    let opts = ClientOpts {
        client_cert: Some(&good),
        ..Default::default()
    };
    let got = fetch(addr, "a.test", "a.test", "/", &opts).await.unwrap();
    assert_eq!(got.status, 200);
    let seen = up.seen().pop().unwrap();
    let subject: Vec<_> = seen
        .headers
        .get_all("x-client-cert-subject")
        .iter()
        .collect();
    assert_eq!(subject.len(), 1, "the client's forged header is replaced");
    assert_eq!(subject[0], "O=Portico Tests,CN=client one");
    assert_eq!(seen.headers["x-client-cert-san"], "client.test");
}

#[tokio::test]
async fn mtls_optional() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("Server CA");
    let client_ca = ca("Client CA");
    let yaml = mtls_yaml(
        &up,
        dir.path(),
        &client_ca,
        &leaf(&server_ca, &["a.test"]),
        "optional",
    );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("tls");

    let got = get(addr, "a.test").await.unwrap();
    assert_eq!(got.status, 200);
    let seen = up.seen().pop().unwrap();
    assert!(
        seen.headers.get("x-client-cert-subject").is_none(),
        "forged header removed"
    );
    assert!(seen.headers.get("x-client-cert-san").is_none());

    let good = leaf(&client_ca, &["client.test"]);
    let opts = ClientOpts {
        client_cert: Some(&good),
        ..Default::default()
    };
    assert_eq!(
        fetch(addr, "a.test", "a.test", "/", &opts)
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        up.seen().pop().unwrap().headers["x-client-cert-san"],
        "client.test"
    );
    let stranger = leaf(&ca("Other CA"), &["client.test"]);
    let opts = ClientOpts {
        client_cert: Some(&stranger),
        ..Default::default()
    };
    assert!(
        fetch(addr, "a.test", "a.test", "/", &opts).await.is_err(),
        "a bad certificate still fails"
    );
}

#[tokio::test]
async fn host_must_match_sni_unless_binding_is_off() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let certs = install(dir.path(), "ab", &leaf(&ca, &["a.test", "b.test"]));
    let mut gw = Gateway::start(&gateway_yaml(
        &up,
        &format!("      certificates: [{certs}]"),
        "",
    ));
    let addr = gw.addr("tls");
    let opts = ClientOpts::default();
    let got = fetch(addr, "a.test", "b.test", "/", &opts).await.unwrap();
    assert_eq!(got.status, 421);
    assert_eq!(got.headers["content-type"], "application/problem+json");
    assert!(String::from_utf8_lossy(&got.body).contains("misdirected-request"));
    assert_eq!(
        fetch(addr, "a.test", "A.TEST:443", "/", &opts)
            .await
            .unwrap()
            .status,
        200
    );
    let h2 = ClientOpts {
        alpn: Some(&[b"h2"]),
        ..Default::default()
    };
    assert_eq!(
        fetch(addr, "a.test", "b.test", "/", &h2)
            .await
            .unwrap()
            .status,
        421
    );
    drop(gw);

    let tls = format!("      sni_host_binding: false\n      certificates: [{certs}]");
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, ""));
    let addr = gw.addr("tls");
    assert_eq!(
        fetch(addr, "a.test", "b.test", "/", &opts)
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn hsts_and_redirect_to_https() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let tls = format!(
        "      hsts: {{ max_age: 1d, include_subdomains: true }}\n      certificates: [{}]",
        install(dir.path(), "a", &leaf(&ca, &["a.test"]))
    );
    let plain = r#"  - name: plain
    address: "127.0.0.1:0"
    redirect_https: { port: 8443, status: 301 }"#;
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, plain));
    let addr = gw.addr("tls");
    let got = get(addr, "a.test").await.unwrap();
    assert_eq!(
        got.headers["strict-transport-security"],
        "max-age=86400; includeSubDomains"
    );
    // Responses the gateway makes carry it too.
    let got = fetch(addr, "a.test", "b.test", "/", &ClientOpts::default())
        .await
        .unwrap();
    assert_eq!(got.status, 421);
    assert!(got.headers.contains_key("strict-transport-security"));

    let plain = gw.addr("plain");
    let resp = support::raw::exchange(
        plain,
        b"GET /x?y=1 HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 301);
    assert_eq!(resp.header("location"), Some("https://a.test:8443/x?y=1"));
    assert_eq!(resp.header("strict-transport-security"), None);
    let resp = support::raw::exchange(plain, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    assert_eq!(up.count(), 1);
}

#[test]
fn check_reports_unloadable_certificates_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("Test CA");
    let a = leaf(&ca, &["a.test"]);
    let b = leaf(&ca, &["b.test"]);
    put(dir.path(), "a.crt", &a.chain);
    put(dir.path(), "b.key", &b.key);
    // Relative paths resolve against the config file's folder.
    let yaml = "listeners:\n  - name: tls\n    address: \"127.0.0.1:0\"\n    tls:\n      \
                certificates: [{ cert: a.crt, key: b.key }]\n";
    let config = put(dir.path(), "portico.yaml", yaml);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&config)
        .current_dir("/")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("portico.yaml:5:7:"), "{err}");
    assert!(
        err.contains("the key does not belong to the certificate"),
        "{err}"
    );
    put(dir.path(), "b.key", &a.key);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(&config)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With client-certificate headers forwarded anywhere, a client cannot forge
/// them on any listener, in any spelling.
#[tokio::test]
async fn client_cert_headers_cannot_be_forged_on_other_listeners() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("Server CA");
    let client_ca = ca("Client CA");
    let yaml = mtls_yaml(
        &up,
        dir.path(),
        &client_ca,
        &leaf(&server_ca, &["a.test"]),
        "optional",
    )
    .replace(
        "upstreams:",
        "  - { name: plain, address: \"127.0.0.1:0\" }\nupstreams:",
    );
    let mut gw = Gateway::start(&yaml);
    let plain = gw.addr("plain");
    let resp = support::raw::exchange(
        plain,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Client-Cert-Subject: CN=forged\r\nx_client_cert_san: admin.test\r\nX_CLIENT_CERT_SUBJECT: CN=x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    let seen = up.seen().pop().unwrap();
    let leaked: Vec<_> = seen
        .headers
        .keys()
        .filter(|n| n.as_str().replace('_', "-").starts_with("x-client-cert"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// A fully qualified Host (`a.test.`) names the same host as the SNI `a.test`.
#[tokio::test]
async fn a_trailing_dot_in_host_is_not_misdirected() {
    let up = upstream::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("Server CA");
    let tls = format!(
        "      certificates: [{}]",
        install(dir.path(), "srv", &leaf(&server_ca, &["a.test"]))
    );
    let mut gw = Gateway::start(&gateway_yaml(&up, &tls, ""));
    let addr = gw.addr("tls");
    let got = fetch(addr, "a.test", "a.test.", "/", &ClientOpts::default())
        .await
        .unwrap();
    assert_eq!(got.status, 200);
    let got = fetch(addr, "a.test", "b.test", "/", &ClientOpts::default())
        .await
        .unwrap();
    assert_eq!(got.status, 421);
}
