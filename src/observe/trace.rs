//! W3C Trace Context (Recommendation, 23 November 2021): the gateway takes part
//! in the caller's trace, or starts one, and tells the upstream.
//!
//! A valid `traceparent` is continued: same trace id and sampled flag, a new
//! span id for the gateway, which the upstream sees as its parent. Anything
//! else (absent, malformed, sent twice) starts a new trace and drops
//! `tracestate`, as the processing model requires. A continued trace keeps
//! `tracestate` when the combined list is valid, and drops it otherwise.
//! Parsing and formatting work on fixed-size arrays and allocate nothing but
//! the outgoing header value.

use std::fmt;

use http::header::{GetAll, HeaderMap, HeaderName, HeaderValue};

use crate::proxy::headers::{Added, Field, Present};

/// The `traceparent` request header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` request header.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Length of a version `00` `traceparent`, and the shortest one of any version.
const TRACEPARENT_LEN: usize = 55;
/// The sampled bit of `trace-flags`; the only flag version `00` defines.
const SAMPLED: u8 = 0x01;
/// Most `tracestate` list members (§3.3.1.1).
const MAX_MEMBERS: usize = 32;

/// A trace id: 16 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A span id: 8 bytes, never all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    fn random() -> Self {
        // Never zero (an invalid id); a full-range draw is cheaper than a
        // draw from `1..`, and zero comes once in 2^128.
        Self(fastrand::u128(..).max(1).to_be_bytes())
    }
}

impl SpanId {
    fn random() -> Self {
        Self(fastrand::u64(..).max(1).to_be_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let out = &mut buf[..bytes.len() * 2];
    encode_hex(bytes, out);
    f.write_str(std::str::from_utf8(out).map_err(|_| fmt::Error)?)
}

/// The gateway's place in a trace, for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace: the caller's, or started here.
    pub trace_id: TraceId,
    /// The gateway's span; upstreams see it as their parent.
    pub span_id: SpanId,
    /// The caller's span, when the trace was continued.
    pub parent_id: Option<SpanId>,
    /// Whether the trace may be recorded (the `sampled` flag).
    pub sampled: bool,
}

/// What a valid `traceparent` carries.
#[derive(Debug, PartialEq, Eq)]
struct Parent {
    trace_id: TraceId,
    parent_id: SpanId,
    sampled: bool,
}

impl SpanContext {
    /// Continues the trace of the request's `traceparent` when it is valid and
    /// sent once, keeping the caller's sampling decision; otherwise starts a
    /// trace, sampled with probability `sample_ratio`.
    pub fn from_request(headers: &HeaderMap, present: Present, sample_ratio: f64) -> Self {
        // Only one field may carry it: none, or several, start a new trace.
        let sole = present.has(Field::Traceparent).then(|| {
            let mut fields = headers.get_all(&TRACEPARENT).iter();
            (fields.next(), fields.next())
        });
        let parent = match sole {
            Some((Some(value), None)) => parse_traceparent(value.as_bytes()),
            _ => None,
        };
        let span_id = SpanId::random();
        match parent {
            Some(p) => Self {
                trace_id: p.trace_id,
                span_id,
                parent_id: Some(p.parent_id),
                sampled: p.sampled,
            },
            None => Self {
                trace_id: TraceId::random(),
                span_id,
                parent_id: None,
                // `f64()` is below 1, so a ratio of 1 samples every trace and 0 none.
                sampled: sample_ratio >= 1.0 || fastrand::f64() < sample_ratio,
            },
        }
    }

    /// Sets the upstream request's trace context: a `traceparent` (version
    /// `00`, in `added`) naming the gateway's span as the parent, and `tracestate` only
    /// when the trace was continued and the combined list is valid (several
    /// fields are joined into one).
    pub fn propagate(&self, headers: &mut HeaderMap, present: Present, added: &mut Added<'_>) {
        // The caller's never passes: the gateway's names its own span.
        present.remove(headers, Field::Traceparent, &TRACEPARENT);
        added.traceparent = HeaderValue::from_bytes(&self.traceparent()).ok();
        if self.parent_id.is_none() || !present.has(Field::Tracestate) {
            present.remove(headers, Field::Tracestate, &TRACESTATE);
            return;
        }
        let fields = headers.get_all(&TRACESTATE);
        let several = fields.iter().nth(1).is_some();
        match members(fields) {
            Some(0) | None => {
                headers.remove(&TRACESTATE);
            }
            Some(_) if several => {
                match HeaderValue::from_bytes(&joined(headers.get_all(&TRACESTATE))) {
                    Ok(value) => {
                        headers.insert(&TRACESTATE, value);
                    }
                    Err(_) => {
                        headers.remove(&TRACESTATE);
                    }
                }
            }
            Some(_) => {}
        }
    }

    /// The `traceparent` value naming this span as the parent.
    fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        encode_hex(&self.trace_id.0, &mut out[3..35]);
        encode_hex(&self.span_id.0, &mut out[36..52]);
        if self.sampled {
            out[54] = b'1';
        }
        out
    }
}

/// Parses a `traceparent` value (§3.2): version `00` exactly, a higher version
/// by its first four fields (§3.2.4). Lowercase hex only; version `ff` and
/// all-zero ids are invalid. Optional whitespace around the value is ignored.
fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let v = trim_ows(value);
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(v[0], v[1])?;
    let ends_well = match version {
        0xff => false,
        0x00 => v.len() == TRACEPARENT_LEN,
        // A later version may add fields, each after a dash.
        _ => v.len() == TRACEPARENT_LEN || v[TRACEPARENT_LEN] == b'-',
    };
    if !ends_well || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    decode_hex(&v[3..35], &mut trace_id)?;
    decode_hex(&v[36..52], &mut parent_id)?;
    let flags = hex_byte(v[53], v[54])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id: TraceId(trace_id),
        parent_id: SpanId(parent_id),
        // Other flags are reserved; they are not passed on.
        sampled: flags & SAMPLED != 0,
    })
}

/// Counts the members of the `tracestate` list combined from `fields`
/// (RFC 9110 §5.3); `None` when a member is malformed, a key repeats, or there
/// are more than 32. Empty members are allowed and not counted (§3.3.1.1).
fn members(fields: GetAll<'_, HeaderValue>) -> Option<usize> {
    let mut keys: [&[u8]; MAX_MEMBERS] = [&[]; MAX_MEMBERS];
    let mut n = 0;
    for field in fields {
        for member in field.as_bytes().split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            let eq = member.iter().position(|&b| b == b'=')?;
            let (key, value) = (&member[..eq], &member[eq + 1..]);
            if n == MAX_MEMBERS || !valid_key(key) || !valid_value(value) {
                return None;
            }
            if keys[..n].contains(&key) {
                return None;
            }
            keys[n] = key;
            n += 1;
        }
    }
    Some(n)
}

/// The non-empty members of `fields`, joined into one list.
fn joined(fields: GetAll<'_, HeaderValue>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for field in fields {
        for member in field.as_bytes().split(|&b| b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(member);
        }
    }
    out
}

/// `key = simple-key / multi-tenant-key` (§3.3.1.3.1).
fn valid_key(key: &[u8]) -> bool {
    fn part(s: &[u8], max: usize, digit_first: bool) -> bool {
        let Some((&first, rest)) = s.split_first() else {
            return false;
        };
        (first.is_ascii_lowercase() || (digit_first && first.is_ascii_digit()))
            && s.len() <= max
            && rest.iter().all(|&b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'_' | b'-' | b'*' | b'/')
            })
    }
    match key.iter().position(|&b| b == b'@') {
        None => part(key, 256, false),
        Some(at) => part(&key[..at], 241, true) && part(&key[at + 1..], 14, false),
    }
}

/// `value = 0*255(chr) nblk-chr`: printable ASCII but `,` and `=`, not ending
/// in a space (§3.3.1.3.2).
fn valid_value(value: &[u8]) -> bool {
    value.len() <= 256
        && value.last().is_some_and(|&b| b != b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// Strips optional whitespace (spaces and tabs) from both ends.
fn trim_ows(s: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` into `out`, which is twice as long.
pub(crate) fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Decodes lowercase hex into `out`, which is half as long as `hex`.
fn decode_hex(hex: &[u8], out: &mut [u8]) -> Option<()> {
    for (pair, b) in hex.chunks_exact(2).zip(out.iter_mut()) {
        *b = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    Some((hex_digit(hi)? << 4) | hex_digit(lo)?)
}

/// A lowercase hex digit's value (`HEXDIGLC`).
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream request's fields once `ctx` is propagated through `h`.
    fn propagate_into(ctx: &SpanContext, h: &mut HeaderMap) {
        let mut added = Added::default();
        let present = Present::of(h);
        ctx.propagate(h, present, &mut added);
        added.append_to(h);
    }

    const TRACE: &str = "12345678901234567890123456789012";
    const PARENT: &str = "1234567890123456";

    /// A parse result as (trace id, parent id, sampled).
    type Parsed = Option<(String, String, bool)>;

    fn parsed(s: &str) -> Parsed {
        parse_traceparent(s.as_bytes())
            .map(|p| (p.trace_id.to_string(), p.parent_id.to_string(), p.sampled))
    }

    #[test]
    fn traceparent_table() {
        let ok = |sampled| Some((TRACE.to_owned(), PARENT.to_owned(), sampled));
        let cases: &[(&str, Parsed)] = &[
            // Valid version 00, both flag values, other flag bits masked off.
            (&format!("00-{TRACE}-{PARENT}-01"), ok(true)),
            (&format!("00-{TRACE}-{PARENT}-00"), ok(false)),
            (&format!("00-{TRACE}-{PARENT}-09"), ok(true)),
            (&format!("00-{TRACE}-{PARENT}-fe"), ok(false)),
            // Optional whitespace around the value.
            (&format!(" 00-{TRACE}-{PARENT}-01"), ok(true)),
            (&format!("\t00-{TRACE}-{PARENT}-01"), ok(true)),
            (&format!("00-{TRACE}-{PARENT}-01 "), ok(true)),
            (&format!("\t 00-{TRACE}-{PARENT}-01 \t"), ok(true)),
            // Version 00 is exactly 55 characters.
            (&format!("00-{TRACE}-{PARENT}-01."), None),
            (
                &format!("00-{TRACE}-{PARENT}-01-what-the-future-will-be-like"),
                None,
            ),
            // A later version: first four fields, more only after a dash.
            (&format!("cc-{TRACE}-{PARENT}-01"), ok(true)),
            (
                &format!("cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like"),
                ok(true),
            ),
            (
                &format!("cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like"),
                None,
            ),
            (&format!("01-{TRACE}-{PARENT}-00-"), ok(false)),
            // Version ff is forbidden.
            (&format!("ff-{TRACE}-{PARENT}-01"), None),
            // Version: two lowercase hex digits.
            (&format!(".0-{TRACE}-{PARENT}-01"), None),
            (&format!("0.-{TRACE}-{PARENT}-01"), None),
            (&format!("000-{TRACE}-{PARENT}-01"), None),
            (&format!("0000-{TRACE}-{PARENT}-01"), None),
            (&format!("0-{TRACE}-{PARENT}-01"), None),
            (&format!("0A-{TRACE}-{PARENT}-01"), None),
            // trace-id: 32 lowercase hex digits, not all zero.
            (
                &format!("00-00000000000000000000000000000000-{PARENT}-01"),
                None,
            ),
            (
                &format!("00-.2345678901234567890123456789012-{PARENT}-01"),
                None,
            ),
            (
                &format!("00-1234567890123456789012345678901.-{PARENT}-01"),
                None,
            ),
            (
                &format!("00-123456789012345678901234567890123-{PARENT}-01"),
                None,
            ),
            (
                &format!("00-1234567890123456789012345678901-{PARENT}-01"),
                None,
            ),
            (
                &format!("00-ABCDEF78901234567890123456789012-{PARENT}-01"),
                None,
            ),
            // parent-id: 16 lowercase hex digits, not all zero.
            (&format!("00-{TRACE}-0000000000000000-01"), None),
            (&format!("00-{TRACE}-.234567890123456-01"), None),
            (&format!("00-{TRACE}-123456789012345.-01"), None),
            (&format!("00-{TRACE}-12345678901234567-01"), None),
            (&format!("00-{TRACE}-123456789012345-01"), None),
            (&format!("00-{TRACE}-ABCDEF7890123456-01"), None),
            // trace-flags: two lowercase hex digits.
            (&format!("00-{TRACE}-{PARENT}-.0"), None),
            (&format!("00-{TRACE}-{PARENT}-0."), None),
            (&format!("00-{TRACE}-{PARENT}-001"), None),
            (&format!("00-{TRACE}-{PARENT}-1"), None),
            (&format!("00-{TRACE}-{PARENT}-0A"), None),
            // Wrong delimiters, empty, whitespace inside.
            (&format!("00_{TRACE}-{PARENT}-01"), None),
            (&format!("00-{TRACE}_{PARENT}-01"), None),
            (&format!("00-{TRACE}-{PARENT}_01"), None),
            (&format!("00-{TRACE} {PARENT}-01"), None),
            ("", None),
            ("   ", None),
        ];
        for (input, want) in cases {
            assert_eq!(&parsed(input), want, "{input:?}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn a_valid_traceparent_is_continued() {
        let h = headers(&[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]);
        let ctx = SpanContext::from_request(&h, Present::of(&h), 0.0);
        assert_eq!(ctx.trace_id.to_string(), TRACE);
        assert_eq!(
            ctx.parent_id.map(|p| p.to_string()).as_deref(),
            Some(PARENT)
        );
        assert_ne!(ctx.span_id.0, [0; 8]);
        assert!(ctx.sampled, "the caller's decision wins over the ratio");
    }

    #[test]
    fn a_missing_or_repeated_traceparent_starts_a_trace() {
        let one = format!("00-{TRACE}-{PARENT}-01");
        for h in [
            headers(&[]),
            headers(&[("traceparent", &one), ("traceparent", &one)]),
            headers(&[("trace-parent", &one)]),
        ] {
            let ctx = SpanContext::from_request(&h, Present::of(&h), 1.0);
            assert_ne!(ctx.trace_id.to_string(), TRACE);
            assert_ne!(ctx.trace_id.0, [0; 16]);
            assert_eq!(ctx.parent_id, None);
            assert!(ctx.sampled);
            assert!(!SpanContext::from_request(&h, Present::of(&h), 0.0).sampled);
        }
    }

    #[test]
    fn new_ids_differ() {
        let a = SpanContext::from_request(&HeaderMap::new(), Present::default(), 1.0);
        let b = SpanContext::from_request(&HeaderMap::new(), Present::default(), 1.0);
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
    }

    #[test]
    fn traceparent_is_formatted_as_version_00() {
        let ctx = SpanContext {
            trace_id: TraceId([0xab; 16]),
            span_id: SpanId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]),
            parent_id: None,
            sampled: true,
        };
        assert_eq!(
            &ctx.traceparent(),
            b"00-abababababababababababababababab-0123456789abcdef-01"
        );
        let unsampled = SpanContext {
            sampled: false,
            ..ctx
        };
        assert_eq!(&unsampled.traceparent()[52..], b"-00");
        assert_eq!(ctx.trace_id.to_string(), "ab".repeat(16));
        assert_eq!(ctx.span_id.to_string(), "0123456789abcdef");
    }

    /// Propagates a continued trace through headers holding `tracestate`
    /// fields; returns the upstream's `tracestate` fields.
    fn propagated_state(fields: &[&str]) -> Vec<String> {
        let tp = format!("00-{TRACE}-{PARENT}-00");
        let mut pairs = vec![("traceparent", tp.as_str())];
        pairs.extend(fields.iter().map(|f| ("tracestate", *f)));
        let mut h = headers(&pairs);
        let ctx = SpanContext::from_request(&h, Present::of(&h), 1.0);
        propagate_into(&ctx, &mut h);
        let tp = h.get(&TRACEPARENT).unwrap().to_str().unwrap().to_owned();
        assert_eq!(tp, format!("00-{TRACE}-{}-00", ctx.span_id));
        h.get_all(&TRACESTATE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn valid_tracestate_is_kept() {
        let all_key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x7e)
            .filter(|b| *b != b',' && *b != b'=')
            .map(char::from)
            .collect();
        let thirty_two: Vec<String> = (1..=32).map(|i| format!("k{i}=v")).collect();
        let cases: &[&str] = &[
            "foo=1",
            "foo=1,bar=2",
            "foo=1 \t , \t bar=2, \t baz=3",
            " foo=1",
            "foo=1\t",
            "foo=1,,bar=2",
            &format!("{all_key}={value}"),
            &format!("{all_key}@a-z0-9_-*/={value}"),
            &format!("{}=1", "z".repeat(256)),
            &format!("{}@{}=1", "t".repeat(241), "v".repeat(14)),
            "9tenant@sys=1",
            &format!("foo={}", "x".repeat(256)),
            &thirty_two.join(","),
        ];
        for field in cases {
            assert_eq!(
                propagated_state(&[field]),
                vec![field.to_string()],
                "{field:?}"
            );
        }
    }

    #[test]
    fn several_tracestate_fields_are_joined() {
        assert_eq!(
            propagated_state(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]),
            ["foo=1,bar=2,rojo=1,congo=2,baz=3"]
        );
        assert_eq!(propagated_state(&["foo=1", ""]), ["foo=1"]);
        assert_eq!(propagated_state(&["", " foo=1 , "]), ["foo=1"]);
    }

    #[test]
    fn invalid_tracestate_is_dropped() {
        let thirty_three: Vec<String> = (1..=33).map(|i| format!("k{i}=v")).collect();
        let cases: &[&[&str]] = &[
            &[""],
            &["  , "],
            &["foo=1,foo=1"],
            &["foo=1,foo=2"],
            &["foo=1", "foo=2"],
            &["foo =1"],
            &["FOO=1"],
            &["foo.bar=1"],
            &["foo@=1,bar=2"],
            &["@foo=1,bar=2"],
            &["foo@@bar=1,bar=2"],
            &["foo@bar@baz=1,bar=2"],
            &["1foo=1"],
            &["foo=bar=baz"],
            &["foo=,bar=3"],
            &["foo"],
            &["foo=1", &format!("{}=1", "z".repeat(257))],
            &["foo=1", &format!("{}@v=1", "t".repeat(242))],
            &["foo=1", &format!("t@{}=1", "v".repeat(15))],
            &[&format!("foo={}", "x".repeat(257))],
            &[&thirty_three.join(",")],
            &[&thirty_three[..16].join(","), &thirty_three[16..].join(",")],
        ];
        for fields in cases {
            assert_eq!(propagated_state(fields), Vec::<String>::new(), "{fields:?}");
        }
    }

    #[test]
    fn a_new_trace_drops_tracestate() {
        for pairs in [
            &[("tracestate", "foo=1")][..],
            &[
                (
                    "traceparent",
                    "00-00000000000000000000000000000000-1234567890123456-01",
                ),
                ("tracestate", "foo=1"),
            ][..],
        ] {
            let mut h = headers(pairs);
            let ctx = SpanContext::from_request(&h, Present::of(&h), 1.0);
            propagate_into(&ctx, &mut h);
            assert!(h.get(&TRACESTATE).is_none());
            let tp = h.get(&TRACEPARENT).unwrap().as_bytes();
            let again = parse_traceparent(tp).unwrap();
            assert_eq!(again.trace_id, ctx.trace_id);
            assert_eq!(again.parent_id, ctx.span_id);
            assert!(again.sampled);
        }
    }

    #[test]
    fn a_later_version_is_sent_on_as_00() {
        let mut h = headers(&[("traceparent", &format!("cc-{TRACE}-{PARENT}-03-extra"))]);
        let ctx = SpanContext::from_request(&h, Present::of(&h), 0.0);
        propagate_into(&ctx, &mut h);
        let tp = h.get(&TRACEPARENT).unwrap().to_str().unwrap();
        assert_eq!(tp, format!("00-{TRACE}-{}-01", ctx.span_id));
    }

    #[test]
    fn trim_ows_strips_spaces_and_tabs_only() {
        assert_eq!(trim_ows(b" \ta b\t "), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b"\nx"), b"\nx");
    }
}
