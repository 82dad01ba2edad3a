//! The key a request is counted under, from the parts a limit's `key` names:
//!
//! - `consumer`: the identified consumer's name; a caller identified by a
//!   token that names no consumer is keyed by its subject; an anonymous
//!   request by its client IP (each tagged, so the three never share a key).
//! - `ip`: the client IP, as resolved through `forwarding.trusted_proxies`.
//! - `route`: the name of the route the request matched.
//! - `header:<name>`: every value of that request header, in order; a
//!   request without it has an empty part, so all such requests share one
//!   key (combine it with `ip` to avoid that).
//! - `claim:<path>`: a claim of the caller's token (`tier`, or `org.id` for a
//!   nested one; the whole path is tried first as one claim name, as
//!   `claims_to_headers` does); missing (or no token) is an empty part, as
//!   for headers.
//!
//! The parts are serialized with a length before each one, so two different
//! requests can only get the same key when every part is equal. Local
//! limits hash that with a keyed 64-bit hash whose key is random per process
//! (nothing to allocate; a client cannot aim at another's key). Redis limits
//! use a SHA-256 digest, stable across instances, so Redis keys never carry
//! client text.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName};

use crate::auth::{ClaimPath, Identity};

/// The hash key of local limits: one per process, so kept state stays
/// reachable across reloads.
static HASH_KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);

/// Bytes of the SHA-256 digest kept in Redis keys (128 bits: collisions
/// are out of reach).
const DIGEST_BYTES: usize = 16;

/// One part of a key.
#[derive(Debug)]
enum Part {
    Consumer,
    Ip,
    Route,
    Header(HeaderName),
    Claim(ClaimPath),
}

/// A compiled `key`: its parts, in order.
#[derive(Debug)]
pub struct KeySpec {
    parts: Box<[Part]>,
}

/// What a key is made of: the parts of one request the parts can name.
pub struct Subject<'a> {
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Who is calling, once identified.
    pub identity: Option<&'a Identity>,
    /// The client IP.
    pub client_ip: IpAddr,
    /// The matched route's name.
    pub route: &'a str,
}

impl KeySpec {
    /// Whether a part names the caller (`consumer`, `claim:`): such a key
    /// needs the identity that authentication finds.
    pub fn needs_identity(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Consumer | Part::Claim(_)))
    }

    /// Compiles the parts of a `key`; the error names the offending part.
    pub fn parse(parts: &[String]) -> Result<Self, String> {
        if parts.is_empty() {
            return Err("`key` lists no part; use `ip`, `consumer`, `route`, `header:<name>` or `claim:<path>`".into());
        }
        let parts = parts
            .iter()
            .map(|p| parse_part(p))
            .collect::<Result<Box<[Part]>, String>>()?;
        Ok(Self { parts })
    }

    /// The key of `s` for a local limit.
    pub fn hash(&self, s: &Subject<'_>) -> u64 {
        let mut h = HASH_KEY.build_hasher();
        self.feed(s, &mut |b| h.write(b));
        h.finish()
    }

    /// The key of `s` for a Redis limit: hex, fixed length.
    pub fn digest(&self, s: &Subject<'_>) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        self.feed(s, &mut |b| ctx.update(b));
        let digest = ctx.finish();
        let mut out = String::with_capacity(DIGEST_BYTES * 2);
        for b in digest.as_ref().iter().take(DIGEST_BYTES) {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Writes the parts of `s`, each with its length first.
    fn feed(&self, s: &Subject<'_>, out: &mut dyn FnMut(&[u8])) {
        for part in &self.parts {
            match part {
                Part::Consumer => match s.identity {
                    Some(Identity {
                        consumer: Some(c), ..
                    }) => tagged(out, b'c', c.name.as_bytes()),
                    Some(Identity {
                        subject: Some(sub), ..
                    }) => tagged(out, b's', sub.as_bytes()),
                    _ => {
                        out(b"i");
                        ip(out, s.client_ip);
                    }
                },
                Part::Ip => ip(out, s.client_ip),
                Part::Route => framed(out, s.route.as_bytes()),
                Part::Header(name) => {
                    let values = s.headers.get_all(name);
                    let count = values.iter().count() as u64;
                    out(&count.to_le_bytes());
                    for v in values {
                        framed(out, v.as_bytes());
                    }
                }
                Part::Claim(path) => claim(out, s.identity, path),
            }
        }
    }
}

fn parse_part(p: &str) -> Result<Part, String> {
    match p {
        "consumer" => return Ok(Part::Consumer),
        "ip" => return Ok(Part::Ip),
        "route" => return Ok(Part::Route),
        _ => {}
    }
    if let Some(name) = p.strip_prefix("header:") {
        return HeaderName::from_bytes(name.as_bytes())
            .map(Part::Header)
            .map_err(|_| format!("key part `{p}`: `{name}` is not a valid header name"));
    }
    if let Some(path) = p.strip_prefix("claim:") {
        return ClaimPath::parse(path)
            .map(Part::Claim)
            .map_err(|e| format!("key part `{p}`: {e}"));
    }
    Err(format!(
        "unknown key part `{p}`: use `ip`, `consumer`, `route`, `header:<name>` or `claim:<path>`"
    ))
}

fn framed(out: &mut dyn FnMut(&[u8]), bytes: &[u8]) {
    out(&(bytes.len() as u64).to_le_bytes());
    out(bytes);
}

fn tagged(out: &mut dyn FnMut(&[u8]), tag: u8, bytes: &[u8]) {
    out(&[tag]);
    framed(out, bytes);
}

fn ip(out: &mut dyn FnMut(&[u8]), ip: IpAddr) {
    // An IPv4 client seen through an IPv6 socket is the same client.
    match ip.to_canonical() {
        IpAddr::V4(v4) => tagged(out, 4, &v4.octets()),
        IpAddr::V6(v6) => tagged(out, 6, &v6.octets()),
    }
}

/// A claim's value, found as `claims_to_headers` and `authorize` find it: a
/// string as is, a number or boolean as JSON text, anything else as its
/// JSON; missing is empty.
fn claim(out: &mut dyn FnMut(&[u8]), identity: Option<&Identity>, path: &ClaimPath) {
    let found = identity
        .and_then(|i| i.claims.as_deref())
        .and_then(|claims| path.lookup(claims));
    match found {
        None | Some(serde_json::Value::Null) => framed(out, b""),
        Some(serde_json::Value::String(s)) => framed(out, s.as_bytes()),
        Some(other) => framed(out, other.to_string().as_bytes()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use http::HeaderValue;

    use super::*;
    use crate::auth::Consumer;

    fn spec(parts: &[&str]) -> KeySpec {
        KeySpec::parse(&parts.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn subject<'a>(
        headers: &'a HeaderMap,
        identity: Option<&'a Identity>,
        ip: &str,
    ) -> Subject<'a> {
        Subject {
            headers,
            identity,
            client_ip: ip.parse().unwrap(),
            route: "api",
        }
    }

    fn identity(
        consumer: Option<&str>,
        subject: Option<&str>,
        claims: serde_json::Value,
    ) -> Identity {
        Identity {
            consumer: consumer.map(|n| {
                Arc::new(Consumer {
                    name: n.into(),
                    groups: Box::default(),
                    metadata: Default::default(),
                })
            }),
            subject: subject.map(Into::into),
            claims: claims.as_object().cloned().map(Arc::new),
            provider: "p".into(),
        }
    }

    #[test]
    fn parts_are_checked() {
        for ok in ["ip", "consumer", "route", "header:X-Tenant", "claim:org.id"] {
            assert!(KeySpec::parse(&[ok.into()]).is_ok(), "{ok}");
        }
        let err = |p: &str| KeySpec::parse(&[p.into()]).unwrap_err();
        assert!(err("header:bad name").contains("not a valid header name"));
        assert!(err("claim:a..b").contains("not a claim path"));
        assert!(err("claim:").contains("not a claim path"));
        assert!(err("user").contains("unknown key part `user`"));
        assert!(KeySpec::parse(&[]).unwrap_err().contains("no part"));
    }

    #[test]
    fn keys_follow_the_parts() {
        let h = HeaderMap::new();
        let ip = spec(&["ip"]);
        assert_eq!(
            ip.hash(&subject(&h, None, "10.0.0.1")),
            ip.hash(&subject(&h, None, "10.0.0.1"))
        );
        assert_ne!(
            ip.hash(&subject(&h, None, "10.0.0.1")),
            ip.hash(&subject(&h, None, "10.0.0.2"))
        );
        assert_eq!(
            ip.hash(&subject(&h, None, "10.0.0.1")),
            ip.hash(&subject(&h, None, "::ffff:10.0.0.1")),
            "a mapped IPv4 address is the same client"
        );

        let route = spec(&["route"]);
        let mut other = subject(&h, None, "10.0.0.1");
        let same = route.hash(&other);
        other.route = "web";
        assert_ne!(route.hash(&other), same);
    }

    #[test]
    fn consumer_falls_back_to_subject_then_ip() {
        let h = HeaderMap::new();
        let c = spec(&["consumer"]);
        let alice = identity(Some("alice"), None, serde_json::json!({}));
        let alice_tok = identity(None, Some("alice"), serde_json::json!({}));
        let k_alice = c.hash(&subject(&h, Some(&alice), "10.0.0.1"));
        assert_eq!(
            k_alice,
            c.hash(&subject(&h, Some(&alice), "10.0.0.2")),
            "not by IP"
        );
        assert_ne!(
            k_alice,
            c.hash(&subject(&h, Some(&alice_tok), "10.0.0.1")),
            "consumer and subject differ"
        );
        let anon1 = c.hash(&subject(&h, None, "10.0.0.1"));
        assert_ne!(anon1, c.hash(&subject(&h, None, "10.0.0.2")));
        assert_ne!(anon1, k_alice);
    }

    #[test]
    fn headers_and_claims() {
        let key = spec(&["header:x-tenant"]);
        let mut a = HeaderMap::new();
        a.insert("x-tenant", HeaderValue::from_static("a"));
        let mut b = HeaderMap::new();
        b.insert("x-tenant", HeaderValue::from_static("b"));
        let none = HeaderMap::new();
        let mut empty = HeaderMap::new();
        empty.insert("x-tenant", HeaderValue::from_static(""));
        let k = |h: &HeaderMap| key.hash(&subject(h, None, "10.0.0.1"));
        assert_ne!(k(&a), k(&b));
        assert_ne!(k(&none), k(&empty), "absent differs from empty");
        assert_eq!(
            k(&none),
            key.hash(&subject(&none, None, "10.9.9.9")),
            "absent: one shared key"
        );

        let key = spec(&["claim:org.id"]);
        let k = |v: serde_json::Value| {
            let id = identity(None, Some("s"), v);
            key.hash(&subject(&none, Some(&id), "10.0.0.1"))
        };
        assert_eq!(
            k(serde_json::json!({"org": {"id": "x"}})),
            k(serde_json::json!({"org": {"id": "x"}, "z": 1}))
        );
        assert_ne!(
            k(serde_json::json!({"org": {"id": "x"}})),
            k(serde_json::json!({"org": {"id": "y"}}))
        );
        assert_eq!(
            k(serde_json::json!({"org": {"id": 7}})),
            k(serde_json::json!({"org": {"id": "7"}}))
        );
        assert_eq!(
            k(serde_json::json!({})),
            k(serde_json::json!({"org": "flat"})),
            "missing is empty"
        );
    }

    #[test]
    fn claim_names_with_dots_are_found_whole_first() {
        let none = HeaderMap::new();
        let key = spec(&["claim:https://x.io/tier"]);
        let k = |v: serde_json::Value| {
            let id = identity(None, Some("s"), v);
            key.hash(&subject(&none, Some(&id), "10.0.0.1"))
        };
        let gold = k(serde_json::json!({"https://x.io/tier": "gold"}));
        assert_ne!(gold, k(serde_json::json!({"https://x.io/tier": "free"})));
        assert_ne!(gold, k(serde_json::json!({})), "the whole name is read");
        assert_eq!(
            gold,
            k(serde_json::json!({"https://x": {"io/tier": "gold"}})),
            "then the dotted path, as `claims_to_headers` does"
        );
    }

    #[test]
    fn parts_do_not_run_into_each_other() {
        let key = spec(&["header:a", "header:b"]);
        let two = |a: &'static str, b: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("a", HeaderValue::from_static(a));
            h.insert("b", HeaderValue::from_static(b));
            key.hash(&subject(&h, None, "10.0.0.1"))
        };
        assert_ne!(two("ab", "c"), two("a", "bc"));
        assert_ne!(two("", "x"), two("x", ""));
    }

    #[test]
    fn redis_keys_are_fixed_length_hex_without_client_text() {
        let key = spec(&["header:x-user", "ip"]);
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("secret-name"));
        let d = key.digest(&subject(&h, None, "10.0.0.1"));
        assert_eq!(d.len(), 32);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(d, key.digest(&subject(&h, None, "10.0.0.1")), "stable");
        assert_ne!(d, key.digest(&subject(&h, None, "10.0.0.2")));
    }
}
