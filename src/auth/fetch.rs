//! A small HTTP client for the auth backends (JWKS, OIDC discovery,
//! introspection): HTTP/1.1 over TCP or TLS (rustls, ring), one connection
//! per exchange, a timeout over the whole exchange (resolve, connect,
//! handshake, request, answer), a bounded answer, `200` only, no redirects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// `User-Agent` of every call, so identity providers can tell the gateway apart.
const USER_AGENT_VALUE: HeaderValue = HeaderValue::from_static("portico");

/// A parsed `http` or `https` URL, ready to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The host to connect to (an IPv6 address without brackets).
    host: Box<str>,
    port: u16,
    /// `Host` header value: the URL's authority.
    authority: HeaderValue,
    path: PathAndQuery,
    /// The TLS server name, for `https`.
    tls_name: Option<ServerName<'static>>,
    /// The URL, for messages.
    shown: Box<str>,
}

impl Target {
    /// Parses `url`: `http` or `https`, a host, no user info.
    pub fn parse(url: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{url}` is not a usable URL: {why}");
        let uri = Uri::try_from(url).map_err(|e| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not allowed"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls_name = if https {
            Some(crate::upstream::tls::server_name(host).map_err(|e| bad(&e))?)
        } else {
            None
        };
        Ok(Self {
            host: host.into(),
            port,
            authority: HeaderValue::from_str(authority.as_str())
                .map_err(|e| bad(&e.to_string()))?,
            path: uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
            tls_name,
            shown: url.into(),
        })
    }

    /// Whether the URL is `https`.
    pub fn is_https(&self) -> bool {
        self.tls_name.is_some()
    }

    /// The URL as configured.
    pub fn as_str(&self) -> &str {
        &self.shown
    }
}

/// A successful (`200`) answer.
#[derive(Debug)]
pub struct Answer {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, at most the client's limit.
    pub body: Bytes,
}

/// A client for one provider's backends.
pub struct Client {
    /// For `https` targets; `None` when the provider only calls `http` ones.
    tls: Option<TlsConnector>,
    timeout: Duration,
    max_body: usize,
}

impl Client {
    /// A client with `timeout` per exchange and answers of at most `max_body`
    /// bytes. `ca` (a PEM file, relative to the folder of the config `file`)
    /// replaces the system roots; TLS is set up only when `tls` is true (a
    /// target may be `https`). Reads files: call off the request path.
    pub fn new(
        ca: Option<&str>,
        file: &str,
        tls: bool,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Self, String> {
        let roots = match ca {
            Some(ca) => {
                let path = crate::tls::resolve_path(&crate::tls::config_dir(file), ca);
                let mut roots = RootCertStore::empty();
                for cert in crate::tls::load_certs(&path).map_err(|e| format!("ca: {e}"))? {
                    roots.add(cert).map_err(|e| {
                        format!("ca `{}`: unusable certificate: {e}", path.display())
                    })?;
                }
                Some(Arc::new(roots))
            }
            None => None,
        };
        let tls = if tls || roots.is_some() {
            let config = ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("ca: {e}"))?
                .with_root_certificates(roots.unwrap_or_else(crate::upstream::tls::system_roots))
                .with_no_client_auth();
            let mut config = config;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self {
            tls,
            timeout,
            max_body,
        })
    }

    /// `GET target`, accepting `accept`.
    pub async fn get(&self, target: &Target, accept: &'static str) -> Result<Answer, String> {
        let req = self
            .request(Method::GET, target, accept)
            .body(Full::new(Bytes::new()));
        self.exchange(target, req).await
    }

    /// `POST target` with a form body and an `Authorization` header.
    pub async fn post_form(
        &self,
        target: &Target,
        authorization: &HeaderValue,
        form: Bytes,
    ) -> Result<Answer, String> {
        let req = self
            .request(Method::POST, target, "application/json")
            .header(AUTHORIZATION, authorization)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(CONTENT_LENGTH, form.len())
            .body(Full::new(form));
        self.exchange(target, req).await
    }

    fn request(
        &self,
        method: Method,
        target: &Target,
        accept: &'static str,
    ) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(Uri::from(target.path.clone()))
            .header(HOST, &target.authority)
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(ACCEPT, accept)
            .header(CONNECTION, "close")
    }

    async fn exchange(
        &self,
        target: &Target,
        req: Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Answer, String> {
        let req = req.map_err(|e| format!("{}: {e}", target.shown))?;
        let attempt = async {
            let tcp = TcpStream::connect((&*target.host, target.port))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            match (&target.tls_name, &self.tls) {
                (None, _) => self.round_trip(tcp, req).await,
                (Some(name), Some(tls)) => {
                    let stream = tls
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake: {e}"))?;
                    self.round_trip(stream, req).await
                }
                (Some(_), None) => Err("https is not set up for this provider".to_owned()),
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{}: {e}", target.shown)),
            Err(_) => Err(format!(
                "{}: timed out after {:?}",
                target.shown, self.timeout
            )),
        }
    }

    /// Sends `req` over `stream` and reads the answer. The connection is
    /// driven in this task, so that the exchange dropped at its timeout closes it.
    async fn round_trip(
        &self,
        stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        req: Request<Full<Bytes>>,
    ) -> Result<Answer, String> {
        let (mut tx, conn) = http1::Builder::new()
            .max_buf_size(64 * 1024)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
            if resp.status() != StatusCode::OK {
                return Err(format!("answered status {}", resp.status().as_u16()));
            }
            let too_big = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|len| len > self.max_body as u64);
            if too_big {
                return Err(format!("answer larger than {} bytes", self.max_body));
            }
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer {
                headers: parts.headers,
                body,
            })
        };
        crate::upstream::health::drive(conn, exchange).await
    }
}

/// `s` encoded as `application/x-www-form-urlencoded` (HTML's algorithm:
/// alphanumerics and `*-._` kept, space as `+`, every other byte `%XX`).
pub fn form_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://idp.example.com/.well-known/jwks.json?x=1").unwrap();
        assert!(t.is_https());
        assert_eq!((&*t.host, t.port), ("idp.example.com", 443));
        assert_eq!(t.path.as_str(), "/.well-known/jwks.json?x=1");
        let t = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!((&*t.host, t.port, t.path.as_str()), ("::1", 8080, "/"));
        assert_eq!(t.authority, "[::1]:8080");
        for bad in [
            "ftp://x/",
            "/relative",
            "http://user:pw@host/",
            "not a url",
            "https:///x",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_encoding() {
        let mut s = String::new();
        form_encode("a b+c/é:~", &mut s);
        assert_eq!(s, "a+b%2Bc%2F%C3%A9%3A%7E");
    }

    /// A server answering one connection with `raw` bytes.
    async fn serve_once(raw: &'static [u8]) -> Target {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(raw).await;
        });
        Target::parse(&format!("http://{addr}/keys")).unwrap()
    }

    fn client(max: usize) -> Client {
        Client::new(None, "portico.yaml", false, Duration::from_secs(2), max).unwrap()
    }

    #[tokio::test]
    async fn answers_are_checked() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
        assert_eq!(
            &client(10).get(&ok, "application/json").await.unwrap().body[..],
            b"{}"
        );
        let redirect =
            serve_once(b"HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n").await;
        let e = client(10).get(&redirect, "*/*").await.unwrap_err();
        assert!(e.contains("status 302"), "{e}");
        let big =
            serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n01234567890123456789").await;
        assert!(
            client(10)
                .get(&big, "*/*")
                .await
                .unwrap_err()
                .contains("larger")
        );
        let chunked = serve_once(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n",
        )
        .await;
        assert!(client(10).get(&chunked, "*/*").await.is_err());
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Target::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap();
        let c = Client::new(None, "x.yaml", false, Duration::from_millis(200), 10).unwrap();
        assert!(c.get(&t, "*/*").await.unwrap_err().contains("timed out"));
        drop(l);
    }
}
