//! Precompiled request predicates: host patterns, path matchers, header and
//! query conditions, and the path-prefix helpers they share.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};

use super::template::is_valid_name;
use crate::config::schema::ValueMatch;

/// Removes `prefix` from `path` on a segment boundary; the result always starts with `/`.
///
/// `/api` strips `/api` to `/` and `/api/x` to `/x`, and does not apply to `/apix`.
/// Trailing slashes of `prefix` are ignored (`/api/` acts as `/api`); prefix `/`
/// (or an empty one) returns `path` unchanged.
pub fn strip_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') {
        Some(rest)
    } else {
        None
    }
}

/// Whether `path` is `prefix` or lies below it; `prefix` must have no trailing `/`.
fn has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A configured host: exact, or `*.suffix` (one or more labels before `suffix`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum HostPattern {
    /// Lowercased exact host.
    Exact(Box<str>),
    /// Lowercased suffix after `*.`.
    Wildcard(Box<str>),
}

impl HostPattern {
    /// Parses and normalises a configured host (lowercase, one trailing `.` dropped).
    pub(crate) fn parse(raw: &str) -> Result<HostPattern, String> {
        let lower = raw.to_ascii_lowercase();
        let host = lower.strip_suffix('.').unwrap_or(&lower);
        if host.is_empty() {
            return Err("host is empty".into());
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            check_host_name(raw, suffix)?;
            if suffix.starts_with('[') {
                return Err(format!(
                    "host `{raw}`: a wildcard cannot apply to an IP address"
                ));
            }
            return Ok(HostPattern::Wildcard(suffix.into()));
        }
        if host.contains('*') {
            return Err(format!(
                "host `{raw}`: `*` is only allowed as the whole first label, as in `*.example.com`"
            ));
        }
        check_host_name(raw, host)?;
        Ok(HostPattern::Exact(host.into()))
    }

    /// The text as normalised (`*.` kept for wildcards), for comparisons.
    pub(crate) fn canonical(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.to_string(),
            HostPattern::Wildcard(s) => format!("*.{s}"),
        }
    }
}

/// Whether `host` matches the wildcard `*.suffix` (and is not the bare `suffix`).
pub(crate) fn wildcard_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

fn check_host_name(raw: &str, host: &str) -> Result<(), String> {
    if let Some(inner) = host.strip_prefix('[') {
        let ok = inner.strip_suffix(']').is_some_and(|addr| {
            !addr.is_empty()
                && addr
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        });
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "host `{raw}`: an IPv6 address must be written in brackets without a port, as in `[::1]`"
            ))
        };
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        let hint = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            "routes match the host without its port"
        } else {
            "`:` is not allowed in a host name"
        };
        return Err(format!("host `{raw}`: {hint}"));
    }
    if !host.is_ascii() {
        return Err(format!(
            "host `{raw}`: write internationalised names in their ASCII (`xn--`) form"
        ));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("host `{raw}`: character `{bad}` is not allowed"));
    }
    if host.split('.').any(str::is_empty) {
        return Err(format!("host `{raw}` has an empty label"));
    }
    Ok(())
}

/// How the path is matched.
#[derive(Debug)]
pub(crate) enum PathMatcher {
    /// Any path.
    Any,
    /// Byte-for-byte equal.
    Exact(Box<str>),
    /// On a segment boundary; no trailing `/`, never just `/`.
    Prefix(Box<str>),
    /// A matchit template holding exactly one route.
    Template {
        router: matchit::Router<()>,
        names: Box<[Arc<str>]>,
    },
    /// Anchored regex over the whole path.
    Regex(regex::Regex),
}

/// Ranking data and identity of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateInfo {
    /// Parameter names in order.
    pub names: Vec<String>,
    /// Bytes outside placeholders.
    pub literal_bytes: usize,
    /// `/`-separated segments.
    pub segments: usize,
    /// Ends with `{*name}`.
    pub catch_all: bool,
    /// The template with parameter names erased (`/u/{}/{*}`).
    pub shape: String,
}

/// Scans a `{param}` / `{*rest}` path template (braces are always placeholders).
pub(crate) fn analyse_template(template: &str) -> Result<TemplateInfo, String> {
    let mut info = TemplateInfo {
        names: Vec::new(),
        literal_bytes: 0,
        segments: template.split('/').filter(|s| !s.is_empty()).count(),
        catch_all: false,
        shape: String::with_capacity(template.len()),
    };
    let mut rest = template;
    let mut offset = 0;
    while let Some(at) = rest.find(['{', '}']) {
        info.literal_bytes += at;
        info.shape.push_str(&rest[..at]);
        let pos = offset + at;
        if info.catch_all {
            return Err(format!(
                "path template `{template}`: the catch-all parameter must come last"
            ));
        }
        if rest.as_bytes()[at] == b'}' {
            return Err(format!(
                "path template `{template}`: unexpected `}}` at byte {pos} (literal braces are not allowed)"
            ));
        }
        let after = &rest[at + 1..];
        let Some(close) = after
            .find(['{', '}'])
            .filter(|&i| after.as_bytes()[i] == b'}')
        else {
            return Err(format!(
                "path template `{template}`: unclosed `{{` at byte {pos} (literal braces are not allowed)"
            ));
        };
        let inner = &after[..close];
        let (name, catch_all) = match inner.strip_prefix('*') {
            Some(name) => (name, true),
            None => (inner, false),
        };
        if !is_valid_name(name) {
            return Err(format!(
                "path template `{template}`: invalid parameter name `{inner}` at byte {pos}; use letters, digits, `_` and `-`"
            ));
        }
        if info.names.iter().any(|n| n == name) {
            return Err(format!(
                "path template `{template}`: parameter `{name}` appears twice"
            ));
        }
        if catch_all {
            let starts_segment = pos > 0 && template.as_bytes()[pos - 1] == b'/';
            if !starts_segment {
                return Err(format!(
                    "path template `{template}`: the catch-all `{{*{name}}}` must be a whole segment, as in `/files/{{*{name}}}`"
                ));
            }
            info.shape.push_str("{*}");
        } else {
            info.shape.push_str("{}");
        }
        info.catch_all |= catch_all;
        info.names.push(name.to_owned());
        let consumed = at + 1 + close + 1;
        rest = &rest[consumed..];
        offset += consumed;
    }
    if info.catch_all && !rest.is_empty() {
        return Err(format!(
            "path template `{template}`: the catch-all parameter must come last"
        ));
    }
    info.literal_bytes += rest.len();
    info.shape.push_str(rest);
    Ok(info)
}

/// Compiles a template into a single-route matchit router.
pub(crate) fn compile_template(template: &str, info: &TemplateInfo) -> Result<PathMatcher, String> {
    let mut router = matchit::Router::new();
    router.insert(template, ()).map_err(|e| match e {
        matchit::InsertError::InvalidParamSegment => {
            format!("path template `{template}`: only one parameter is allowed per path segment")
        }
        other => format!("invalid path template `{template}`: {other}"),
    })?;
    Ok(PathMatcher::Template {
        router,
        names: info.names.iter().map(|n| Arc::from(n.as_str())).collect(),
    })
}

/// Compiles `pattern` so it must match the whole input.
fn anchored(pattern: &str) -> String {
    format!(r"\A(?:{pattern})\z")
}

/// Compiles a whole-path regex.
pub(crate) fn compile_path_regex(pattern: &str) -> Result<regex::Regex, String> {
    // Check the pattern on its own first: wrapping could hide unbalanced groups.
    regex::Regex::new(pattern).map_err(|e| regex_error(pattern, &e, true))?;
    regex::Regex::new(&anchored(pattern)).map_err(|e| regex_error(pattern, &e, false))
}

fn compile_value_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::Regex::new(pattern).map_err(|e| regex_error(pattern, &e, true))?;
    regex::bytes::Regex::new(&anchored(pattern)).map_err(|e| regex_error(pattern, &e, false))
}

/// One line for a regex error. The regex crate explains a syntax error over
/// several lines (the pattern, a `^` line under the fault, `error: reason`);
/// this keeps the reason and, when the pattern is one line with one marked
/// span, the character (1-based) where the fault starts. `own` says whether
/// `err` came from `pattern` itself, not from a wrapped copy (whose positions
/// are shifted).
pub(crate) fn regex_error(pattern: &str, err: &regex::Error, own: bool) -> String {
    let shown = one_line(pattern);
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines.iter().rposition(|l| l.starts_with("error: ")) else {
        return format!("invalid regex `{shown}`: {}", one_line(&text));
    };
    let reason = lines[at..]
        .iter()
        .map(|l| l.strip_prefix("error: ").unwrap_or(l).trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    // A one-line pattern is shown on line 1, indented by 4 spaces, and the
    // `^` marks on line 2 at the same indent.
    let column = lines[..at]
        .get(2)
        .filter(|_| own && !pattern.contains('\n'))
        .filter(|marks| marks.chars().all(|c| c == ' ' || c == '^'))
        .filter(|marks| marks.split(' ').filter(|s| !s.is_empty()).count() == 1)
        .and_then(|marks| marks.find('^'))
        .and_then(|i| i.checked_sub(3));
    match column {
        Some(c) => format!("invalid regex `{shown}`: {reason} (at character {c})"),
        None => format!("invalid regex `{shown}`: {reason}"),
    }
}

/// `text` with control characters escaped (`\n`, `\t`, `\u{1b}`), so that
/// an error message stays on one line.
pub(crate) fn one_line(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl PathMatcher {
    /// Matches `path`; `Some` carries template parameters (empty otherwise).
    #[inline]
    pub(crate) fn matches<'r, 'p>(&'r self, path: &'p str) -> Option<matchit::Params<'r, 'p>> {
        let ok = match self {
            PathMatcher::Any => true,
            PathMatcher::Exact(p) => path == &**p,
            PathMatcher::Prefix(p) => has_prefix(path, p),
            PathMatcher::Regex(re) => re.is_match(path),
            PathMatcher::Template { router, .. } => {
                return router.at(path).ok().map(|m| m.params);
            }
        };
        ok.then(matchit::Params::new)
    }
}

/// What a header or query value must be.
#[derive(Debug)]
pub(crate) enum ValueCond {
    /// Present, any value.
    Present,
    /// Exactly these bytes (case-sensitive).
    Exact(Box<str>),
    /// Anchored regex over the whole value.
    Regex(regex::bytes::Regex),
}

impl ValueCond {
    fn compile(vm: &ValueMatch, what: &str) -> Result<ValueCond, String> {
        match (&vm.value, &vm.regex) {
            (Some(_), Some(_)) => Err(format!(
                "{what} `{}`: give `value` or `regex`, not both",
                vm.name
            )),
            (Some(v), None) => Ok(ValueCond::Exact(v.as_str().into())),
            (None, Some(re)) => compile_value_regex(re)
                .map(ValueCond::Regex)
                .map_err(|e| format!("{what} `{}`: {e}", vm.name)),
            (None, None) => Ok(ValueCond::Present),
        }
    }

    #[inline]
    fn accepts(&self, value: &[u8]) -> bool {
        match self {
            ValueCond::Present => true,
            ValueCond::Exact(v) => v.as_bytes() == value,
            ValueCond::Regex(re) => re.is_match(value),
        }
    }
}

/// A header condition; any of the header's field values may satisfy it.
#[derive(Debug)]
pub(crate) struct HeaderCond {
    name: HeaderName,
    cond: ValueCond,
}

impl HeaderCond {
    /// Compiles a `match.headers` entry.
    pub(crate) fn compile(vm: &ValueMatch) -> Result<HeaderCond, String> {
        if vm.name.is_empty() {
            return Err("header condition has an empty name".into());
        }
        let name = HeaderName::from_bytes(vm.name.as_bytes())
            .map_err(|_| format!("invalid header name `{}`", vm.name))?;
        let cond = ValueCond::compile(vm, "header")?;
        Ok(HeaderCond { name, cond })
    }

    /// The lowercased header name.
    pub(crate) fn name(&self) -> &str {
        self.name.as_str()
    }

    #[inline]
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        match &self.cond {
            ValueCond::Present => headers.contains_key(&self.name),
            cond => headers
                .get_all(&self.name)
                .iter()
                .any(|v| cond.accepts(v.as_bytes())),
        }
    }
}

/// A query parameter condition; any occurrence of the parameter may satisfy it.
#[derive(Debug)]
pub(crate) struct QueryCond {
    name: Box<str>,
    cond: ValueCond,
}

/// Decoded values up to this many bytes are compared without allocating.
const STACK_DECODE: usize = 256;

impl QueryCond {
    /// Compiles a `match.query` entry.
    pub(crate) fn compile(vm: &ValueMatch) -> Result<QueryCond, String> {
        if vm.name.is_empty() {
            return Err("query condition has an empty name".into());
        }
        let cond = ValueCond::compile(vm, "query parameter")?;
        Ok(QueryCond {
            name: vm.name.as_str().into(),
            cond,
        })
    }

    #[inline]
    pub(crate) fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        query_pairs(query).any(|(name, value)| {
            decoded_eq(name, self.name.as_bytes()) && self.value_matches(value)
        })
    }

    fn value_matches(&self, raw: &str) -> bool {
        match &self.cond {
            ValueCond::Present => true,
            ValueCond::Exact(v) => decoded_eq(raw, v.as_bytes()),
            cond => {
                if !needs_decoding(raw) {
                    return cond.accepts(raw.as_bytes());
                }
                let mut buf = [0u8; STACK_DECODE];
                if raw.len() <= STACK_DECODE {
                    // Decoding never lengthens the input.
                    let mut n = 0;
                    for b in decode(raw) {
                        buf[n] = b;
                        n += 1;
                    }
                    cond.accepts(&buf[..n])
                } else {
                    cond.accepts(&decode(raw).collect::<Vec<u8>>())
                }
            }
        }
    }
}

/// Splits a raw query string into raw `(name, value)` pairs; `name` alone gives `""`.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

fn needs_decoding(raw: &str) -> bool {
    raw.bytes().any(|b| b == b'%' || b == b'+')
}

/// Whether `raw`, once decoded, equals `expected`.
fn decoded_eq(raw: &str, expected: &[u8]) -> bool {
    if needs_decoding(raw) {
        decode(raw).eq(expected.iter().copied())
    } else {
        raw.as_bytes() == expected
    }
}

/// Form-style decoding: `+` is a space, `%XX` a byte; malformed escapes stay as written.
fn decode(raw: &str) -> impl Iterator<Item = u8> + '_ {
    let bytes = raw.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *bytes.get(i)?;
        i += 1;
        match b {
            b'+' => Some(b' '),
            b'%' => {
                let hi = bytes.get(i).and_then(|&h| hex(h));
                let lo = bytes.get(i + 1).and_then(|&l| hex(l));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 2;
                        Some(hi << 4 | lo)
                    }
                    _ => Some(b'%'),
                }
            }
            other => Some(other),
        }
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a `methods` entry: a case-sensitive token; a lowercased standard method is
/// rejected since it would never match what clients send.
pub(crate) fn parse_method(raw: &str) -> Result<Method, String> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if raw.is_empty() {
        return Err("method is empty".into());
    }
    let upper = raw.to_ascii_uppercase();
    if upper != raw && STANDARD.contains(&upper.as_str()) {
        return Err(format!(
            "method `{raw}`: methods are case-sensitive; write `{upper}`"
        ));
    }
    Method::from_bytes(raw.as_bytes())
        .map_err(|_| format!("invalid method `{raw}`: not an HTTP token"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_segment_semantics() {
        assert_eq!(strip_prefix("/api", "/api"), Some("/"));
        assert_eq!(strip_prefix("/api/", "/api"), Some("/"));
        assert_eq!(strip_prefix("/api/x", "/api"), Some("/x"));
        assert_eq!(strip_prefix("/api/x/y", "/api/"), Some("/x/y"));
        assert_eq!(strip_prefix("/apix", "/api"), None);
        assert_eq!(strip_prefix("/other", "/api"), None);
        assert_eq!(strip_prefix("/a/b", "/"), Some("/a/b"));
        assert_eq!(strip_prefix("/", "/"), Some("/"));
        assert_eq!(strip_prefix("/a/b/c", "/a/b"), Some("/c"));
    }

    #[test]
    fn wildcard_requires_a_label() {
        assert!(wildcard_matches("example.com", "a.example.com"));
        assert!(wildcard_matches("example.com", "a.b.example.com"));
        assert!(!wildcard_matches("example.com", "example.com"));
        assert!(!wildcard_matches("example.com", ".example.com"));
        assert!(!wildcard_matches("example.com", "aexample.com"));
        assert!(!wildcard_matches("example.com", "example.org"));
    }

    #[test]
    fn host_parsing() {
        assert_eq!(
            HostPattern::parse("API.Example.COM.").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Wildcard("example.com".into())
        );
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("[::1]".into())
        );
        let e = HostPattern::parse("example.com:8080").unwrap_err();
        assert!(e.contains("without its port"), "{e}");
        let e = HostPattern::parse("a.*.com").unwrap_err();
        assert!(e.contains("whole first label"), "{e}");
        let e = HostPattern::parse("*").unwrap_err();
        assert!(e.contains("whole first label"), "{e}");
        let e = HostPattern::parse("a..com").unwrap_err();
        assert!(e.contains("empty label"), "{e}");
        let e = HostPattern::parse("a b.com").unwrap_err();
        assert!(e.contains("character ` `"), "{e}");
        let e = HostPattern::parse("bücher.de").unwrap_err();
        assert!(e.contains("xn--"), "{e}");
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("*.[::1]").is_err());
    }

    #[test]
    fn query_decoding() {
        assert_eq!(decode("a%20b+c%2Fd").collect::<Vec<_>>(), b"a b c/d");
        assert_eq!(decode("100%").collect::<Vec<_>>(), b"100%");
        assert_eq!(decode("%zz%4").collect::<Vec<_>>(), b"%zz%4");
        assert_eq!(decode("%c3%a9").collect::<Vec<_>>(), "é".as_bytes());
        assert!(decoded_eq("x%3Dy", b"x=y"));
        assert!(!decoded_eq("x%3Dy", b"x%3Dy"));
        let pairs: Vec<_> = query_pairs("a=1&&b&c=&d=x=y").collect();
        assert_eq!(pairs, [("a", "1"), ("b", ""), ("c", ""), ("d", "x=y")]);
    }

    #[test]
    fn long_query_values_are_decoded_too() {
        let vm = ValueMatch {
            name: "q".into(),
            value: None,
            regex: Some("a+ b".into()),
        };
        let c = QueryCond::compile(&vm).unwrap();
        let long = format!("q={}+b", "a".repeat(STACK_DECODE + 10));
        assert!(c.matches(Some(&long)));
        let short = "q=aaa%20b";
        assert!(c.matches(Some(short)));
        assert!(!c.matches(Some("q=aaa%20bc")));
    }

    #[test]
    fn template_analysis() {
        let i = analyse_template("/users/{id}/files/{*rest}").unwrap();
        assert_eq!(i.names, ["id", "rest"]);
        assert_eq!(i.literal_bytes, "/users//files/".len());
        assert_eq!(i.segments, 4);
        assert!(i.catch_all);
        assert_eq!(i.shape, "/users/{}/files/{*}");
        let e = analyse_template("/{*rest}/x").unwrap_err();
        assert!(e.contains("must come last"), "{e}");
        let e = analyse_template("/{a}/{a}").unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
        let e = analyse_template("/x{*rest}").unwrap_err();
        assert!(e.contains("whole segment"), "{e}");
        let e = analyse_template("/{a").unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        let e = analyse_template("/{}").unwrap_err();
        assert!(e.contains("invalid parameter name"), "{e}");
    }

    #[test]
    fn methods() {
        assert_eq!(parse_method("GET").unwrap(), Method::GET);
        assert_eq!(parse_method("PURGE").unwrap().as_str(), "PURGE");
        let e = parse_method("get").unwrap_err();
        assert!(e.contains("write `GET`"), "{e}");
        let e = parse_method("GE T").unwrap_err();
        assert!(e.contains("not an HTTP token"), "{e}");
        assert!(parse_method("").is_err());
    }
}
