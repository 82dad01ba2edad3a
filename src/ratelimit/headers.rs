//! Rate-limit response headers.
//!
//! IETF (draft-ietf-httpapi-ratelimit-headers-10/11): `RateLimit-Policy` and
//! `RateLimit`, Structured Field lists with one member per limit, named after
//! the limit. For a GCRA rate limit:
//!
//! - `q` is the burst (the most requests available at once) and `w` the
//!   seconds the burst takes to refill from empty (`burst` × the time one
//!   request costs), so `q/w` is exactly the steady rate. `w` must be whole
//!   seconds: when the refill time is not, `w` is rounded up and `q` scaled
//!   to the same rate (rounded down). With the default burst this is the
//!   configured rate: `100/m` gives `q=100;w=60`.
//! - `r` is the requests available right after this one and `t` the seconds
//!   (rounded up) until the limit is full again; so always `r <= q`, `t <= w`.
//!
//! A concurrency limit has `q` = the requests in flight allowed and
//! `qu="concurrent-requests"` (the draft's unit), no `w`; `r` is the free
//! slots, no `t`.
//!
//! Legacy: `X-RateLimit-Limit` (`q`), `X-RateLimit-Remaining` (`r`) and
//! `X-RateLimit-Reset` (`t`, seconds; not for concurrency limits). They can
//! carry one limit only: the one with the fewest requests left.
//!
//! The policy field is built once at compile time; per request only the
//! numbers are formatted.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::gcra::Gcra;
use crate::config::LimitHeaders;

/// `RateLimit-Policy`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The header parts of one limit, built at compile time.
pub struct LimitHeaderSpec {
    which: LimitHeaders,
    /// `q` (also `X-RateLimit-Limit`).
    quota: u64,
    /// This limit's `RateLimit-Policy` member.
    policy_item: String,
    /// The start of its `RateLimit` member: `"name";r=`.
    status_prefix: Box<[u8]>,
}

/// One limit's state after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Requests (or slots) available.
    pub remaining: u64,
    /// Seconds until the limit is full again; `None` for concurrency.
    pub reset: Option<u64>,
}

impl LimitHeaderSpec {
    /// The headers of a rate limit named `name`; an error when the name
    /// cannot be written in a Structured Field string.
    pub fn rate(name: &str, which: LimitHeaders, gcra: Gcra) -> Result<Self, String> {
        let (q, w) = quota_window(gcra);
        Self::build(name, which, q, &format!(";w={w}"))
    }

    /// The headers of a concurrency limit of `limit` requests in flight.
    pub fn concurrency(name: &str, which: LimitHeaders, limit: u32) -> Result<Self, String> {
        Self::build(name, which, u64::from(limit), ";qu=\"concurrent-requests\"")
    }

    fn build(name: &str, which: LimitHeaders, quota: u64, rest: &str) -> Result<Self, String> {
        let ietf = matches!(which, LimitHeaders::Ietf | LimitHeaders::Both);
        let quoted = if ietf {
            sf_string(name).ok_or_else(|| {
                format!("the name `{name}` is used in RateLimit headers and must be printable ASCII; rename the limit or set `headers: legacy` or `none`")
            })?
        } else {
            String::new()
        };
        Ok(Self {
            which,
            quota,
            policy_item: format!("{quoted};q={quota}{rest}"),
            status_prefix: format!("{quoted};r=").into_bytes().into(),
        })
    }

    fn ietf(&self) -> bool {
        matches!(self.which, LimitHeaders::Ietf | LimitHeaders::Both)
    }

    fn legacy(&self) -> bool {
        matches!(self.which, LimitHeaders::Legacy | LimitHeaders::Both)
    }
}

/// The `RateLimit-Policy` value of a route's limits (`None`: no IETF headers).
pub fn policy_value<'a>(specs: impl Iterator<Item = &'a LimitHeaderSpec>) -> Option<HeaderValue> {
    let items: Vec<&str> = specs
        .filter(|s| s.ietf())
        .map(|s| s.policy_item.as_str())
        .collect();
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_maybe_shared(Bytes::from(items.join(", "))).ok()
}

/// Collects the headers of one request's decisions.
pub struct Headers<'a> {
    policy: Option<&'a HeaderValue>,
    status: Vec<u8>,
    legacy: Option<(u64, Status)>,
}

impl<'a> Headers<'a> {
    /// Headers for a route whose `RateLimit-Policy` is `policy`.
    pub fn new(policy: Option<&'a HeaderValue>) -> Self {
        Self {
            policy,
            status: Vec::new(),
            legacy: None,
        }
    }

    /// Adds one limit's status.
    pub fn add(&mut self, spec: &LimitHeaderSpec, status: Status) {
        if spec.ietf() {
            if self.status.is_empty() {
                self.status.reserve(64);
            } else {
                self.status.extend_from_slice(b", ");
            }
            self.status.extend_from_slice(&spec.status_prefix);
            push_u64(&mut self.status, status.remaining);
            if let Some(t) = status.reset {
                self.status.extend_from_slice(b";t=");
                push_u64(&mut self.status, t);
            }
        }
        if spec.legacy() {
            let tighter = self.legacy.is_none_or(|(_, s)| {
                (status.remaining, std::cmp::Reverse(status.reset))
                    < (s.remaining, std::cmp::Reverse(s.reset))
            });
            if tighter {
                self.legacy = Some((spec.quota, status));
            }
        }
    }

    /// Whether nothing is to be written.
    pub fn is_empty(&self) -> bool {
        self.status.is_empty() && self.legacy.is_none()
    }

    /// Writes the headers into `out`.
    pub fn write(self, out: &mut HeaderMap) {
        if !self.status.is_empty() {
            if let Some(p) = self.policy {
                out.append(RATELIMIT_POLICY.clone(), p.clone());
            }
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(self.status)) {
                out.append(RATELIMIT.clone(), v);
            }
        }
        if let Some((quota, s)) = self.legacy {
            out.insert(X_LIMIT.clone(), HeaderValue::from(quota));
            out.insert(X_REMAINING.clone(), HeaderValue::from(s.remaining));
            if let Some(t) = s.reset {
                out.insert(X_RESET.clone(), HeaderValue::from(t));
            }
        }
    }
}

/// Whole seconds of `d`, rounded up (delta-seconds).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` for a wait of `d`: whole seconds, rounded up, at least 1
/// (a client told 0 would retry at once and be refused again).
pub fn retry_after(d: Duration) -> HeaderValue {
    HeaderValue::from(ceil_secs(d).max(1))
}

/// `q` and `w` of a GCRA limit (see the module docs).
pub fn quota_window(gcra: Gcra) -> (u64, u64) {
    const SEC: u128 = 1_000_000_000;
    let emission = u128::from(gcra.emission.max(1));
    let refill = u128::from(gcra.burst) * emission;
    let w = refill.div_ceil(SEC).max(1);
    let q = (w * SEC / emission).max(u128::from(gcra.burst));
    (
        u64::try_from(q).unwrap_or(u64::MAX),
        u64::try_from(w).unwrap_or(u64::MAX),
    )
}

/// `s` as a Structured Field string (RFC 8941 §3.3.3), `None` when it holds
/// anything but printable ASCII.
fn sf_string(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::units::Rate;

    fn gcra(count: u64, millis: u64, burst: u64) -> Gcra {
        Gcra::new(
            Rate {
                count,
                period: Duration::from_millis(millis),
            },
            burst,
        )
    }

    #[test]
    fn quota_and_window_keep_the_rate() {
        assert_eq!(quota_window(gcra(100, 60_000, 100)), (100, 60));
        assert_eq!(quota_window(gcra(50, 3_600_000, 50)), (50, 3600));
        assert_eq!(quota_window(gcra(10, 1_000, 20)), (20, 2));
        assert_eq!(
            quota_window(gcra(10, 1_000, 5)),
            (10, 1),
            "0.5 s refill shown per second"
        );
        assert_eq!(quota_window(gcra(7, 10_000, 7)), (7, 10));
        assert_eq!(quota_window(gcra(1, 100, 1)), (10, 1));
    }

    #[test]
    fn exact_header_text() {
        let a =
            LimitHeaderSpec::rate("per-ip", LimitHeaders::Ietf, gcra(100, 60_000, 100)).unwrap();
        let b = LimitHeaderSpec::concurrency("slots", LimitHeaders::Both, 4).unwrap();
        let c = LimitHeaderSpec::rate("hourly", LimitHeaders::Legacy, gcra(1000, 3_600_000, 1000))
            .unwrap();
        let specs = [&a, &b, &c];
        let policy = policy_value(specs.into_iter()).unwrap();
        assert_eq!(
            policy,
            r#""per-ip";q=100;w=60, "slots";q=4;qu="concurrent-requests""#
        );

        let mut h = Headers::new(Some(&policy));
        h.add(
            &a,
            Status {
                remaining: 42,
                reset: Some(35),
            },
        );
        h.add(
            &b,
            Status {
                remaining: 3,
                reset: None,
            },
        );
        h.add(
            &c,
            Status {
                remaining: 999,
                reset: Some(4),
            },
        );
        let mut out = HeaderMap::new();
        h.write(&mut out);
        assert_eq!(out["ratelimit-policy"], policy);
        assert_eq!(out["ratelimit"], r#""per-ip";r=42;t=35, "slots";r=3"#);
        // Legacy: the limit with the fewest left of the legacy ones.
        assert_eq!(out["x-ratelimit-limit"], "4");
        assert_eq!(out["x-ratelimit-remaining"], "3");
        assert!(!out.contains_key("x-ratelimit-reset"));
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn legacy_only_and_none() {
        let l = LimitHeaderSpec::rate("x", LimitHeaders::Legacy, gcra(60, 60_000, 60)).unwrap();
        let n = LimitHeaderSpec::rate("y", LimitHeaders::None, gcra(60, 60_000, 60)).unwrap();
        assert!(policy_value([&l, &n].into_iter()).is_none());
        let mut h = Headers::new(None);
        h.add(
            &n,
            Status {
                remaining: 1,
                reset: Some(1),
            },
        );
        assert!(h.is_empty());
        h.add(
            &l,
            Status {
                remaining: 0,
                reset: Some(7),
            },
        );
        let mut out = HeaderMap::new();
        h.write(&mut out);
        assert_eq!(out["x-ratelimit-limit"], "60");
        assert_eq!(out["x-ratelimit-remaining"], "0");
        assert_eq!(out["x-ratelimit-reset"], "7");
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn names_are_structured_field_strings() {
        let s = LimitHeaderSpec::rate(r#"a"b\c"#, LimitHeaders::Ietf, gcra(1, 1_000, 1)).unwrap();
        assert_eq!(s.policy_item, r#""a\"b\\c";q=1;w=1"#);
        assert!(LimitHeaderSpec::rate("caf\u{e9}", LimitHeaders::Ietf, gcra(1, 1_000, 1)).is_err());
        assert!(
            LimitHeaderSpec::rate("caf\u{e9}", LimitHeaders::Legacy, gcra(1, 1_000, 1)).is_ok()
        );
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after(Duration::ZERO), "1");
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after(Duration::from_secs(72)), "72");
        let mut v = Vec::new();
        push_u64(&mut v, 0);
        v.push(b' ');
        push_u64(&mut v, u64::MAX);
        assert_eq!(v, b"0 18446744073709551615");
    }
}
