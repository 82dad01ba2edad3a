//! TLS termination on listeners: certificates from PEM files, chosen by SNI
//! against their own SAN names; client certificates (mTLS); live certificate
//! reload.
//!
//! A listener's certificates live in a [`CertSet`] behind an `ArcSwap` that
//! its rustls resolver reads at each handshake, so a renewed certificate is
//! swapped in without touching connections or handshakes in progress. Two
//! things replace the set: a config reload (the compiler builds a new
//! [`TlsListener`]) and a change to a certificate or key file on disk
//! ([`watch`]).
//!
//! Relative certificate, key and CA paths are relative to the config file's
//! folder.

pub(crate) mod der;
pub mod http;
mod watch;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ::http::HeaderValue;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertificateConfig, ClientAuthMode, ListenerTls, TlsVersion, UnknownSni};

pub use watch::watch;

/// The error for `tls.acme` in a build without the `acme` feature.
pub const ACME_NEEDS_FEATURE: &str = "`tls.acme` needs portico built with `--features acme`";

/// The certificates of one listener, indexed by the DNS names of their SANs.
#[derive(Debug, Default, Clone)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Served when nothing matches (`unknown_sni: default`).
    fallback: Option<Arc<CertifiedKey>>,
}

impl CertSet {
    /// Indexes `certs` (in config order: the first one holding a name wins
    /// it); `fallback_first` makes the first certificate the default.
    pub fn new(certs: Vec<(Arc<CertifiedKey>, Vec<String>)>, fallback_first: bool) -> Self {
        let mut set = Self::default();
        for (i, (key, names)) in certs.into_iter().enumerate() {
            if i == 0 && fallback_first {
                set.fallback = Some(key.clone());
            }
            for name in names {
                let name = name.to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) => set.wildcard.entry(parent.to_owned()),
                    None => set.exact.entry(name),
                }
                .or_insert_with(|| key.clone());
            }
        }
        set
    }

    /// The certificate for `sni`: an exact name first, then a wildcard that
    /// covers exactly one label, then the default (if any).
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        sni.and_then(|name| {
            let name = crate::routing::host_key(name);
            let name = name.as_ref();
            self.exact.get(name).or_else(|| {
                let (label, parent) = name.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard.get(parent)
            })
        })
        .or(self.fallback.as_ref())
        .cloned()
    }
}

/// rustls's view of a listener's certificates: reads the live set at each
/// handshake.
#[derive(Debug)]
struct SniResolver(Arc<ArcSwap<CertSet>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        #[cfg(feature = "acme")]
        if let Some(challenge) = crate::acme::tls_alpn_challenge(&hello) {
            return Some(challenge);
        }
        // `None` makes rustls fail the handshake: that is `unknown_sni: refuse`.
        self.0.load().resolve(hello.server_name())
    }
}

/// A TLS listener's compiled settings and its live certificates.
#[derive(Debug)]
pub struct TlsListener {
    /// The rustls server config (its resolver reads the live certificates).
    pub server_config: Arc<ServerConfig>,
    /// Refuse with 421 a request whose host differs from the SNI name.
    pub sni_host_binding: bool,
    /// Send the verified client certificate upstream in headers.
    pub forward_client_cert: bool,
    /// The `Strict-Transport-Security` value, when HSTS is on.
    pub hsts: Option<HeaderValue>,
    certs: Arc<ArcSwap<CertSet>>,
    /// Certificate and key files, resolved against the config folder.
    sources: Vec<(PathBuf, PathBuf)>,
    fallback_first: bool,
    provider: Arc<CryptoProvider>,
    /// Hash of the files' content last loaded, so that a touch or an
    /// unrelated file in the same folder does not reload.
    loaded: Mutex<u64>,
    /// The certificates last loaded from the files, and the ones installed
    /// by ACME: a file reload keeps the latter, an ACME issuance the former.
    pairs: Mutex<Pairs>,
}

/// A certificate and the SAN names it serves.
pub type Pair = (Arc<CertifiedKey>, Vec<String>);

#[derive(Debug, Default)]
struct Pairs {
    files: Vec<Pair>,
    acme: Vec<Pair>,
}

impl Pairs {
    /// The live set: ACME certificates win their names over file ones; the
    /// default (`unknown_sni: default`) is the first file certificate, else
    /// the first ACME one.
    fn set(&self, fallback_first: bool) -> CertSet {
        let all: Vec<Pair> = self.acme.iter().chain(&self.files).cloned().collect();
        let mut set = CertSet::new(all, false);
        if fallback_first {
            set.fallback = self
                .files
                .first()
                .or(self.acme.first())
                .map(|(k, _)| k.clone());
        }
        set
    }
}

/// Resolves `path` against `base` (the config file's folder) when relative.
pub fn resolve_path(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The folder of the config file `file`, against which relative paths resolve.
pub fn config_dir(file: &str) -> PathBuf {
    Path::new(file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The one crypto provider of the process: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its key and checks that they belong
/// together; returns the pair and the leaf's SAN DNS names.
pub fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot load key `{}`: {}", key.display(), pem_error(&e)))?;
    let names = san_dns_names(&chain[0])
        .map_err(|e| format!("cannot load certificate `{}`: {e}", cert.display()))?;
    let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the key does not belong to the certificate".to_owned()
            }
            other => other.to_string(),
        };
        format!(
            "cannot load certificate `{}` with key `{}`: {why}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((Arc::new(certified), names))
}

/// Every certificate of a PEM file, in order; an error when there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "cannot load certificate `{}`: {}",
                path.display(),
                pem_error(&e)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "cannot load certificate `{}`: no CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        rustls_pki_types::pem::Error::NoItemsFound => "no PEM block of the right kind".into(),
        other => format!("{other:?}"),
    }
}

/// The DNS names (and wildcards) of a certificate's subjectAltName.
pub fn san_dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    Ok(ee
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect())
}

/// What the pipeline gets to know of a verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The subject, RFC 4514 style (`CN=client,O=Acme`).
    pub subject: HeaderValue,
    /// The DNS and URI SANs, comma-separated (a comma inside a URI as `%2C`).
    pub san: HeaderValue,
}

impl ClientCert {
    /// Reads the leaf of a verified chain; `None` if it cannot be parsed
    /// (which rustls's verification would already have refused).
    pub fn from_der(cert: &CertificateDer<'_>) -> Option<Self> {
        let ee = webpki::EndEntityCert::try_from(cert).ok()?;
        let subject = der::rfc4514(ee.subject())?;
        // A URI may hold a comma, the list's separator: it is percent-encoded
        // so that one name cannot pass for two (DNS names have none).
        let san: Vec<String> = ee
            .valid_dns_names()
            .map(str::to_owned)
            .chain(ee.valid_uri_names().map(|u| u.replace(',', "%2C")))
            .collect();
        Some(Self {
            subject: HeaderValue::from_str(&subject).ok()?,
            san: HeaderValue::from_str(&san.join(",")).ok()?,
        })
    }
}

/// What a request on a TLS connection needs to know of it.
#[derive(Debug)]
pub struct TlsConn {
    /// The SNI name the client asked for, lowercased.
    pub sni: Option<Box<str>>,
    /// Refuse with 421 a request whose host differs from `sni`.
    pub sni_host_binding: bool,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<ClientCert>,
    /// Replace the `x-client-cert-*` request headers with the certificate's.
    pub forward_client_cert: bool,
    /// `Strict-Transport-Security` for every response.
    pub hsts: Option<HeaderValue>,
}

impl TlsListener {
    /// Loads the certificates (and client CA) of `cfg`; relative paths
    /// resolve against `base`. The error names the file and the reason.
    pub fn build(cfg: &ListenerTls, base: &Path) -> Result<Self, String> {
        let provider = provider();
        let sources: Vec<(PathBuf, PathBuf)> = cfg
            .certificates
            .iter()
            .map(|c: &CertificateConfig| (resolve_path(base, &c.cert), resolve_path(base, &c.key)))
            .collect();
        if sources.is_empty() && cfg.acme.is_none() {
            return Err("`tls.certificates` is empty: give at least one `cert` and `key`".into());
        }
        let fallback_first = cfg.unknown_sni == UnknownSni::Default;
        let pairs = Pairs {
            files: load_pairs(&sources, &provider)?,
            // A stored ACME certificate still valid serves at once.
            #[cfg(feature = "acme")]
            acme: cfg
                .acme
                .as_ref()
                .and_then(|a| crate::acme::load_stored(a, base, &provider))
                .into_iter()
                .collect(),
            #[cfg(not(feature = "acme"))]
            acme: Vec::new(),
        };
        let certs = Arc::new(ArcSwap::from_pointee(pairs.set(fallback_first)));
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS settings: {e}"))?;
        let builder = match &cfg.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => {
                let ca = resolve_path(base, &auth.ca);
                let mut roots = RootCertStore::empty();
                for c in load_certs(&ca)? {
                    roots
                        .add(c)
                        .map_err(|e| format!("cannot load client CA `{}`: {e}", ca.display()))?;
                }
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if auth.mode == ClientAuthMode::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("cannot use client CA `{}`: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(Arc::new(SniResolver(certs.clone())));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        #[cfg(feature = "acme")]
        if cfg
            .acme
            .as_ref()
            .is_some_and(|a| a.challenge == crate::config::AcmeChallenge::TlsAlpn01)
        {
            server
                .alpn_protocols
                .push(crate::acme::ACME_TLS_ALPN.to_vec());
        }
        let hsts = cfg.hsts.as_ref().map(|h| {
            let mut v = format!("max-age={}", h.max_age.0.as_secs());
            if h.include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if h.preload {
                v.push_str("; preload");
            }
            // Digits and fixed words only: always a valid header value.
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("max-age=0"))
        });
        let loaded = Mutex::new(files_hash(&sources));
        Ok(Self {
            server_config: Arc::new(server),
            sni_host_binding: cfg.sni_host_binding,
            forward_client_cert: cfg.client_auth.as_ref().is_some_and(|a| a.forward_headers),
            hsts,
            certs,
            sources,
            fallback_first,
            provider,
            loaded,
            pairs: Mutex::new(pairs),
        })
    }

    /// Serves `key` for `names` from the next handshake on, in place of the
    /// ACME certificate installed before for the same names (if any).
    pub fn install(&self, key: Arc<CertifiedKey>, names: Vec<String>) -> Result<(), String> {
        let mut pairs = self.pairs.lock().map_err(|_| "certificate lock poisoned")?;
        pairs.acme.retain(|(_, n)| *n != names);
        pairs.acme.insert(0, (key, names));
        self.certs.store(Arc::new(pairs.set(self.fallback_first)));
        Ok(())
    }

    /// The crypto provider of the listener.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The certificate a handshake with `sni` would get.
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.certs.load().resolve(sni)
    }

    /// The certificate and key files.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.sources
            .iter()
            .flat_map(|(c, k)| [c.as_path(), k.as_path()])
    }

    /// Reloads the certificates when their files changed: `Ok(true)` when a
    /// new set was swapped in, `Ok(false)` when nothing changed, and an error
    /// (the old set keeps serving) when a file does not load.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = files_hash(&self.sources);
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| "certificate reload lock poisoned")?;
        if *loaded == now {
            return Ok(false);
        }
        let files = load_pairs(&self.sources, &self.provider);
        // Remember the broken content too: it is reported once, not on
        // every event, and fixing the file changes the hash again.
        *loaded = now;
        let mut pairs = self.pairs.lock().map_err(|_| "certificate lock poisoned")?;
        pairs.files = files?;
        self.certs.store(Arc::new(pairs.set(self.fallback_first)));
        Ok(true)
    }

    /// What the connection's requests need: the SNI name and client
    /// certificate of a finished handshake, and this listener's settings.
    pub fn conn_info(&self, conn: &rustls::ServerConnection) -> TlsConn {
        TlsConn {
            sni: conn.server_name().map(|s| s.to_ascii_lowercase().into()),
            sni_host_binding: self.sni_host_binding,
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(ClientCert::from_der),
            forward_client_cert: self.forward_client_cert,
            hsts: self.hsts.clone(),
        }
    }
}

fn load_pairs(
    sources: &[(PathBuf, PathBuf)],
    provider: &CryptoProvider,
) -> Result<Vec<Pair>, String> {
    sources
        .iter()
        .map(|(c, k)| load_pair(c, k, provider))
        .collect()
}

/// A hash of the files' content (a missing file hashes as such).
fn files_hash(sources: &[(PathBuf, PathBuf)]) -> u64 {
    let mut h = DefaultHasher::new();
    for (c, k) in sources {
        std::fs::read(c).ok().hash(&mut h);
        std::fs::read(k).ok().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn pair(names: &[&str]) -> (Arc<CertifiedKey>, Vec<String>, String, String) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let names = san_dns_names(&der).unwrap();
        let ck = CertifiedKey::from_der(
            vec![der],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            &provider(),
        )
        .unwrap();
        (Arc::new(ck), names, cert.pem(), key.serialize_pem())
    }

    fn same(a: &Option<Arc<CertifiedKey>>, b: &Arc<CertifiedKey>) -> bool {
        a.as_ref().is_some_and(|a| Arc::ptr_eq(a, b))
    }

    #[test]
    fn san_names_are_extracted() {
        let (_, names, _, _) = pair(&["a.test", "*.Wild.test"]);
        assert_eq!(names, vec!["a.test", "*.wild.test"]);
    }

    #[test]
    fn exact_beats_wildcard_and_wildcards_cover_one_label() {
        let (exact, en, _, _) = pair(&["x.wild.test"]);
        let (wild, wn, _, _) = pair(&["*.wild.test"]);
        let set = CertSet::new(vec![(wild.clone(), wn), (exact.clone(), en)], false);
        assert!(same(&set.resolve(Some("x.wild.test")), &exact));
        assert!(same(&set.resolve(Some("X.Wild.Test")), &exact));
        assert!(same(&set.resolve(Some("y.wild.test")), &wild));
        assert!(same(&set.resolve(Some("y.wild.test.")), &wild));
        assert!(set.resolve(Some("a.y.wild.test")).is_none());
        assert!(set.resolve(Some("wild.test")).is_none());
        assert!(set.resolve(Some(".wild.test")).is_none());
        assert!(set.resolve(None).is_none());
    }

    #[test]
    fn unknown_names_get_the_first_certificate_by_default() {
        let (a, an, _, _) = pair(&["a.test"]);
        let (b, bn, _, _) = pair(&["b.test"]);
        let set = CertSet::new(vec![(a.clone(), an), (b.clone(), bn)], true);
        assert!(same(&set.resolve(Some("b.test")), &b));
        assert!(same(&set.resolve(Some("other.test")), &a));
        assert!(same(&set.resolve(None), &a));
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _, cert, _) = pair(&["a.test"]);
        let (_, _, _, other_key) = pair(&["a.test"]);
        std::fs::write(dir.path().join("c.pem"), cert).unwrap();
        std::fs::write(dir.path().join("k.pem"), other_key).unwrap();
        let err = load_pair(
            &dir.path().join("c.pem"),
            &dir.path().join("k.pem"),
            &provider(),
        )
        .err()
        .unwrap();
        assert!(err.contains("c.pem"), "{err}");
        let err = load_pair(
            &dir.path().join("missing.pem"),
            &dir.path().join("k.pem"),
            &provider(),
        )
        .err()
        .unwrap();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn client_cert_subject_and_san() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["client.test".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client one");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        let cert = params.self_signed(&key).unwrap();
        let info = ClientCert::from_der(cert.der()).unwrap();
        let subject = info.subject.to_str().unwrap();
        assert!(subject.contains("CN=client one"), "{subject}");
        assert!(subject.contains("O=Acme"), "{subject}");
        assert_eq!(info.san, "client.test");
    }
}
