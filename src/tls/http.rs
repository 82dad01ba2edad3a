//! The request side of TLS: the SNI/Host binding (421), client-certificate
//! headers, HSTS, and the plain listener's redirect to HTTPS.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};

use crate::config::RedirectHttps;
use crate::error::{ErrorKind, ProxyError};
use crate::pipeline::{ConnInfo, request_host, strip_port};
use crate::proxy::body::ResponseBody;

/// Header with the verified client certificate's subject.
pub const CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
/// Header with the verified client certificate's SANs.
pub const CLIENT_CERT_SAN: HeaderName = HeaderName::from_static("x-client-cert-san");

/// Runs before routing on TLS and redirecting listeners: answers the request
/// (a redirect to HTTPS), refuses it (421), or sets the client-certificate
/// headers so that routes can match on them.
pub fn before_routing<B>(
    req: &mut Request<B>,
    conn: &ConnInfo,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
    if let Some(redirect) = &conn.redirect_https {
        return redirect_to_https(req, redirect).map(Some);
    }
    let Some(tls) = &conn.tls else {
        return Ok(None);
    };
    if tls.sni_host_binding
        && let Some(sni) = tls.sni.as_deref()
        && let Some(host) = request_host(req)
        && !same_name(strip_port(host), sni)
    {
        // The client reused a connection made for another name (or fronts
        // one domain with another): the certificate it checked is not the
        // host it asks for (RFC 9110 §15.5.20).
        return Err(ProxyError::new(ErrorKind::Misdirected)
            .context(format!("host `{host}` on a connection for `{sni}`")));
    }
    // Client-sent copies are already gone (`strip_client_cert_headers`).
    if tls.forward_client_cert
        && let Some(cert) = &tls.client_cert
    {
        let headers = req.headers_mut();
        headers.insert(CLIENT_CERT_SUBJECT, cert.subject.clone());
        headers.insert(CLIENT_CERT_SAN, cert.san.clone());
    }
    Ok(None)
}

/// Removes client-sent client-certificate headers, in any case and also
/// spelt with `_` (which CGI-style servers read as the same variable): a
/// client must not be able to claim a certificate it did not show, on any
/// listener.
pub fn strip_client_cert_headers(headers: &mut HeaderMap) {
    headers.remove(&CLIENT_CERT_SUBJECT);
    headers.remove(&CLIENT_CERT_SAN);
    let lookalike = |name: &HeaderName| {
        let n = name.as_str();
        n.len() >= CLIENT_CERT_SAN.as_str().len()
            && n.contains('_')
            && [&CLIENT_CERT_SUBJECT, &CLIENT_CERT_SAN].iter().any(|h| {
                h.as_str().len() == n.len()
                    && h.as_str()
                        .bytes()
                        .zip(n.bytes())
                        .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
            })
    };
    let found: Vec<HeaderName> = headers.keys().filter(|n| lookalike(n)).cloned().collect();
    for name in found {
        headers.remove(&name);
    }
}

/// Whether a request's host names the SNI name: case-insensitive, and a
/// fully qualified `a.test.` is the same name as `a.test`.
fn same_name(host: &str, sni: &str) -> bool {
    crate::routing::host_key(host) == crate::routing::host_key(sni)
}

/// Adds `Strict-Transport-Security` to a response on an HSTS listener.
pub fn add_hsts<B>(resp: &mut Response<B>, conn: &ConnInfo) {
    if let Some(value) = conn.tls.as_ref().and_then(|t| t.hsts.as_ref()) {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, value.clone());
    }
}

/// The redirect of a plain listener with `redirect_https`: same host (its
/// port replaced), path and query.
fn redirect_to_https<B>(
    req: &Request<B>,
    redirect: &RedirectHttps,
) -> Result<Response<ResponseBody>, ProxyError> {
    let host = request_host(req).map(strip_port).unwrap_or("");
    // Only name characters: the Host is copied into a URL.
    let usable = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':'));
    if host.is_empty() || !usable {
        return Err(ProxyError::new(ErrorKind::BadRequest).context("no Host to redirect to HTTPS"));
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    // An asterisk-form or authority-form target has no path to keep.
    let pq = if pq.starts_with('/') { pq } else { "/" };
    let location = if redirect.port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{}{pq}", redirect.port)
    };
    let location = HeaderValue::from_str(&location).map_err(|_| {
        ProxyError::new(ErrorKind::BadRequest).context("Host unusable in a redirect")
    })?;
    let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::PERMANENT_REDIRECT);
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(
        uri: &str,
        host: Option<&str>,
        port: u16,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        redirect_to_https(&b.body(()).unwrap(), &RedirectHttps { port, status: 301 })
    }

    #[test]
    fn redirects_keep_host_path_and_query() {
        let r = redirect("/a/b?x=1", Some("Example.com:8080"), 443).unwrap();
        assert_eq!(r.status(), 301);
        assert_eq!(r.headers()[header::LOCATION], "https://Example.com/a/b?x=1");
        let r = redirect("/", Some("[::1]:80"), 8443).unwrap();
        assert_eq!(r.headers()[header::LOCATION], "https://[::1]:8443/");
        assert!(redirect("/", None, 443).is_err());
        assert!(redirect("/", Some(":80"), 443).is_err());
        assert!(redirect("/", Some("a.test@evil"), 443).is_err());
    }
}
