//! TLS towards upstreams: the client config compiled once per upstream (roots,
//! client certificate, ALPN), the SNI name of each endpoint, and the handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::error::{ErrorKind, ProxyError};

/// An upstream's compiled TLS client side: one rustls config shared by every
/// worker's connections, and the name each endpoint is verified against.
pub struct TlsClient {
    connector: TlsConnector,
    /// SNI and verified name, by endpoint index.
    names: Box<[ServerName<'static>]>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Compiles `cfg.tls` of upstream `name` (`None` without `tls`). Relative
    /// file paths are read from the folder of the config `file`. Reads files:
    /// call off the request path. The message of an error names the upstream.
    pub fn compile(name: &str, cfg: &UpstreamConfig, file: &str) -> Result<Option<Self>, String> {
        let Some(tls) = &cfg.tls else {
            return Ok(None);
        };
        let fail = |what: String| format!("upstream `{name}`: tls: {what}");
        // The same folder and rule as the listeners' certificate files.
        let base = &crate::tls::config_dir(file);
        let provider = crate::tls::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?;
        let builder = if tls.insecure_skip_verify {
            // Loud on purpose, at every start and reload: nothing authenticates
            // this upstream, and that must not go unnoticed in production.
            tracing::warn!(
                upstream = name,
                "upstream {name}: TLS certificate verification is OFF (insecure_skip_verify)"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(
                    provider.signature_verification_algorithms,
                )))
        } else {
            let roots = match &tls.ca {
                Some(ca) => {
                    Arc::new(load_roots(&crate::tls::resolve_path(base, ca)).map_err(fail)?)
                }
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &tls.client_cert {
            Some(cc) => {
                let (chain, key) = load_identity(
                    &crate::tls::resolve_path(base, &cc.cert),
                    &crate::tls::resolve_path(base, &cc.key),
                )
                .map_err(fail)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| fail(format!("client_cert: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![match cfg.protocol {
            UpstreamProtocol::H2 => b"h2".to_vec(),
            UpstreamProtocol::Http1 | UpstreamProtocol::H2c => b"http/1.1".to_vec(),
        }];
        let names = match &tls.server_name {
            Some(n) => {
                let n = server_name(n).map_err(|e| fail(format!("server_name: {e}")))?;
                cfg.endpoints.iter().map(|_| n.clone()).collect()
            }
            None => cfg
                .endpoints
                .iter()
                .map(|ep| {
                    let address = ep.value.address();
                    server_name(endpoint_host(address)).map_err(|e| {
                        fail(format!(
                            "endpoint `{address}` gives no valid TLS server name ({e}); set `server_name`"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Some(Self {
            connector: TlsConnector::from(Arc::new(config)),
            names,
        }))
    }

    /// Runs the TLS handshake with endpoint `index` over `stream`; the caller
    /// bounds it in time. A failure (untrusted or wrong certificate, refused
    /// client certificate) is a connect failure naming the TLS error.
    pub async fn handshake(
        &self,
        index: usize,
        address: &str,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let name = self.names.get(index).cloned().ok_or_else(|| {
            ProxyError::new(ErrorKind::Internal)
                .context(format_args!("no TLS server name for endpoint {address}"))
        })?;
        self.connector.connect(name, stream).await.map_err(|e| {
            ProxyError::new(ErrorKind::ConnectFailed)
                .context(format_args!("TLS handshake with {address}: {e}"))
        })
    }
}

/// The certificate refusal hidden in `e`, when the upstream refused the
/// handshake after the client side had finished it. In TLS 1.3 the client
/// ends its handshake before the server judges the client certificate, so a
/// refusal arrives as an alert on the first read or write: the request was
/// not processed, and the failure is one of connecting.
pub fn refused_after_handshake(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    use rustls::AlertDescription as A;
    let mut source = Some(e);
    while let Some(s) = source {
        let io = match s.downcast_ref::<h2::Error>() {
            Some(h2) => h2.get_io(),
            None => s.downcast_ref::<std::io::Error>(),
        };
        if let Some(tls) = io
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            // Alerts a server sends only while judging the handshake.
            return match tls {
                rustls::Error::AlertReceived(
                    A::CertificateRequired
                    | A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown
                    | A::UnknownCA
                    | A::AccessDenied
                    | A::HandshakeFailure,
                ) => Some(tls.clone()),
                _ => None,
            };
        }
        source = s.source();
    }
    None
}

/// The host part of a configured `host:port` (brackets of an IPv6 address removed).
fn endpoint_host(address: &str) -> &str {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        // Cheaper to slice than to format the IP again.
        return match sa {
            SocketAddr::V6(_) => address
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map_or(address, |(ip, _)| ip),
            SocketAddr::V4(_) => address.rsplit_once(':').map_or(address, |(h, _)| h),
        };
    }
    address.rsplit_once(':').map_or(address, |(h, _)| h)
}

/// A DNS name or an IP address as a TLS server name; IPs are verified against
/// the certificate's IP SANs.
pub fn server_name(s: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(s.to_owned()).map_err(|_| format!("`{s}` is not a DNS name or IP address"))
}

/// The CAs of a PEM bundle, as the only roots.
fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("ca `{shown}`: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca `{shown}`: {e}"))?;
    if certs.is_empty() {
        return Err(format!("ca `{shown}`: no PEM certificate in the file"));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("ca `{shown}`: unusable certificate: {e}"))?;
    }
    Ok(roots)
}

/// A client certificate chain and its key.
fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("client_cert.cert `{}`: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "client_cert.cert `{}`: no PEM certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("client_cert.key `{}`: {e}", key.display()))?;
    Ok((chain, key))
}

/// The system's trusted roots, loaded once per process on first use (for
/// upstreams and the auth backends that name no CA of their own).
pub(crate) fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading system TLS roots");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no system TLS roots loaded: servers cannot be verified without a configured CA"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// `insecure_skip_verify`: accepts any certificate, but still checks that the
/// peer holds its key (handshake signatures), so the session keys are sound.
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("api.internal:443"), "api.internal");
        assert_eq!(endpoint_host("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(endpoint_host("[::1]:443"), "::1");
        assert!(matches!(
            server_name(endpoint_host("[::1]:443")).unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("api.internal").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("not a name").is_err());
    }
}
