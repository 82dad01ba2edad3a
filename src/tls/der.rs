//! Just enough DER to print a certificate's subject as an RFC 4514 string
//! (for `x-client-cert-subject`), and the TLV reader the JWT crypto provider
//! uses for RSA keys. webpki hands out the raw `Name`; pulling in a full
//! X.509 parser for one string is not worth the dependency.

use std::fmt::Write as _;

/// One TLV: its tag, its content, and what follows it.
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        // Indefinite lengths are BER, not DER; more than 4 length bytes is
        // nothing a certificate name needs.
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// Formats a DER `Name` (its content, without the outer SEQUENCE header, as
/// webpki returns it) the RFC 4514 way: last RDN first, `CN=a,O=b`, special
/// characters and any byte outside printable ASCII escaped, so the result is
/// always a valid header value. `None` when the DER is malformed.
pub fn rfc4514(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (tag, set, next) = tlv(rest)?;
        if tag != SET {
            return None;
        }
        rest = next;
        let mut parts = Vec::new();
        let mut attrs = set;
        while !attrs.is_empty() {
            let (tag, atv, next) = tlv(attrs)?;
            if tag != SEQUENCE {
                return None;
            }
            attrs = next;
            let (tag, oid, encoded) = tlv(atv)?;
            if tag != OID {
                return None;
            }
            let (vtag, value, after) = tlv(encoded)?;
            let encoded = &encoded[..encoded.len() - after.len()];
            let mut s = String::new();
            match short_name(oid) {
                Some(n) => s.push_str(n),
                None => s.push_str(&dotted(oid)?),
            }
            s.push('=');
            match decode_string(vtag, value) {
                Some(text) => escape(&text, &mut s),
                // Not a string type: RFC 4514 §2.4 says `#` and the hex of
                // the BER encoding.
                None => {
                    s.push('#');
                    for b in encoded {
                        let _ = write!(s, "{b:02x}");
                    }
                }
            }
            parts.push(s);
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

fn dotted(oid: &[u8]) -> Option<String> {
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(acc);
            acc = 0;
        }
    }
    let first = *arcs.first()?;
    let (a, b) = match first {
        0..40 => (0, first),
        40..80 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut s = format!("{a}.{b}");
    for arc in &arcs[1..] {
        let _ = write!(s, ".{arc}");
    }
    Some(s)
}

fn decode_string(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString, NumericString
        0x0c | 0x13 | 0x16 | 0x1a | 0x12 => std::str::from_utf8(value).ok().map(str::to_owned),
        // TeletexString: in practice Latin-1.
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = value
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping, plus `\XX` for every byte outside printable
/// ASCII (which §2.4 allows), so the string is a valid HTTP header value.
fn escape(text: &str, out: &mut String) {
    let last = text.len().saturating_sub(1);
    for (i, b) in text.bytes().enumerate() {
        let special = matches!(b, b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' | b'=')
            || (i == 0 && matches!(b, b'#' | b' '))
            || (i == last && b == b' ');
        if !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\{b:02X}");
        } else if special {
            out.push('\\');
            out.push(char::from(b));
        } else {
            out.push(char::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atv(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut inner = vec![OID, oid.len() as u8];
        inner.extend_from_slice(oid);
        inner.push(tag);
        inner.push(value.len() as u8);
        inner.extend_from_slice(value);
        let mut seq = vec![SEQUENCE, inner.len() as u8];
        seq.extend(inner);
        let mut set = vec![SET, seq.len() as u8];
        set.extend(seq);
        set
    }

    #[test]
    fn formats_last_rdn_first_with_escapes() {
        let mut name = atv(&[0x55, 0x04, 0x06], 0x13, b"DE");
        name.extend(atv(&[0x55, 0x04, 0x0a], 0x0c, b"Acme, Inc"));
        name.extend(atv(&[0x55, 0x04, 0x03], 0x0c, "caf\u{e9}".as_bytes()));
        assert_eq!(
            rfc4514(&name).as_deref(),
            Some("CN=caf\\C3\\A9,O=Acme\\, Inc,C=DE")
        );
    }

    #[test]
    fn unknown_attributes_use_the_dotted_oid_and_hex() {
        // 1.2.840.113549.1.9.1 (emailAddress) as an IA5String, and an INTEGER value.
        let email = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        let mut name = atv(&email, 0x16, b"a@b");
        name.extend(atv(&[0x55, 0x04, 0x03], 0x02, &[0x05]));
        assert_eq!(
            rfc4514(&name).as_deref(),
            Some("CN=#020105,1.2.840.113549.1.9.1=a@b")
        );
    }

    #[test]
    fn malformed_names_are_refused() {
        assert_eq!(rfc4514(&[SET, 0x05, 0x30]), None);
        assert_eq!(rfc4514(&[SEQUENCE, 0x00]), None);
        assert_eq!(rfc4514(&[]).as_deref(), Some(""));
    }
}
