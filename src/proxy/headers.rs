//! Header rules for forwarding (RFC 9110 §7.6): hop-by-hop removal and
//! X-Forwarded-* / Forwarded, trusting only configured proxies.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::observe::trace::TRACEPARENT;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The fields the gateway adds to an upstream request, kept beside its map
/// rather than inserted: an HTTP/1.1 head writes them after the map's fields,
/// sparing a hashed insertion (and a removal later) each; an HTTP/2 request
/// appends them to its map. Whoever sets one drops the client's copies first.
#[derive(Debug, Default)]
pub struct Added<'a> {
    /// `X-Forwarded-For`.
    pub x_forwarded_for: Option<HeaderValue>,
    /// `X-Forwarded-Proto`.
    pub x_forwarded_proto: Option<HeaderValue>,
    /// `X-Forwarded-Host`.
    pub x_forwarded_host: Option<HeaderValue>,
    /// `Forwarded`.
    pub forwarded: Option<HeaderValue>,
    /// `traceparent`.
    pub traceparent: Option<HeaderValue>,
    /// The request id, under its configured name.
    pub request_id: Option<(&'a HeaderName, HeaderValue)>,
}

impl Added<'_> {
    /// The fields set, in the order they are sent.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        [
            (&X_FORWARDED_FOR, &self.x_forwarded_for),
            (&X_FORWARDED_PROTO, &self.x_forwarded_proto),
            (&X_FORWARDED_HOST, &self.x_forwarded_host),
            (&FORWARDED, &self.forwarded),
            (&TRACEPARENT, &self.traceparent),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
        .chain(self.request_id.as_ref().map(|(name, v)| (*name, v)))
    }

    /// Appends the fields to `headers`.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `Forwarded`, as a static for [`Added::iter`].
static FORWARDED: HeaderName = header::FORWARDED;

/// A request field that the request path looks for: one that forwarding
/// drops or replaces, or one that changes how a request is handled.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// A hop-by-hop field ([`remove_hop_by_hop`]) other than `Upgrade`.
    HopByHop,
    /// `Upgrade`, also hop-by-hop.
    Upgrade,
    /// `Content-Type` (a gRPC request gets gRPC errors).
    ContentType,
    /// `Expect`.
    Expect,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `X-Forwarded-Host`.
    XForwardedHost,
    /// `Forwarded`.
    Forwarded,
    /// `traceparent`.
    Traceparent,
    /// `tracestate`.
    Tracestate,
    /// The request id, under its configured name.
    RequestId,
}

/// Which [`Field`]s a request carries, found in one pass over its names.
/// Most requests carry none of them: a pass over their few names costs less
/// than a look for each field, hashed or not. A scan holds until the map is
/// changed: the pipeline scans a request as it arrives, forwarding again
/// once the route's filters ran, and again after a hop-by-hop removal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Present(u16);

// Every field has its bit.
const _: () = assert!((Field::RequestId as u16) < u16::BITS as u16);

impl Present {
    /// The fields `headers` has; `request_id` is the request id's name.
    pub fn scan(headers: &HeaderMap, request_id: &HeaderName) -> Self {
        let mut bits = 0;
        for name in headers.keys() {
            if let Some(f) = field_of(name) {
                bits |= 1 << f as u16;
            }
            if name == request_id {
                bits |= 1 << Field::RequestId as u16;
            }
        }
        Present(bits)
    }

    /// A scan with the default request id name, for tests.
    #[cfg(test)]
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        Self::scan(headers, &HeaderName::from_static("x-request-id"))
    }

    /// Whether the request had `field` when it was scanned.
    pub fn has(self, field: Field) -> bool {
        self.0 & (1 << field as u16) != 0
    }

    /// Whether the request had a hop-by-hop field, `Upgrade` included.
    pub fn has_hop_by_hop(self) -> bool {
        self.has(Field::HopByHop) || self.has(Field::Upgrade)
    }

    /// Removes every `name` field (which is `field`'s) from `headers`, when
    /// the scan found one.
    pub fn remove(self, headers: &mut HeaderMap, field: Field, name: &HeaderName) {
        if self.has(field) {
            headers.remove(name);
        }
    }
}

/// Removes hop-by-hop headers: those named by `Connection`, and the fixed set.
/// `Upgrade` (and `Connection: upgrade`) survive when `upgrading`; `TE: trailers`
/// survives because gRPC needs it end to end. False when the message had
/// none of them and was left as it was.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) -> bool {
    // Most messages carry none of them: one cheap pass over the names saves
    // a hash lookup per hop-by-hop header.
    if !upgrading && !headers.keys().any(is_hop_by_hop) {
        return false;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = list_elements(headers, header::CONNECTION)
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .filter(|n| !(upgrading && n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    let te_trailers =
        list_elements(headers, header::TE).any(|t| t.eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
    true
}

/// The elements of a comma-separated list field (RFC 9110 §5.6.1), over all
/// of its field lines, trimmed; empty elements included.
pub fn list_elements(
    headers: &HeaderMap,
    name: impl header::AsHeaderName,
) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(field_of(name), Some(Field::HopByHop | Field::Upgrade))
}

/// Whether forwarding sets or drops the request field `name` itself: Host
/// and every [`Field`] but `Content-Type` (so a configured name may not be one).
pub fn set_by_forwarding(name: &HeaderName) -> bool {
    name == header::HOST || field_of(name).is_some_and(|f| !matches!(f, Field::ContentType))
}

/// The [`Field`] `name` is, but for the request id (whose name is configured).
fn field_of(name: &HeaderName) -> Option<Field> {
    Some(match name.as_str() {
        "connection" | "te" | "transfer-encoding" | "keep-alive" | "proxy-connection" => {
            Field::HopByHop
        }
        "upgrade" => Field::Upgrade,
        "content-type" => Field::ContentType,
        "expect" => Field::Expect,
        "x-forwarded-for" => Field::XForwardedFor,
        "x-forwarded-proto" => Field::XForwardedProto,
        "x-forwarded-host" => Field::XForwardedHost,
        "forwarded" => Field::Forwarded,
        "traceparent" => Field::Traceparent,
        "tracestate" => Field::Tracestate,
        _ => return None,
    })
}

/// Which peers may set X-Forwarded-* for us.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From CIDRs or single addresses.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        entries
            .into_iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{e}` is not an IP address or CIDR"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address: the peer, or, when the peer is trusted, the nearest
    /// untrusted address in its `X-Forwarded-For` chain.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        let hops: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// An address as a header value (formatted once per connection).
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets X-Forwarded-For/-Proto/-Host (and `Forwarded` when asked) in
/// `added`: appended to a trusted peer's values, replacing anyone else's.
// The peer's three facts, the two settings, the map and where the fields go:
// bundling them would only move the list into a struct built per call.
#[allow(clippy::too_many_arguments)]
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    peer_ip: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
    trusted: &TrustedProxies,
    forwarded_header: bool,
    present: Present,
    added: &mut Added<'_>,
) {
    let trust = trusted.contains(peer.ip());
    // A trusted peer's values, joined; nobody else's are kept.
    let trusted_values = |headers: &HeaderMap, field, name| {
        (trust && present.has(field))
            .then(|| joined(headers, name))
            .flatten()
    };
    let xff = match trusted_values(headers, Field::XForwardedFor, &X_FORWARDED_FOR) {
        Some(mut v) => {
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer_ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        None => Some(peer_ip.clone()),
    };
    if xff.is_some() {
        present.remove(headers, Field::XForwardedFor, &X_FORWARDED_FOR);
        added.x_forwarded_for = xff;
    }
    if !(trust && present.has(Field::XForwardedProto)) {
        present.remove(headers, Field::XForwardedProto, &X_FORWARDED_PROTO);
        added.x_forwarded_proto = Some(HeaderValue::from_static(proto));
    }
    if !(trust && present.has(Field::XForwardedHost)) {
        present.remove(headers, Field::XForwardedHost, &X_FORWARDED_HOST);
        added.x_forwarded_host = host.cloned();
    }
    if forwarded_header {
        let node = match peer.ip() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let mut elem = format!("for={node};proto={proto}");
        if let Some(h) = host.and_then(|h| h.to_str().ok()) {
            elem.push_str(";host=");
            push_quoted(&mut elem, h);
        }
        let value = match trusted_values(headers, Field::Forwarded, &header::FORWARDED) {
            Some(mut v) => {
                v.extend_from_slice(b", ");
                v.extend_from_slice(elem.as_bytes());
                v
            }
            None => elem.into_bytes(),
        };
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            present.remove(headers, Field::Forwarded, &header::FORWARDED);
            added.forwarded = Some(v);
        }
    } else if !trust {
        present.remove(headers, Field::Forwarded, &header::FORWARDED);
    }
}

/// Appends `value` as an RFC 9110 §5.6.4 quoted-string: `"` and `\` are
/// backslash-escaped, so a client's Host cannot close the string and forge
/// further `Forwarded` parameters or elements. (A header value holds only
/// HTAB, SP and visible characters, all of which are otherwise `qdtext`.)
fn push_quoted(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Every line of the list header `name`, joined with `, ` in order (empty
/// lines skipped); `None` when there is no non-empty line.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for v in headers.get_all(name) {
        let v = v.as_bytes().trim_ascii();
        if v.is_empty() {
            continue;
        }
        match out.as_mut() {
            Some(buf) => {
                buf.extend_from_slice(b", ");
                buf.extend_from_slice(v);
            }
            None => out = Some(v.to_vec()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_scan_finds_each_field_by_any_spelling() {
        let fields = [
            ("Connection", Field::HopByHop),
            ("TE", Field::HopByHop),
            ("Transfer-Encoding", Field::HopByHop),
            ("Keep-Alive", Field::HopByHop),
            ("Proxy-Connection", Field::HopByHop),
            ("Upgrade", Field::Upgrade),
            ("Content-Type", Field::ContentType),
            ("Expect", Field::Expect),
            ("X-Forwarded-For", Field::XForwardedFor),
            ("X-Forwarded-Proto", Field::XForwardedProto),
            ("X-Forwarded-Host", Field::XForwardedHost),
            ("Forwarded", Field::Forwarded),
            ("Traceparent", Field::Traceparent),
            ("TraceState", Field::Tracestate),
            ("X-Request-ID", Field::RequestId),
        ];
        let none = Present::of(&map(&[
            ("host", "a"),
            ("x-forwarded", "b"),
            ("accept", "c"),
        ]));
        assert_eq!(none.0, 0, "{none:?}");
        for (name, field) in fields {
            let present = Present::of(&map(&[("host", "a"), (name, "1")]));
            assert!(present.has(field), "{name}");
            assert_eq!(present.0.count_ones(), 1, "{name}: {present:?}");
            assert_eq!(
                present.has_hop_by_hop(),
                matches!(field, Field::HopByHop | Field::Upgrade),
                "{name}"
            );
        }
        // A request id named like a fixed field is both.
        let h = map(&[("content-type", "x")]);
        let present = Present::scan(&h, &header::CONTENT_TYPE);
        assert!(present.has(Field::ContentType) && present.has(Field::RequestId));
        // Removal takes every line of a field found, and only then.
        let mut h = map(&[("expect", "a"), ("expect", "b"), ("accept", "c")]);
        Present::of(&h).remove(&mut h, Field::Expect, &header::EXPECT);
        assert!(!h.contains_key(header::EXPECT) && h.contains_key(header::ACCEPT));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        // HeaderMap does not keep insertion order across removals: compare as a set.
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn upgrade_survives_when_upgrading() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_is_replaced_from_untrusted_and_appended_from_trusted() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let host = HeaderValue::from_static("shop.example");
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let mut added = Added::default();
        let present = Present::of(&h);
        set_forwarded(
            &mut h,
            "1.2.3.4:5".parse().unwrap(),
            &ip_value("1.2.3.4".parse().unwrap()),
            "http",
            Some(&host),
            &trusted,
            false,
            present,
            &mut added,
        );
        added.append_to(&mut h);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example");

        let mut h = map(&[
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
        ]);
        let mut added = Added::default();
        let present = Present::of(&h);
        set_forwarded(
            &mut h,
            "10.1.1.1:5".parse().unwrap(),
            &ip_value("10.1.1.1".parse().unwrap()),
            "http",
            Some(&host),
            &trusted,
            true,
            present,
            &mut added,
        );
        added.append_to(&mut h);
        assert_eq!(h["x-forwarded-for"], "7.7.7.7, 10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=10.1.1.1;proto=http;host=\"shop.example\""
        );
    }

    #[test]
    fn forwarded_host_is_escaped_as_a_quoted_string() {
        let trusted = TrustedProxies::default();
        let forwarded = |host: &'static str| {
            let host = HeaderValue::from_static(host);
            let mut h = HeaderMap::new();
            let mut added = Added::default();
            let present = Present::of(&h);
            set_forwarded(
                &mut h,
                "1.2.3.4:5".parse().unwrap(),
                &ip_value("1.2.3.4".parse().unwrap()),
                "http",
                Some(&host),
                &trusted,
                true,
                present,
                &mut added,
            );
            added.append_to(&mut h);
            h["forwarded"].to_str().unwrap().to_owned()
        };
        // Without escaping this would read as two elements, the second one
        // claiming the client was 6.6.6.6 over https.
        assert_eq!(
            forwarded(r#"x", for=6.6.6.6;proto="https"#),
            r#"for=1.2.3.4;proto=http;host="x\", for=6.6.6.6;proto=\"https""#
        );
        // A backslash is escaped too, so it cannot escape the closing quote.
        assert_eq!(forwarded(r#"x\"#), r#"for=1.2.3.4;proto=http;host="x\\""#);
        assert_eq!(
            forwarded("shop.example:8443"),
            r#"for=1.2.3.4;proto=http;host="shop.example:8443""#
        );
    }

    #[test]
    fn every_line_from_a_trusted_peer_is_kept() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
            ("forwarded", "for=1.1.1.1, for=2.2.2.2"),
            ("forwarded", "for=3.3.3.3;proto=https"),
        ]);
        let mut added = Added::default();
        let present = Present::of(&h);
        set_forwarded(
            &mut h,
            "10.1.1.1:5".parse().unwrap(),
            &ip_value("10.1.1.1".parse().unwrap()),
            "http",
            None,
            &trusted,
            true,
            present,
            &mut added,
        );
        added.append_to(&mut h);
        let all = |h: &HeaderMap, n: &str| -> Vec<String> {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.1.1"]
        );
        assert_eq!(
            all(&h, "forwarded"),
            ["for=1.1.1.1, for=2.2.2.2, for=3.3.3.3;proto=https, for=10.1.1.1;proto=http"]
        );
        // The client address is read from the same chain.
        assert_eq!(
            trusted.client_ip("10.1.1.1".parse().unwrap(), &h),
            "3.3.3.3".parse::<IpAddr>().unwrap()
        );

        // Not trusted: every line is replaced by one.
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "3.3.3.3"),
        ]);
        let mut added = Added::default();
        let present = Present::of(&h);
        set_forwarded(
            &mut h,
            "5.5.5.5:5".parse().unwrap(),
            &ip_value("5.5.5.5".parse().unwrap()),
            "http",
            None,
            &trusted,
            false,
            present,
            &mut added,
        );
        added.append_to(&mut h);
        assert_eq!(all(&h, "x-forwarded-for"), ["5.5.5.5"]);
    }

    #[test]
    fn client_ip_walks_trusted_chain() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8", "192.168.1.1"]).unwrap();
        let h = map(&[("x-forwarded-for", "8.8.8.8, 10.0.0.7")]);
        assert_eq!(
            trusted.client_ip("192.168.1.1".parse().unwrap(), &h),
            "8.8.8.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client_ip("5.5.5.5".parse().unwrap(), &h),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
    }
}
