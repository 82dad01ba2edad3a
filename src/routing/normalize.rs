//! Request path normalisation, done once before routing so that routing, every
//! filter and the upstream see the same path: a filter cannot be bypassed by
//! spelling a path differently (`/public/../admin`, `//admin`, `/%61dmin`).
//!
//! The rules, in order of application on each character of the path:
//!
//! - `%XX` must be two hex digits; `%00` is refused. An escape of an
//!   unreserved character (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`) is decoded
//!   (§6.2.2.2), so `%2e` is a dot. `%2F` follows `encoded_slash` (refuse,
//!   decode to a separator, or keep as data), `%5C` follows `backslash`. Any
//!   other escape is kept, with its hex in upper case (§6.2.2.1).
//! - `\` follows `backslash` (refuse, or a separator).
//! - Dot segments are removed (§5.2.4); runs of `/` are merged when
//!   `merge_slashes` is on. A segment `..;x` or `.;x` is refused: some
//!   servers (Tomcat) drop the `;x` path parameter and then read it as a dot
//!   segment, after the gateway routed it as a name.
//!
//! The query is not touched.

use std::borrow::Cow;
use std::fmt;

use http::Method;
use http::uri::{PathAndQuery, Uri};

use crate::config::{Backslash, EncodedSlash, NormalizePathConfig};

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F` with `encoded_slash: reject`.
    EncodedSlash,
    /// `\` or `%5C` with `backslash: reject`.
    Backslash,
    /// `%00`.
    Nul,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A dot segment with a path parameter (`..;x`).
    DotParameter,
    /// The path does not start with `/`.
    NotAbsolute,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EncodedSlash => "path contains an encoded slash (%2F)",
            Self::Backslash => "path contains a backslash",
            Self::Nul => "path contains %00",
            Self::BadEscape => "path contains a malformed percent-escape",
            Self::DotParameter => "path contains a dot segment with a parameter",
            Self::NotAbsolute => "path does not start with /",
        })
    }
}

impl std::error::Error for PathError {}

/// The request target with its path normalised, or `None` when it is already
/// normal (nothing allocated). `*` (OPTIONS) and authority-form (CONNECT)
/// targets have no path to normalise.
pub fn normalize_uri(
    method: &Method,
    uri: &Uri,
    cfg: &NormalizePathConfig,
) -> Result<Option<Uri>, PathError> {
    let Some(pq) = uri.path_and_query() else {
        // Absolute-form without a path means `/`; authority-form (`host:port`)
        // is only for CONNECT: anything else would route with an empty path.
        return if uri.scheme().is_some() || method == Method::CONNECT {
            Ok(None)
        } else {
            Err(PathError::NotAbsolute)
        };
    };
    let path = uri.path();
    if path == "*" && method == Method::OPTIONS {
        return Ok(None);
    }
    let Cow::Owned(mut new) = normalize(path, cfg)? else {
        return Ok(None);
    };
    if let Some(q) = pq.query() {
        new.push('?');
        new.push_str(q);
    }
    // Only characters that were valid in the target (or their decoded,
    // unreserved forms) are written, so the new target always parses.
    let pq = PathAndQuery::try_from(new).map_err(|_| PathError::BadEscape)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts)
        .map(Some)
        .map_err(|_| PathError::BadEscape)
}

/// `path` normalised; borrowed when already normal.
pub fn normalize<'a>(path: &'a str, cfg: &NormalizePathConfig) -> Result<Cow<'a, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let out = rewrite(bytes, cfg)?;
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// Whether anything in `path` may change: `%`, `\`, `//` or `/.`. Most paths
/// have none, and pass with this one scan.
fn needs_work(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' => return true,
            b'/' | b'.' if prev == b'/' => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

/// What one input character becomes.
enum Piece {
    /// A path separator.
    Slash,
    /// A literal byte of a segment.
    Byte(u8),
    /// A percent-escape kept as is, hex in upper case.
    Escape(u8),
}

/// RFC 3986 §2.3 unreserved characters.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Splits `path` into pieces, applying the escape and backslash rules.
fn pieces<'p>(
    path: &'p [u8],
    cfg: &'p NormalizePathConfig,
) -> impl Iterator<Item = Result<Piece, PathError>> + 'p {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *path.get(i)?;
        i += 1;
        let piece = match b {
            b'/' => Ok(Piece::Slash),
            b'\\' => match cfg.backslash {
                Backslash::Reject => Err(PathError::Backslash),
                Backslash::Slash => Ok(Piece::Slash),
            },
            b'%' => {
                let hi = path.get(i).copied().and_then(hex);
                let lo = path.get(i + 1).copied().and_then(hex);
                i += 2;
                match (hi, lo) {
                    (Some(hi), Some(lo)) => decoded(hi << 4 | lo, cfg),
                    _ => Err(PathError::BadEscape),
                }
            }
            b => Ok(Piece::Byte(b)),
        };
        Some(piece)
    })
}

/// What the escape of `v` becomes.
fn decoded(v: u8, cfg: &NormalizePathConfig) -> Result<Piece, PathError> {
    match v {
        0 => Err(PathError::Nul),
        b'/' => match cfg.encoded_slash {
            EncodedSlash::Reject => Err(PathError::EncodedSlash),
            EncodedSlash::Decode => Ok(Piece::Slash),
            EncodedSlash::Keep => Ok(Piece::Escape(v)),
        },
        b'\\' => match cfg.backslash {
            Backslash::Reject => Err(PathError::Backslash),
            Backslash::Slash => Ok(Piece::Slash),
        },
        v if unreserved(v) => Ok(Piece::Byte(v)),
        v => Ok(Piece::Escape(v)),
    }
}

/// The full rewrite: decoding, dot segments, slash merging. Works on bytes,
/// so that a non-ASCII byte of the path is copied as it is.
fn rewrite(path: &[u8], cfg: &NormalizePathConfig) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(path.len());
    out.push(b'/');
    // Where the segment being written starts in `out` (just after a `/`).
    let mut seg = 1;
    // The leading `/` has been read.
    for piece in pieces(path, cfg).skip(1) {
        match piece? {
            Piece::Slash => end_segment(&mut out, &mut seg, true, cfg)?,
            Piece::Byte(b) => out.push(b),
            Piece::Escape(v) => {
                out.push(b'%');
                out.push(HEX[usize::from(v >> 4)]);
                out.push(HEX[usize::from(v & 0xf)]);
            }
        }
    }
    end_segment(&mut out, &mut seg, false, cfg)?;
    // Whole segments are dropped, at `/` boundaries, and what is added is
    // ASCII: the input's UTF-8 stays valid.
    String::from_utf8(out).map_err(|_| PathError::BadEscape)
}

/// Settles the segment `out[*seg..]`, followed by a separator when `more`:
/// drops `.`, pops the previous segment on `..`, merges empty segments.
fn end_segment(
    out: &mut Vec<u8>,
    seg: &mut usize,
    more: bool,
    cfg: &NormalizePathConfig,
) -> Result<(), PathError> {
    let segment = out.get(*seg..).unwrap_or_default();
    let name = segment.split(|&b| b == b';').next().unwrap_or_default();
    if (name == b"." || name == b"..") && name != segment {
        return Err(PathError::DotParameter);
    }
    match segment {
        // `out` keeps its `/` before the dot: `/a/.` is `/a/`.
        b"." => out.truncate(*seg),
        b".." => {
            // Drop `..` and the `/` before it, then the previous segment,
            // keeping its leading `/`; at the root there is nothing to pop.
            out.truncate(seg.saturating_sub(1));
            let keep = out.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            out.truncate(keep);
            if out.is_empty() {
                out.push(b'/');
            }
        }
        b"" if more && cfg.merge_slashes => {}
        _ if more => out.push(b'/'),
        _ => {}
    }
    *seg = out.len();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(merge: bool, slash: EncodedSlash, back: Backslash) -> NormalizePathConfig {
        NormalizePathConfig {
            merge_slashes: merge,
            encoded_slash: slash,
            backslash: back,
        }
    }

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, &NormalizePathConfig::default()).map(Cow::into_owned)
    }

    #[test]
    fn non_ascii_bytes_are_kept_as_they_are() {
        assert_eq!(norm("/caf\u{e9}//x").unwrap(), "/caf\u{e9}/x");
        assert_eq!(norm("/\u{e9}/%41/./b").unwrap(), "/\u{e9}/A/b");
        assert_eq!(norm("/\u{e9}/../x").unwrap(), "/x");
    }

    #[test]
    fn authority_form_is_only_for_connect() {
        let d = NormalizePathConfig::default();
        let uri: Uri = "a.test:80".parse().unwrap();
        assert_eq!(
            normalize_uri(&Method::GET, &uri, &d),
            Err(PathError::NotAbsolute)
        );
        assert_eq!(normalize_uri(&Method::CONNECT, &uri, &d), Ok(None));
        let uri: Uri = "http://a.test".parse().unwrap();
        assert_eq!(normalize_uri(&Method::GET, &uri, &d), Ok(None));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        let d = NormalizePathConfig::default();
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c..d/e.",
            "/.well-known/x",
            "/a-b_c~d",
        ] {
            assert!(
                matches!(normalize(p, &d), Ok(Cow::Borrowed(b)) if b == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_removed() {
        for (input, want) in [
            ("/a/../admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/../admin", "/admin"),
            ("/../../admin", "/admin"),
            ("/a/./b", "/a/b"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../", "/a/"),
            ("/.", "/"),
            ("/..", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/b../c", "/a/b../c"),
            ("/...", "/..."),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn encoded_dots_are_dot_segments() {
        for (input, want) in [
            ("/%2e%2e/admin", "/admin"),
            ("/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/public/%2e./admin", "/admin"),
            ("/public/%2e/admin", "/public/admin"),
            ("/%61dmin", "/admin"),
            ("/a%7eb%2D", "/a~b-"),
        ] {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn other_escapes_are_kept_in_upper_case() {
        assert_eq!(norm("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(norm("/a%20b%3f").as_deref(), Ok("/a%20b%3F"));
        assert_eq!(norm("/%252e%252e/x").as_deref(), Ok("/%252e%252e/x"));
        assert_eq!(norm("/a%25").as_deref(), Ok("/a%25"));
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(norm("//admin").as_deref(), Ok("/admin"));
        assert_eq!(norm("/a//b///c//").as_deref(), Ok("/a/b/c/"));
        assert_eq!(norm("/a//../b").as_deref(), Ok("/b"));
        let keep = cfg(false, EncodedSlash::Reject, Backslash::Reject);
        assert_eq!(normalize("/a//b", &keep).as_deref(), Ok("/a//b"));
        assert!(matches!(normalize("/a//b", &keep), Ok(Cow::Borrowed(_))));
        // RFC 3986: `..` after an empty segment pops the empty segment.
        assert_eq!(normalize("/a//../b", &keep).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("/public/%2e%2e%2fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(norm("\\admin"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/\\admin"), Err(PathError::Backslash));
        assert_eq!(norm("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(norm("/a%00"), Err(PathError::Nul));
        assert_eq!(norm("/a%0"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%"), Err(PathError::BadEscape));
        assert_eq!(norm("/public/..;/admin"), Err(PathError::DotParameter));
        assert_eq!(norm("/public/.;x/admin"), Err(PathError::DotParameter));
        assert_eq!(norm("/public/%2e%2e;/admin"), Err(PathError::DotParameter));
        assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
        assert_eq!(norm("/a;b/c").as_deref(), Ok("/a;b/c"));
    }

    #[test]
    fn encoded_slash_and_backslash_settings() {
        let decode = cfg(true, EncodedSlash::Decode, Backslash::Slash);
        let n = |p| normalize(p, &decode).map(Cow::into_owned);
        assert_eq!(n("/public/%2e%2e%2fadmin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a%2f%2fb").as_deref(), Ok("/a/b"));
        assert_eq!(n("/a\\..\\admin").as_deref(), Ok("/admin"));
        assert_eq!(n("/a%5c..%5Cadmin").as_deref(), Ok("/admin"));
        let keep = cfg(true, EncodedSlash::Keep, Backslash::Reject);
        let k = |p| normalize(p, &keep).map(Cow::into_owned);
        assert_eq!(k("/a%2fb").as_deref(), Ok("/a%2Fb"));
        assert_eq!(k("/a%2Fb").as_deref(), Ok("/a%2Fb"));
        // A kept `%2F` is data: `..%2F` is not a dot segment.
        assert_eq!(k("/p/..%2fadmin").as_deref(), Ok("/p/..%2Fadmin"));
        assert_eq!(k("/p/%2e%2e%2f/x").as_deref(), Ok("/p/..%2F/x"));
    }

    #[test]
    fn uri_keeps_query_and_authority() {
        let d = NormalizePathConfig::default();
        let uri: Uri = "/a/../b?x=/../y&%2e".parse().unwrap();
        let got = normalize_uri(&Method::GET, &uri, &d).unwrap().unwrap();
        assert_eq!(got, "/b?x=/../y&%2e");
        let uri: Uri = "http://h.test:8080//a/./b?q".parse().unwrap();
        let got = normalize_uri(&Method::GET, &uri, &d).unwrap().unwrap();
        assert_eq!(got.to_string(), "http://h.test:8080/a/b?q");
        let uri: Uri = "/a/b?q".parse().unwrap();
        assert_eq!(normalize_uri(&Method::GET, &uri, &d), Ok(None));
        let uri: Uri = "*".parse().unwrap();
        assert_eq!(normalize_uri(&Method::OPTIONS, &uri, &d), Ok(None));
        assert_eq!(
            normalize_uri(&Method::GET, &uri, &d),
            Err(PathError::NotAbsolute)
        );
        let uri: Uri = "h.test:443".parse().unwrap();
        assert_eq!(normalize_uri(&Method::CONNECT, &uri, &d), Ok(None));
    }
}
