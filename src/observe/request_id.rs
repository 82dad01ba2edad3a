//! Request ids: generated, or taken from a client that is trusted to send them.

use http::HeaderValue;

/// Longest client-supplied id that is kept.
const MAX_INCOMING_LEN: usize = 128;

/// A new random id: 32 lowercase hex digits.
pub fn generate() -> HeaderValue {
    let mut out = [0u8; 32];
    crate::observe::trace::encode_hex(&fastrand::u128(..).to_be_bytes(), &mut out);
    // 32 ASCII hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Keeps a client's id if it is short and made of safe characters.
pub fn accept_incoming(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_INCOMING_LEN
        && b.iter().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
    }

    #[test]
    fn incoming_ids_are_checked() {
        assert!(accept_incoming(&HeaderValue::from_static("abc-123")));
        assert!(!accept_incoming(&HeaderValue::from_static("")));
        assert!(!accept_incoming(&HeaderValue::from_static("a b")));
        let long = HeaderValue::from_str(&"a".repeat(MAX_INCOMING_LEN + 1)).unwrap();
        assert!(!accept_incoming(&long));
    }
}
