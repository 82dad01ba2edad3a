//! A `jsonwebtoken` crypto provider backed by `ring`, the one crypto library
//! of the whole build.
//!
//! `jsonwebtoken` is built without its own backends (`aws_lc_rs`,
//! `rust_crypto`), so [`install`] must run before any token is signed or
//! verified: [`crate::auth::jwt::Jwt::compile`] calls it. Every factory checks
//! that the key's family is the algorithm's (an HMAC secret never verifies an
//! RSA token, and the reverse), and returns an error, never panics, on a key
//! it cannot use.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result, new_error};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair};
use ring::{digest, hmac};

/// The provider: verifiers and signers for every algorithm `jsonwebtoken`
/// names (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA).
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key,
        compute_digest,
    },
};

/// Makes the ring provider the process default of `jsonwebtoken`; idempotent.
pub fn install() {
    // `Err` means a provider is installed already: this one, since the crate
    // has no other backend compiled in.
    let _ = PROVIDER.install_default();
}

/// The ring HMAC algorithm of an `HS*` algorithm.
fn hmac_alg(alg: Algorithm) -> Option<hmac::Algorithm> {
    match alg {
        Algorithm::HS256 => Some(hmac::HMAC_SHA256),
        Algorithm::HS384 => Some(hmac::HMAC_SHA384),
        Algorithm::HS512 => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

/// The ring verification parameters of an `RS*`/`PS*` algorithm (keys of
/// 2048 to 8192 bits, as RFC 7518 §3.3 requires at least 2048).
fn rsa_params(alg: Algorithm) -> Option<&'static sig::RsaParameters> {
    match alg {
        Algorithm::RS256 => Some(&sig::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Some(&sig::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Some(&sig::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Some(&sig::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Some(&sig::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Some(&sig::RSA_PSS_2048_8192_SHA512),
        _ => None,
    }
}

/// The ring signature padding of an `RS*`/`PS*` algorithm.
fn rsa_encoding(alg: Algorithm) -> Option<&'static dyn sig::RsaEncoding> {
    match alg {
        Algorithm::RS256 => Some(&sig::RSA_PKCS1_SHA256),
        Algorithm::RS384 => Some(&sig::RSA_PKCS1_SHA384),
        Algorithm::RS512 => Some(&sig::RSA_PKCS1_SHA512),
        Algorithm::PS256 => Some(&sig::RSA_PSS_SHA256),
        Algorithm::PS384 => Some(&sig::RSA_PSS_SHA384),
        Algorithm::PS512 => Some(&sig::RSA_PSS_SHA512),
        _ => None,
    }
}

/// The ring ECDSA signing algorithm (fixed-size `r||s`, as JWS uses) of `ES*`.
fn ecdsa_signing(alg: Algorithm) -> Option<&'static sig::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&sig::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Some(&sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => None,
    }
}

/// The ring verification algorithm of `ES*` and `EdDSA` (Ed25519).
fn point_verification(alg: Algorithm) -> Option<&'static dyn sig::VerificationAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&sig::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Some(&sig::ECDSA_P384_SHA384_FIXED),
        Algorithm::EdDSA => Some(&sig::ED25519),
        _ => None,
    }
}

/// How a verifier checks a signature.
enum Check {
    /// An HMAC tag, compared in constant time by ring.
    Hmac(hmac::Key),
    /// An RSA public key: DER (`RSAPublicKey`) or JWK components.
    Rsa(&'static sig::RsaParameters, DecodingKey),
    /// An EC point or an Ed25519 public key.
    Point(&'static dyn sig::VerificationAlgorithm, DecodingKey),
}

/// A verifier for one algorithm and key.
struct RingVerifier {
    alg: Algorithm,
    check: Check,
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let checked = match &self.check {
            Check::Hmac(key) => hmac::verify(key, msg, signature),
            Check::Rsa(params, key) => match key.kind() {
                DecodingKeyKind::SecretOrDer(der) => {
                    sig::UnparsedPublicKey::new(*params, der).verify(msg, signature)
                }
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
                }
            },
            Check::Point(alg, key) => {
                let bytes = key
                    .try_get_as_bytes()
                    .map_err(signature::Error::from_source)?;
                sig::UnparsedPublicKey::new(*alg, bytes).verify(msg, signature)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// The verifier factory: refuses a key of another family than `alg`'s.
fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(new_error(ErrorKind::InvalidKeyFormat));
    }
    let check = if let Some(h) = hmac_alg(alg) {
        Check::Hmac(hmac::Key::new(h, key.try_get_as_bytes()?))
    } else if let Some(params) = rsa_params(alg) {
        Check::Rsa(params, key.clone())
    } else if let Some(v) = point_verification(alg) {
        Check::Point(v, key.clone())
    } else {
        return Err(new_error(ErrorKind::UnsupportedAlgorithm));
    };
    Ok(Box::new(RingVerifier { alg, check }))
}

/// How a signer signs.
enum Sign {
    /// An HMAC secret.
    Hmac(hmac::Key),
    /// An RSA private key and the padding.
    Rsa(&'static dyn sig::RsaEncoding, sig::RsaKeyPair),
    /// A P-256 or P-384 private key.
    Ecdsa(sig::EcdsaKeyPair),
    /// An Ed25519 private key.
    Ed(sig::Ed25519KeyPair),
}

/// A signer for one algorithm and key.
struct RingSigner {
    alg: Algorithm,
    sign: Sign,
}

impl signature::Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        match &self.sign {
            Sign::Hmac(key) => Ok(hmac::sign(key, msg).as_ref().to_vec()),
            Sign::Rsa(padding, pair) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*padding, &SystemRandom::new(), msg, &mut out)
                    .map_err(|_| signature::Error::new())?;
                Ok(out)
            }
            Sign::Ecdsa(pair) => pair
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            Sign::Ed(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// An RSA private key from PKCS#1 DER (what `EncodingKey::from_rsa_pem`
/// keeps) or PKCS#8 DER.
fn rsa_key_pair(der: &[u8]) -> Result<sig::RsaKeyPair> {
    sig::RsaKeyPair::from_der(der)
        .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
        .map_err(|e| new_error(ErrorKind::InvalidRsaKey(e.to_string())))
}

/// An Ed25519 private key from PKCS#8 v1 (what OpenSSL writes) or v2.
fn ed_key_pair(der: &[u8]) -> Result<sig::Ed25519KeyPair> {
    sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))
}

/// The signer factory: refuses a key of another family than `alg`'s.
fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let alg = *alg;
    if key.family() != alg.family() {
        return Err(new_error(ErrorKind::InvalidKeyFormat));
    }
    let der = key.as_bytes();
    let sign = if let Some(h) = hmac_alg(alg) {
        Sign::Hmac(hmac::Key::new(h, der))
    } else if let Some(padding) = rsa_encoding(alg) {
        Sign::Rsa(padding, rsa_key_pair(der)?)
    } else if let Some(signing) = ecdsa_signing(alg) {
        Sign::Ecdsa(
            sig::EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
                .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))?,
        )
    } else if alg == Algorithm::EdDSA {
        Sign::Ed(ed_key_pair(der)?)
    } else {
        return Err(new_error(ErrorKind::UnsupportedAlgorithm));
    };
    Ok(Box::new(RingSigner { alg, sign }))
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let pair = rsa_key_pair(der)?;
    let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    Ok((c.n, c.e))
}

fn rsa_components_from_public_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    rsa_public_key_components(der)
        .map(|(n, e)| (n.to_vec(), e.to_vec()))
        .ok_or_else(|| new_error(ErrorKind::InvalidRsaKey("not a DER RSAPublicKey".into())))
}

fn ec_components_from_private_key(
    der: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let (curve, len) = match alg {
        Algorithm::ES256 => (EllipticCurve::P256, 32),
        Algorithm::ES384 => (EllipticCurve::P384, 48),
        _ => return Err(new_error(ErrorKind::InvalidEcdsaKey)),
    };
    let signing = ecdsa_signing(alg).ok_or_else(|| new_error(ErrorKind::InvalidEcdsaKey))?;
    let pair = sig::EcdsaKeyPair::from_pkcs8(signing, der, &SystemRandom::new())
        .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))?;
    match pair.public_key().as_ref().split_first() {
        Some((4, xy)) if xy.len() == 2 * len => {
            let (x, y) = xy.split_at(len);
            Ok((curve, x.to_vec(), y.to_vec()))
        }
        _ => Err(new_error(ErrorKind::InvalidEcdsaKey)),
    }
}

fn ed_pub_components_from_private_key(der: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    match curve {
        EllipticCurve::Ed25519 => Ok(ed_key_pair(der)?.public_key().as_ref().to_vec()),
        _ => Err(new_error(ErrorKind::InvalidAlgorithm)),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(new_error(ErrorKind::UnsupportedAlgorithm)),
    };
    Ok(digest::digest(alg, data).as_ref().to_vec())
}

/// The modulus and exponent of a DER `RSAPublicKey` (RFC 8017 A.1.1:
/// `SEQUENCE { INTEGER n, INTEGER e }`), leading zero bytes removed; `None`
/// when the bytes are anything else.
pub fn rsa_public_key_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (seq, rest) = der_item(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (n, rest) = der_item(seq, 0x02)?;
    let (e, rest) = der_item(rest, 0x02)?;
    if !rest.is_empty() {
        return None;
    }
    let (n, e) = (strip_zeros(n), strip_zeros(e));
    (!n.is_empty() && !e.is_empty()).then_some((n, e))
}

/// `v` without its leading zero bytes (a DER INTEGER's sign padding).
fn strip_zeros(v: &[u8]) -> &[u8] {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    &v[zeros..]
}

/// One DER item of `tag` at the start of `input`: its contents and what follows.
fn der_item(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = crate::tls::der::tlv(input)?;
    (t == tag).then_some((content, rest))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use jsonwebtoken::{Header, Validation, decode, encode};
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair};

    use super::*;

    fn claims() -> serde_json::Value {
        serde_json::json!({ "sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 60 })
    }

    fn round_trip(alg: Algorithm, enc: &EncodingKey, dec: &DecodingKey) {
        install();
        let token = encode(&Header::new(alg), &claims(), enc).unwrap();
        let data = decode::<serde_json::Value>(&token, dec, &Validation::new(alg)).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        // One flipped signature bit fails.
        let mut bad = token.into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(decode::<serde_json::Value>(&bad, dec, &Validation::new(alg)).is_err());
    }

    #[test]
    fn hmac_round_trips() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            round_trip(
                alg,
                &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
                &DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            );
        }
    }

    #[test]
    fn ecdsa_and_eddsa_round_trip() {
        let rng = SystemRandom::new();
        for (alg, signing) in [
            (Algorithm::ES256, &sig::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Algorithm::ES384, &sig::ECDSA_P384_SHA384_FIXED_SIGNING),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
            let (_, x, y) = ec_components_from_private_key(pkcs8.as_ref(), alg).unwrap();
            let mut point = vec![4];
            point.extend(&x);
            point.extend(&y);
            assert_eq!(point, pair.public_key().as_ref());
            round_trip(
                alg,
                &EncodingKey::from_ec_der(pkcs8.as_ref()),
                &DecodingKey::from_ec_der(pair.public_key().as_ref()),
            );
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let public =
            ed_pub_components_from_private_key(pkcs8.as_ref(), &EllipticCurve::Ed25519).unwrap();
        round_trip(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_der(pkcs8.as_ref()),
            &DecodingKey::from_ed_der(&public),
        );
    }

    #[test]
    fn rsa_round_trips_with_pem_and_components() {
        let private = include_bytes!("../../tests/data/jwt-rsa-private.pem");
        let public = include_bytes!("../../tests/data/jwt-rsa-public.pem");
        let enc = EncodingKey::from_rsa_pem(private).unwrap();
        let dec = DecodingKey::from_rsa_pem(public).unwrap();
        let (n, e) = rsa_components_from_private_key(enc.as_bytes()).unwrap();
        let der = dec.try_get_as_bytes().unwrap();
        assert_eq!(
            rsa_components_from_public_key(der).unwrap(),
            (n.clone(), e.clone())
        );
        let by_parts = DecodingKey::from_rsa_raw_components(&n, &e);
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            round_trip(alg, &enc, &dec);
            round_trip(alg, &enc, &by_parts);
        }
    }

    #[test]
    fn a_key_of_another_family_is_refused() {
        install();
        let public = include_bytes!("../../tests/data/jwt-rsa-public.pem");
        let rsa = DecodingKey::from_rsa_pem(public).unwrap();
        // The RSA public key used as an HMAC secret: the classic confusion.
        assert!(new_verifier(&Algorithm::HS256, &rsa).is_err());
        assert!(new_verifier(&Algorithm::RS256, &DecodingKey::from_secret(b"k")).is_err());
        assert!(new_verifier(&Algorithm::ES256, &rsa).is_err());
        assert!(new_signer(&Algorithm::ES256, &EncodingKey::from_secret(b"k")).is_err());
        // Garbage where a key should be: errors, not panics.
        assert!(new_signer(&Algorithm::RS256, &EncodingKey::from_rsa_der(b"junk")).is_err());
        assert!(new_signer(&Algorithm::ES384, &EncodingKey::from_ec_der(b"junk")).is_err());
        assert!(new_signer(&Algorithm::EdDSA, &EncodingKey::from_ed_der(b"junk")).is_err());
        assert!(rsa_components_from_public_key(b"\x30\x03\x02\x01").is_err());
        assert!(rsa_components_from_private_key(b"junk").is_err());
        assert!(ec_components_from_private_key(b"junk", Algorithm::HS256).is_err());
        let v = new_verifier(&Algorithm::ES256, &DecodingKey::from_ec_der(b"junk")).unwrap();
        assert!(signature::Verifier::verify(&*v, b"m", &vec![0; 64]).is_err());
    }

    #[test]
    fn digests() {
        let d = compute_digest(b"abc", ThumbprintHash::SHA256).unwrap();
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(
            compute_digest(b"", ThumbprintHash::SHA512).unwrap().len(),
            64
        );
    }
}
