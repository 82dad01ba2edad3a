//! Where a credential is read from: a header (optionally after a scheme such
//! as `Bearer`), a cookie or a query parameter; and removing it before the
//! request goes upstream.
//!
//! RFC 6750 §2 lets a client send a token one way only: a credential that
//! appears twice in one place (two headers, two cookies or two parameters of
//! that name) is refused rather than one of them picked.

use std::borrow::Cow;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Uri};

use super::Outcome;
use crate::config::TokenSource;

/// Headers that cannot carry a credential: framing, routing and the cookie
/// header (which has a source of its own).
const RESERVED_HEADERS: [HeaderName; 6] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    header::COOKIE,
    header::TE,
];

/// One place a credential is read from.
#[derive(Debug)]
enum Place {
    /// A header; with a scheme, the value is `<scheme> <b64token>`.
    Header {
        name: HeaderName,
        scheme: Option<Box<str>>,
    },
    /// A cookie (names are case-sensitive, RFC 6265 §4.1.1).
    Cookie(Box<str>),
    /// A query parameter, compared after percent-decoding.
    Query(Box<str>),
}

/// The places a provider reads its credential from, in order.
#[derive(Debug)]
pub struct Sources(Box<[Place]>);

/// What [`Sources::locate`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'r> {
    /// No credential in any place.
    Absent,
    /// The first credential found, in source order.
    One(Cow<'r, str>),
    /// A credential is there but unusable (sent twice, malformed); the
    /// reason is safe to show to the client.
    Malformed(&'static str),
}

impl Sources {
    /// Compiles the list.
    pub fn compile(cfg: &[TokenSource]) -> Result<Self, String> {
        if cfg.is_empty() {
            return Err("`from` must name at least one place".into());
        }
        cfg.iter()
            .map(Place::compile)
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The credential a provider checks, or its outcome without one:
    /// `Absent`, or `Rejected` when the credential found is unusable.
    pub fn credential<'r, B>(&self, req: &'r Request<B>) -> Result<Cow<'r, str>, Outcome> {
        match self.locate(req) {
            Found::One(c) => Ok(c),
            Found::Absent => Err(Outcome::Absent),
            Found::Malformed(why) => Err(Outcome::Rejected(why.into())),
        }
    }

    /// The first credential found, in source order, or why the one found is
    /// unusable.
    pub fn locate<'r, B>(&self, req: &'r Request<B>) -> Found<'r> {
        for place in &*self.0 {
            let found = match place {
                Place::Header { name, scheme } => {
                    from_header(req.headers(), name, scheme.as_deref())
                }
                Place::Cookie(name) => from_cookies(req.headers(), name),
                Place::Query(name) => req
                    .uri()
                    .query()
                    .map_or(Found::Absent, |q| from_query(q, name)),
            };
            if found != Found::Absent {
                return found;
            }
        }
        Found::Absent
    }

    /// Removes the credential from every place.
    pub fn strip<B>(&self, req: &mut Request<B>) {
        for place in &*self.0 {
            match place {
                Place::Header { name, scheme } => {
                    strip_header(req.headers_mut(), name, scheme.as_deref())
                }
                Place::Cookie(name) => strip_cookie(req.headers_mut(), name),
                Place::Query(name) => {
                    if let Some(uri) = strip_query(req.uri(), name) {
                        *req.uri_mut() = uri;
                    }
                }
            }
        }
    }
}

impl Place {
    fn compile(s: &TokenSource) -> Result<Self, String> {
        let place = match (&s.header, &s.cookie, &s.query) {
            (Some(h), None, None) => {
                let name = HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("`header: {h}` is not a valid header name"))?;
                if RESERVED_HEADERS.contains(&name) {
                    return Err(format!("`header: {h}` cannot carry a credential"));
                }
                let scheme = match &s.scheme {
                    Some(sc) if sc.is_empty() || !sc.bytes().all(is_tchar) => {
                        return Err(format!(
                            "`scheme: {sc}` is not an authentication scheme (a token such as `Bearer`)"
                        ));
                    }
                    Some(sc) => Some(sc.as_str().into()),
                    None => None,
                };
                return Ok(Self::Header { name, scheme });
            }
            (None, Some(c), None) => {
                if c.is_empty() || !c.bytes().all(is_tchar) {
                    return Err(format!("`cookie: {c}` is not a valid cookie name"));
                }
                Self::Cookie(c.as_str().into())
            }
            (None, None, Some(q)) => {
                if q.is_empty() {
                    return Err("`query` must name a parameter".into());
                }
                Self::Query(q.as_str().into())
            }
            _ => {
                return Err(
                    "a credential source needs exactly one of `header`, `cookie`, `query`".into(),
                );
            }
        };
        if let Some(sc) = &s.scheme {
            return Err(format!("`scheme: {sc}` is only allowed with `header`"));
        }
        Ok(place)
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// What follows the scheme when the leading token of `value` is `scheme`
/// (compared case-insensitively, RFC 9110 §11.1); `None` for another scheme.
/// The leading token ends at the first byte that is not a `tchar`: `Bearerx`
/// is another scheme, while `Bearer<TAB>x` or `Bearer,x` is this one,
/// malformed, so that it is refused and stripped rather than forwarded
/// unverified.
fn after_scheme<'v>(value: &'v [u8], scheme: &str) -> Option<&'v [u8]> {
    let (head, rest) = value.split_at_checked(scheme.len())?;
    (head.eq_ignore_ascii_case(scheme.as_bytes()) && rest.first().is_none_or(|&b| !is_tchar(b)))
        .then_some(rest)
}

/// The token of what follows a scheme: RFC 9110 §11.4 `1*SP token68` (the
/// separator is spaces only, no tab), the token an RFC 6750 `b64token`.
fn scheme_token(rest: &[u8]) -> Option<&str> {
    let token = match rest.iter().position(|&b| b != b' ') {
        Some(n) if n > 0 => &rest[n..],
        _ => return None,
    };
    std::str::from_utf8(token).ok().filter(|t| is_b64token(t))
}

fn from_header<'r>(headers: &'r HeaderMap, name: &HeaderName, scheme: Option<&str>) -> Found<'r> {
    let mut found = Found::Absent;
    for value in headers.get_all(name) {
        let credential = match scheme {
            None if value.is_empty() => continue,
            None => match value.to_str() {
                Ok(text) => text,
                Err(_) => return Found::Malformed("the credential is not visible ASCII"),
            },
            Some(scheme) => match after_scheme(value.as_bytes(), scheme) {
                None => continue,
                Some(rest) => match scheme_token(rest) {
                    Some(token) => token,
                    None => return Found::Malformed("the credential is malformed"),
                },
            },
        };
        if found != Found::Absent {
            return Found::Malformed("the credential is sent more than once");
        }
        found = Found::One(Cow::Borrowed(credential));
    }
    found
}

fn strip_header(headers: &mut HeaderMap, name: &HeaderName, scheme: Option<&str>) {
    let Some(scheme) = scheme else {
        headers.remove(name);
        return;
    };
    // Only the values of this scheme (well-formed or not): another provider
    // may read the same header with another scheme, and it strips its own.
    let ours = |v: &HeaderValue| after_scheme(v.as_bytes(), scheme).is_some();
    if !headers.get_all(name).iter().any(ours) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(name)
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    headers.remove(name);
    for v in kept {
        headers.append(name.clone(), v);
    }
}

/// `b` without leading and trailing SP and HTAB.
fn trim_ows(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != b' ' && c != b'\t');
    let end = b.iter().rposition(|&c| c != b' ' && c != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

/// The `name=value` pairs of one `Cookie` header (RFC 6265 §5.4: pairs
/// separated by `;`, the name up to the first `=`, spaces around trimmed).
/// Read as bytes: a header with non-ASCII bytes elsewhere still carries
/// (and must still be stripped of) the credential.
fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|&b| b == b';').filter_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        Some((trim_ows(&pair[..eq]), trim_ows(&pair[eq + 1..])))
    })
}

fn from_cookies<'r>(headers: &'r HeaderMap, name: &str) -> Found<'r> {
    let mut found = Found::Absent;
    // HTTP/2 may split cookies over several headers (RFC 9113 §8.2.3).
    for header in headers.get_all(header::COOKIE) {
        for (n, v) in cookie_pairs(header.as_bytes()) {
            if n != name.as_bytes() {
                continue;
            }
            // RFC 6265 §4.1.1: a cookie-value may be wrapped in DQUOTEs.
            let v = v
                .strip_prefix(b"\"")
                .and_then(|x| x.strip_suffix(b"\""))
                .unwrap_or(v);
            if v.is_empty() {
                // An emptied cookie (after a logout) is no credential.
                continue;
            }
            if found != Found::Absent {
                return Found::Malformed("the credential is sent more than once");
            }
            match std::str::from_utf8(v) {
                Ok(v) => found = Found::One(Cow::Borrowed(v)),
                Err(_) => return Found::Malformed("the credential is not UTF-8"),
            }
        }
    }
    found
}

fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let has = |h: &HeaderValue| cookie_pairs(h.as_bytes()).any(|(n, _)| n == name.as_bytes());
    if !headers.get_all(header::COOKIE).iter().any(has) {
        return;
    }
    let mut kept = Vec::new();
    for h in headers.get_all(header::COOKIE) {
        if !has(h) {
            kept.push(h.clone());
            continue;
        }
        let mut rest = Vec::with_capacity(h.len());
        for pair in h.as_bytes().split(|&b| b == b';').map(trim_ows) {
            let ours = pair
                .iter()
                .position(|&b| b == b'=')
                .is_some_and(|eq| trim_ows(&pair[..eq]) == name.as_bytes());
            if pair.is_empty() || ours {
                continue;
            }
            if !rest.is_empty() {
                rest.extend_from_slice(b"; ");
            }
            rest.extend_from_slice(pair);
        }
        // The bytes come from a valid value: `from_bytes` cannot fail, and
        // if it did the header would be dropped, never kept whole.
        if !rest.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(&rest)
        {
            kept.push(v);
        }
    }
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX`
/// a byte); `None` when the bytes are not UTF-8. Borrowed when nothing is encoded.
fn form_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    // WHATWG URL: a `%` not followed by two hex digits stays as is.
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The pairs of a query string, split at `&`, each name split from its value
/// at the first `=`.
/// `pq`, a path and query as the access log keeps it, with the values of
/// the query parameters `names` replaced by `REDACTED` (credentials never
/// reach a log); `None` when it has none of them.
pub fn redact_query(pq: &str, names: &[Box<str>]) -> Option<String> {
    let (path, query) = pq.split_once('?')?;
    let secret = |n: &str| names.iter().any(|name| param_is(n, name));
    if !query_pairs(query).any(|(n, _)| secret(n)) {
        return None;
    }
    let mut out = String::with_capacity(pq.len());
    out.push_str(path);
    for (i, part) in query.split('&').enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        match part.split_once('=') {
            Some((n, _)) if secret(n) => {
                out.push_str(n);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(part),
        }
    }
    Some(out)
}

fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn param_is(raw_name: &str, name: &str) -> bool {
    form_decode(raw_name).is_some_and(|n| n == name)
}

fn from_query<'r>(query: &'r str, name: &str) -> Found<'r> {
    let mut found = Found::Absent;
    for (n, v) in query_pairs(query) {
        if !param_is(n, name) {
            continue;
        }
        let v = match form_decode(v) {
            None => return Found::Malformed("the credential is not UTF-8"),
            Some(v) if v.is_empty() => continue,
            Some(v) => v,
        };
        if found != Found::Absent {
            return Found::Malformed("the credential is sent more than once");
        }
        found = Found::One(v);
    }
    found
}

/// `uri` without the parameter `name` (every occurrence), the rest of the
/// query kept byte for byte; `None` when it has no such parameter.
fn strip_query(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    if !query_pairs(query).any(|(n, _)| param_is(n, name)) {
        return None;
    }
    let mut pq = String::with_capacity(uri.path().len() + query.len() + 1);
    pq.push_str(uri.path());
    let mut first = true;
    for part in query.split('&') {
        let n = part.split_once('=').map_or(part, |(n, _)| n);
        if param_is(n, name) {
            continue;
        }
        pq.push(if first { '?' } else { '&' });
        first = false;
        pq.push_str(part);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn credentials_in_a_logged_query_are_redacted() {
        let names: Vec<Box<str>> = vec!["api_key".into(), "access token".into()];
        assert_eq!(
            redact_query(
                "/x?a=1&api_key=s3cret&b=2&access+token=t&api%5Fkey=z",
                &names
            )
            .as_deref(),
            Some("/x?a=1&api_key=REDACTED&b=2&access+token=REDACTED&api%5Fkey=REDACTED")
        );
        assert_eq!(redact_query("/x?a=1", &names), None);
        assert_eq!(redact_query("/x", &names), None);
    }

    use super::*;

    fn src(
        header: Option<&str>,
        scheme: Option<&str>,
        cookie: Option<&str>,
        query: Option<&str>,
    ) -> TokenSource {
        TokenSource {
            header: header.map(Into::into),
            scheme: scheme.map(Into::into),
            cookie: cookie.map(Into::into),
            query: query.map(Into::into),
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    fn bearer() -> Sources {
        Sources::compile(&[src(Some("Authorization"), Some("Bearer"), None, None)]).unwrap()
    }

    #[test]
    fn compile_checks_each_source() {
        assert!(Sources::compile(&[]).is_err());
        let e = Sources::compile(&[src(Some("a"), None, Some("c"), None)]).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = Sources::compile(&[src(None, None, None, None)]).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = Sources::compile(&[src(None, Some("Bearer"), Some("c"), None)]).unwrap_err();
        assert!(e.contains("only allowed with `header`"), "{e}");
        let e = Sources::compile(&[src(Some("bad header"), None, None, None)]).unwrap_err();
        assert!(e.contains("`header: bad header`"), "{e}");
        let e = Sources::compile(&[src(Some("Host"), None, None, None)]).unwrap_err();
        assert!(e.contains("cannot carry"), "{e}");
        let e = Sources::compile(&[src(Some("authorization"), Some("Bea rer"), None, None)])
            .unwrap_err();
        assert!(e.contains("`scheme: Bea rer`"), "{e}");
        let e = Sources::compile(&[src(None, None, Some("a;b"), None)]).unwrap_err();
        assert!(e.contains("cookie name"), "{e}");
        assert!(Sources::compile(&[src(None, None, None, Some(""))]).is_err());
    }

    #[test]
    fn header_with_scheme_follows_rfc_6750() {
        let s = bearer();
        let found = |v: &str| match s.locate(&req("/", &[("authorization", v)])) {
            Found::One(c) => Found::One(Cow::Owned(c.into_owned())),
            Found::Absent => Found::Absent,
            Found::Malformed(m) => Found::Malformed(m),
        };
        assert_eq!(
            found("Bearer abc.DEF-_~+/=="),
            Found::One("abc.DEF-_~+/==".into())
        );
        assert_eq!(found("bEaReR  tok"), Found::One("tok".into()));
        assert_eq!(found("Basic dXNlcjpwdw=="), Found::Absent);
        assert_eq!(found("Bearerx tok"), Found::Absent);
        assert!(matches!(found("Bearer"), Found::Malformed(_)));
        assert!(matches!(found("Bearer a b"), Found::Malformed(_)));
        assert!(matches!(found("Bearer =abc"), Found::Malformed(_)));
        assert!(matches!(found("Bearer a,b"), Found::Malformed(_)));
        let twice = req(
            "/",
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        );
        assert!(matches!(s.locate(&twice), Found::Malformed(_)));
        // Every provider reads through `credential`: a token sent twice is
        // refused (401), never taken for no token (anonymous access).
        assert!(matches!(s.credential(&twice), Err(Outcome::Rejected(_))));
        assert!(matches!(s.credential(&req("/", &[])), Err(Outcome::Absent)));
        // Another scheme next to ours is not a second credential.
        let mixed = req(
            "/",
            &[("authorization", "Basic x"), ("authorization", "Bearer b")],
        );
        assert_eq!(s.credential(&mixed).ok().as_deref(), Some("b"));
        assert_eq!(s.locate(&req("/", &[])), Found::Absent);
    }

    #[test]
    fn a_value_of_our_scheme_is_ours_whatever_follows() {
        let basic =
            Sources::compile(&[src(Some("Authorization"), Some("Basic"), None, None)]).unwrap();
        for (s, v) in [
            (bearer(), "Bearer\tx"),
            (bearer(), "Bearer \tx"),
            (bearer(), "Bearer"),
            (bearer(), "BEARER,x"),
            (bearer(), "Bearer=x"),
            (bearer(), "Bearer\"x\""),
            (basic, "Basic\tdXNlcjpwdw=="),
        ] {
            // Never `Absent`: that would let the value through unverified
            // on an anonymous route, or beside a valid credential.
            let r = req("/", &[("authorization", v)]);
            assert!(matches!(s.locate(&r), Found::Malformed(_)), "{v:?}");
        }
        // RFC 9110 §11.4: `1*SP` may be several spaces.
        let r = req("/", &[("authorization", "bearer  x")]);
        assert_eq!(bearer().credential(&r).ok().as_deref(), Some("x"));
        // A valid token next to a tab-separated one is a second credential.
        let r = req(
            "/",
            &[
                ("authorization", "Bearer good"),
                ("authorization", "Bearer\tforged"),
            ],
        );
        assert!(matches!(bearer().credential(&r), Err(Outcome::Rejected(_))));
    }

    #[test]
    fn strip_removes_every_value_of_this_scheme() {
        let mut r = req(
            "/",
            &[
                ("authorization", "Bearer good"),
                ("authorization", "Bearer\tforged"),
                ("authorization", "bearer"),
                ("authorization", "Bearer,x"),
                ("authorization", "Bearerx y"),
                ("authorization", "Basic\tx"),
            ],
        );
        bearer().strip(&mut r);
        let left: Vec<_> = r.headers().get_all("authorization").iter().collect();
        assert_eq!(left, ["Bearerx y", "Basic\tx"]);
    }

    #[test]
    fn cookie_headers_with_non_ascii_bytes_are_read_and_stripped() {
        let s = Sources::compile(&[src(None, None, Some("session"), None)]).unwrap();
        let with = |values: &[&[u8]]| {
            let mut r = req("/", &[]);
            for v in values {
                r.headers_mut()
                    .append("cookie", HeaderValue::from_bytes(v).unwrap());
            }
            r
        };
        let r = with(&[b"t=\xff; session=tok"]);
        assert_eq!(s.credential(&r).ok().as_deref(), Some("tok"));
        let r = with(&[b"session=alice-key", b"session=forged; t=\xff"]);
        assert!(matches!(s.locate(&r), Found::Malformed(_)));
        let r = with(&[b"session=\xffx"]);
        assert!(matches!(s.locate(&r), Found::Malformed(_)));

        let mut r = with(&[b"session=alice-key", b"session=forged;\tt=\xff ;u=1"]);
        s.strip(&mut r);
        let left: Vec<_> = r.headers().get_all("cookie").iter().collect();
        assert_eq!(left, [&b"t=\xff; u=1"[..]]);
    }

    #[test]
    fn plain_header_is_case_insensitive_and_taken_whole() {
        let s = Sources::compile(&[src(Some("X-API-Key"), None, None, None)]).unwrap();
        assert_eq!(
            s.credential(&req("/", &[("x-api-key", "k 1")]))
                .ok()
                .as_deref(),
            Some("k 1")
        );
        assert_eq!(s.locate(&req("/", &[("x-api-key", "")])), Found::Absent);
        let twice = req("/", &[("x-api-key", "a"), ("x-api-key", "a")]);
        assert!(matches!(s.locate(&twice), Found::Malformed(_)));
    }

    #[test]
    fn cookies_are_read_across_headers() {
        let s = Sources::compile(&[src(None, None, Some("session"), None)]).unwrap();
        let r = req(
            "/",
            &[("cookie", "a=1; b=2"), ("cookie", "session=\"tok\"; c=3")],
        );
        assert_eq!(s.credential(&r).ok().as_deref(), Some("tok"));
        let r = req("/", &[("cookie", "Session=x;session=y")]);
        assert_eq!(s.credential(&r).ok().as_deref(), Some("y"));
        let r = req("/", &[("cookie", "session=a"), ("cookie", "session=b")]);
        assert!(matches!(s.locate(&r), Found::Malformed(_)));
        assert_eq!(
            s.locate(&req("/", &[("cookie", "xsession=1")])),
            Found::Absent
        );

        let mut r = req(
            "/",
            &[
                ("cookie", "a=1; session=x; b=2"),
                ("cookie", "session=y"),
                ("x", "y"),
            ],
        );
        s.strip(&mut r);
        let left: Vec<_> = r.headers().get_all("cookie").iter().collect();
        assert_eq!(left, ["a=1; b=2"]);
    }

    #[test]
    fn query_is_decoded_and_stripped_byte_for_byte() {
        let s = Sources::compile(&[src(None, None, None, Some("api_key"))]).unwrap();
        let r = req("/p?a=%2F&api_key=k%2By+z&b", &[]);
        assert_eq!(s.credential(&r).ok().as_deref(), Some("k+y z"));
        let r = req("/p?api%5Fkey=x", &[]);
        assert_eq!(s.credential(&r).ok().as_deref(), Some("x"));
        let r = req("/p?api_key=a&api_key=b", &[]);
        assert!(matches!(s.locate(&r), Found::Malformed(_)));
        let r = req("/p?api_key=%FF", &[]);
        assert!(matches!(s.locate(&r), Found::Malformed(_)));
        assert_eq!(s.locate(&req("/p?x=1", &[])), Found::Absent);

        let mut r = req("/p?a=%2F&api_key=k&&b=2;c", &[]);
        s.strip(&mut r);
        assert_eq!(r.uri().to_string(), "/p?a=%2F&&b=2;c");
        let mut r = req("http://h/p?api_key=k", &[]);
        s.strip(&mut r);
        assert_eq!(r.uri().to_string(), "http://h/p");
        let mut r = req("/p?z=1", &[]);
        s.strip(&mut r);
        assert_eq!(r.uri().to_string(), "/p?z=1");
    }

    #[test]
    fn strip_removes_only_this_scheme() {
        let s = bearer();
        let mut r = req(
            "/",
            &[("authorization", "Basic x"), ("authorization", "bearer t")],
        );
        s.strip(&mut r);
        let left: Vec<_> = r.headers().get_all("authorization").iter().collect();
        assert_eq!(left, ["Basic x"]);
    }

    #[test]
    fn sources_are_tried_in_order() {
        let s = Sources::compile(&[
            src(Some("x-key"), None, None, None),
            src(None, None, None, Some("key")),
        ])
        .unwrap();
        assert_eq!(
            s.credential(&req("/?key=q", &[("x-key", "h")]))
                .ok()
                .as_deref(),
            Some("h")
        );
        assert_eq!(
            s.credential(&req("/?key=q", &[])).ok().as_deref(),
            Some("q")
        );
        let mut r = req("/?key=q&o=1", &[("x-key", "h")]);
        s.strip(&mut r);
        assert!(r.headers().get("x-key").is_none());
        assert_eq!(r.uri().to_string(), "/?o=1");
    }
}
