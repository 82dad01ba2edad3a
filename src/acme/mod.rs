//! ACME (RFC 8555): certificates obtained and renewed from a CA for the
//! `tls.acme` of a listener, with the HTTP-01 or TLS-ALPN-01 challenge.
//!
//! One task ([`run`]) checks every second, for each distinct `tls.acme` of
//! the current snapshot, the certificate stored under its `storage` folder:
//! missing, for other names, or past its renewal time (two thirds of its
//! life, or `renew_before` before its end), a new one is ordered. An issued
//! certificate is written to disk first, then installed at once in the live
//! certificate set of every listener with that `tls.acme`, so the next
//! handshake gets it. A listener built later (start, config reload) loads
//! the stored certificate while it is still valid.
//!
//! Storage layout: `<storage>/account.json` (the account credentials) and
//! `<storage>/<first domain>/{cert,key}.pem`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::CryptoProvider;
use rustls::server::ClientHello;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{AcmeChallenge, AcmeConfig};
use crate::proxy::body::ResponseBody;
use crate::server::Shared;
use crate::tls::{Pair, config_dir, load_pair, resolve_path};

/// The ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Most challenges pending at once (of each type).
const MAX_PENDING: usize = 256;

/// Challenges in progress: HTTP-01 tokens and their key authorizations,
/// TLS-ALPN-01 certificates by domain.
#[derive(Default)]
struct Pending {
    http01: HashMap<String, String>,
    tls_alpn01: HashMap<String, Arc<CertifiedKey>>,
}

static PENDING: LazyLock<Mutex<Pending>> = LazyLock::new(Mutex::default);

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The answer to an HTTP-01 validation request, when `req` is one for a
/// challenge in progress.
pub fn http01_response<B>(req: &Request<B>) -> Option<Response<ResponseBody>> {
    let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
    let key_auth = pending().http01.get(token)?.clone();
    let mut resp = Response::new(ResponseBody::full(Bytes::from(key_auth)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// The TLS-ALPN-01 challenge certificate, when `hello` asks for one (ALPN
/// `acme-tls/1`) for a domain being validated.
pub fn tls_alpn_challenge(hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
    let mut alpn = hello.alpn()?;
    if !alpn.any(|p| p == ACME_TLS_ALPN) {
        return None;
    }
    let name = hello.server_name()?.to_ascii_lowercase();
    pending().tls_alpn01.get(&name).cloned()
}

/// What is wrong with a `tls.acme` section.
pub fn config_problems(acme: &AcmeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if !(acme.directory.starts_with("https://") || acme.directory.starts_with("http://")) {
        problems.push(format!(
            "`tls.acme.directory` must be an http(s) URL, got `{}`",
            acme.directory
        ));
    }
    if acme.domains.is_empty() {
        problems.push("`tls.acme.domains` is empty: give at least one DNS name".into());
    }
    for d in &acme.domains {
        let dns = rustls_pki_types::ServerName::try_from(d.as_str())
            .is_ok_and(|n| matches!(n, rustls_pki_types::ServerName::DnsName(_)));
        if !dns || d.contains('*') {
            problems.push(format!(
                "`tls.acme.domains`: `{d}` is not a DNS name (wildcards need DNS-01, which \
                 portico does not do)"
            ));
        }
    }
    if acme.storage.trim().is_empty() {
        problems.push("`tls.acme.storage` must name a folder".into());
    }
    if acme.renew_before.is_some_and(|d| d.0.is_zero()) {
        problems.push("`tls.acme.renew_before` must be greater than 0".into());
    }
    problems
}

fn storage(acme: &AcmeConfig, base: &Path) -> PathBuf {
    resolve_path(base, &acme.storage)
}

fn cert_files(acme: &AcmeConfig, base: &Path) -> (PathBuf, PathBuf) {
    let first = acme
        .domains
        .first()
        .map_or("default".to_owned(), |d| d.to_ascii_lowercase());
    let dir = storage(acme, base).join(first);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The stored certificate of `acme`, when it loads, covers its domains and
/// has not expired: a listener serves it from the start.
pub fn load_stored(acme: &AcmeConfig, base: &Path, provider: &CryptoProvider) -> Option<Pair> {
    let (cert, key) = cert_files(acme, base);
    let pair = load_pair(&cert, &key, provider).ok()?;
    let (_, not_after) = validity(pair.0.cert.first()?)?;
    (now_secs() < not_after && covers(&pair.1, &acme.domains)).then_some(pair)
}

fn covers(names: &[String], domains: &[String]) -> bool {
    domains
        .iter()
        .all(|d| names.iter().any(|n| n.eq_ignore_ascii_case(d)))
}

/// When the stored certificate must be replaced (seconds since the epoch):
/// at once when there is none (or it is for other names).
fn renewal_time(acme: &AcmeConfig, base: &Path) -> i64 {
    let (cert, _) = cert_files(acme, base);
    let Ok(chain) = crate::tls::load_certs(&cert) else {
        return 0;
    };
    let Some(leaf) = chain.first() else { return 0 };
    let names = crate::tls::san_dns_names(leaf).unwrap_or_default();
    if !covers(&names, &acme.domains) {
        return 0;
    }
    let Some((not_before, not_after)) = validity(leaf) else {
        return 0;
    };
    renew_at(not_before, not_after, acme.renew_before.map(|d| d.0))
}

/// Two thirds into the life, or `renew_before` before its end.
fn renew_at(not_before: i64, not_after: i64, renew_before: Option<Duration>) -> i64 {
    match renew_before {
        Some(before) => not_after - i64::try_from(before.as_secs()).unwrap_or(i64::MAX / 2),
        None => not_before + (not_after - not_before) * 2 / 3,
    }
}

/// The task that obtains and renews the certificates of every `tls.acme`
/// of the current snapshot, until the process ends.
pub async fn run(shared: Arc<Shared>) {
    let base = config_dir(&shared.config_path.display().to_string());
    // Failed orders are retried after a growing delay.
    let mut failures: HashMap<PathBuf, (Instant, u32)> = HashMap::new();
    loop {
        let gw = shared.current.load_full();
        let mut configs: Vec<AcmeConfig> = Vec::new();
        for l in &gw.config.listeners {
            if let Some(a) = l.tls.as_ref().and_then(|t| t.value.acme.as_ref())
                && !configs.contains(a)
            {
                configs.push(a.clone());
            }
        }
        drop(gw);
        for acme in configs {
            let (cert, _) = cert_files(&acme, &base);
            if failures
                .get(&cert)
                .is_some_and(|(at, _)| Instant::now() < *at)
            {
                continue;
            }
            if now_secs() < renewal_time(&acme, &base) {
                continue;
            }
            tracing::info!(domains = ?acme.domains, "ordering an ACME certificate");
            match issue(&acme, &base).await {
                Ok(()) => {
                    failures.remove(&cert);
                    install(&shared, &acme, &base);
                }
                Err(e) => {
                    let n = failures.get(&cert).map_or(0, |f| f.1).saturating_add(1);
                    let wait =
                        Duration::from_secs(5u64 << n.min(10)).min(Duration::from_secs(3600));
                    tracing::error!(
                        domains = ?acme.domains,
                        retry_in = ?wait,
                        "ACME certificate order failed: {e}"
                    );
                    failures.insert(cert, (Instant::now() + wait, n));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Installs the stored certificate of `acme` in every listener of the
/// current snapshot that has this `tls.acme`.
fn install(shared: &Shared, acme: &AcmeConfig, base: &Path) {
    let gw = shared.current.load_full();
    for l in gw.listeners.iter() {
        let Some(tls) = &l.tls else { continue };
        let same = gw.config.listeners.iter().any(|c| {
            *c.name.value == *l.name
                && c.tls.as_ref().and_then(|t| t.value.acme.as_ref()) == Some(acme)
        });
        if !same {
            continue;
        }
        let (cert, key) = cert_files(acme, base);
        match load_pair(&cert, &key, tls.provider()).and_then(|(k, names)| tls.install(k, names)) {
            Ok(()) => tracing::info!(
                listener = %l.name,
                domains = ?acme.domains,
                "ACME certificate installed"
            ),
            Err(e) => {
                tracing::error!(listener = %l.name, "cannot install the ACME certificate: {e}")
            }
        }
    }
}

/// Orders a certificate for `acme.domains` and writes it (and its key) to
/// the storage folder.
async fn issue(acme: &AcmeConfig, base: &Path) -> Result<(), String> {
    let dir = storage(acme, base);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let account = account(acme, base, &dir).await?;
    let identifiers: Vec<Identifier> = acme
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.to_ascii_lowercase()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut tokens = Vec::new();
    let mut alpn_names = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let kind = match acme.challenge {
                AcmeChallenge::Http01 => ChallengeType::Http01,
                AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let key_auth = challenge.key_authorization();
            match acme.challenge {
                AcmeChallenge::Http01 => {
                    let mut p = pending();
                    if p.http01.len() >= MAX_PENDING {
                        return Err("too many ACME challenges in progress".into());
                    }
                    p.http01
                        .insert(challenge.token.clone(), key_auth.as_str().to_owned());
                    tokens.push(challenge.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let name = challenge.identifier().to_string().to_ascii_lowercase();
                    let cert = alpn_certificate(&name, key_auth.digest().as_ref())?;
                    let mut p = pending();
                    if p.tls_alpn01.len() >= MAX_PENDING {
                        return Err("too many ACME challenges in progress".into());
                    }
                    p.tls_alpn01.insert(name.clone(), cert);
                    alpn_names.push(name);
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let status = order
            .poll_ready(&RetryPolicy::default())
            .await
            .map_err(|e| format!("order: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("order is {status:?}, not ready"));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let cert_pem = order
            .poll_certificate(&RetryPolicy::default())
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        Ok((cert_pem, key_pem))
    }
    .await;
    {
        let mut p = pending();
        for t in &tokens {
            p.http01.remove(t);
        }
        for n in &alpn_names {
            p.tls_alpn01.remove(n);
        }
    }
    let (cert_pem, key_pem) = result?;
    let (cert, key) = cert_files(acme, base);
    if let Some(folder) = cert.parent() {
        std::fs::create_dir_all(folder)
            .map_err(|e| format!("cannot create `{}`: {e}", folder.display()))?;
    }
    write_atomic(&key, key_pem.as_bytes(), true)?;
    write_atomic(&cert, cert_pem.as_bytes(), false)?;
    Ok(())
}

/// The account of `storage`: its stored credentials, or a new account
/// (whose credentials are then stored).
async fn account(acme: &AcmeConfig, base: &Path, dir: &Path) -> Result<Account, String> {
    let builder = || {
        match &acme.ca {
            Some(ca) => Account::builder_with_root(resolve_path(base, ca)),
            None => Account::builder(),
        }
        .map_err(|e| format!("ACME client: {e}"))
    };
    let file = dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(creds) = serde_json::from_str::<AccountCredentials>(&text)
    {
        match builder()?.from_credentials(creds).await {
            Ok(a) => return Ok(a),
            Err(e) => tracing::warn!("stored ACME account unusable, creating one: {e}"),
        }
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account at `{}`: {e}", acme.directory))?;
    let json = serde_json::to_vec_pretty(&creds).map_err(|e| format!("account: {e}"))?;
    write_atomic(&file, &json, true)?;
    Ok(account)
}

/// The self-signed certificate of a TLS-ALPN-01 challenge (RFC 8737).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| format!("challenge certificate: {e}"))?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    let key_der =
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| format!("challenge key: {e}"))?;
    let provider = crate::tls::provider();
    // Not `from_der`: its consistency check parses the certificate, and
    // webpki refuses the critical acmeIdentifier extension.
    let signer = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Writes `path` through a temporary file and a rename, so that a reader
/// never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        std::io::Write::write_all(&mut opts.open(&tmp)?, bytes)?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// A certificate's `notBefore` and `notAfter`, in seconds since the epoch.
pub fn validity(cert: &CertificateDer<'_>) -> Option<(i64, i64)> {
    use crate::tls::der::tlv;
    let (_, certificate, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(certificate)?;
    let mut rest = tbs;
    // [0] version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    let (_, _serial, rest) = tlv(rest)?;
    let (_, _signature, rest) = tlv(rest)?;
    let (_, _issuer, rest) = tlv(rest)?;
    let (tag, validity, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, nb, rest) = tlv(validity)?;
    let (t2, na, _) = tlv(rest)?;
    Some((time(t1, nb)?, time(t2, na)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_is_read_from_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 2, 29);
        params.not_after = rcgen::date_time_ymd(2051, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let (nb, na) = validity(cert.der()).unwrap();
        assert_eq!(nb, 1_709_164_800);
        assert_eq!(na, 2_556_144_000);
    }

    #[test]
    fn renewal_is_at_two_thirds_or_renew_before() {
        assert_eq!(renew_at(0, 90, None), 60);
        assert_eq!(renew_at(0, 90, Some(Duration::from_secs(10))), 80);
    }

    #[test]
    fn http01_answers_known_tokens_only() {
        pending()
            .http01
            .insert("tok-unit".into(), "tok-unit.thumb".into());
        let req = Request::get("/.well-known/acme-challenge/tok-unit")
            .body(())
            .unwrap();
        assert!(http01_response(&req).is_some());
        let req = Request::get("/.well-known/acme-challenge/other")
            .body(())
            .unwrap();
        assert!(http01_response(&req).is_none());
        pending().http01.remove("tok-unit");
    }
}
