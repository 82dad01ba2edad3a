//! HTTP Basic authentication (RFC 7617) against the consumers' bcrypt or
//! argon2 password hashes.
//!
//! The hashes are slow on purpose, so the provider guards the gateway: each
//! verification runs on the blocking pool, at most a few at once (past that a
//! request waits briefly, then gets a 503 instead of queueing without bound),
//! and verdicts are cached under a keyed digest of the credential (never the
//! password itself), successes for `cache_ttl`, failures briefly. A user name
//! that does not exist is verified against a real hash all the same, so the
//! time taken does not tell which users exist.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderValue, Request};
use tokio::sync::Semaphore;

use super::consumers::KeyDigest;
use super::source::Sources;
use super::{Consumers, Identity, Outcome};
use crate::config::{BasicConfig, TokenSource};

/// Verdicts kept per provider (each one a 32-byte key and a flag).
const CACHE_ENTRIES: u64 = 10_000;
/// Longest time a failed verification is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// How long a request waits for a verification slot before a 503.
const SLOT_WAIT: Duration = Duration::from_millis(500);

/// A consumer's password hash, parsed at compile time.
#[derive(Debug)]
pub struct PasswordHash {
    /// SHA-256 of the hash text: ties a cached verdict to this very hash, so
    /// that a changed password hash is never answered from the cache.
    id: KeyDigest,
    alg: Alg,
}

#[derive(Debug)]
enum Alg {
    /// bcrypt (`$2a$`, `$2b$`, `$2y$`).
    Bcrypt(Box<str>),
    /// An argon2 PHC string (`$argon2id$`, `$argon2i$`, `$argon2d$`).
    Argon2(Box<argon2::PasswordHash>),
}

impl PasswordHash {
    /// Parses a bcrypt or argon2 hash; anything else (a plain password
    /// above all) is refused. The message never repeats the value.
    pub fn parse(s: &str) -> Result<Self, String> {
        const REFUSED: &str = "`password_hash` must be a bcrypt (`$2b$...`) or argon2 (`$argon2id$...`) hash; plain passwords are not accepted";
        let alg = if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) {
            s.parse::<bcrypt::HashParts>()
                .map(|_| Alg::Bcrypt(s.into()))
                .map_err(|e| format!("{REFUSED} (bcrypt: {e})"))?
        } else if ["$argon2id$", "$argon2i$", "$argon2d$"]
            .iter()
            .any(|p| s.starts_with(p))
        {
            argon2::PasswordHash::new(s)
                .map(|h| Alg::Argon2(Box::new(h)))
                .map_err(|e| format!("{REFUSED} (argon2: {e})"))?
        } else {
            return Err(REFUSED.into());
        };
        Ok(Self {
            id: super::consumers::key_digest(s.as_bytes()),
            alg,
        })
    }

    /// Whether `password` matches: slow on purpose, run it off the workers.
    pub fn verify(&self, password: &[u8]) -> bool {
        match &self.alg {
            Alg::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Alg::Argon2(h) => {
                use argon2::PasswordVerifier as _;
                argon2::Argon2::default()
                    .verify_password(password, &**h)
                    .is_ok()
            }
        }
    }
}

/// Successes live `cache_ttl`, failures at most [`FAILURE_TTL`].
struct VerdictExpiry {
    success: Duration,
    failure: Duration,
}

impl moka::Expiry<KeyDigest, bool> for VerdictExpiry {
    fn expire_after_create(
        &self,
        _key: &KeyDigest,
        ok: &bool,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(if *ok { self.success } else { self.failure })
    }
}

/// State kept across reloads while the definition is unchanged.
struct Shared {
    /// Verdicts by HMAC(hash id, `user:password`).
    verdicts: moka::future::Cache<KeyDigest, bool>,
    /// The per-process key of that HMAC.
    key: ring::hmac::Key,
    /// Verification slots.
    slots: Arc<Semaphore>,
}

/// A compiled provider.
pub struct Basic {
    name: Arc<str>,
    source: Sources,
    challenge: HeaderValue,
    shared: Arc<Shared>,
}

/// Escapes a `quoted-string` body (RFC 9110 §5.6.4).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Basic {
    /// Compiles the provider; `previous` is the same definition's provider
    /// in the running snapshot, whose cache and slots are kept.
    pub fn compile(
        name: &str,
        cfg: &BasicConfig,
        previous: Option<&Basic>,
    ) -> Result<Self, String> {
        let challenge = HeaderValue::from_str(&format!(
            "Basic realm={}, charset=\"UTF-8\"",
            quote(&cfg.realm)
        ))
        .map_err(|_| {
            format!(
                "`realm: {}` must not contain control characters",
                cfg.realm.escape_debug()
            )
        })?;
        let source = Sources::compile(&[TokenSource {
            header: Some("authorization".into()),
            scheme: Some("Basic".into()),
            ..TokenSource::default()
        }])?;
        let shared = match previous {
            Some(p) => p.shared.clone(),
            None => {
                let rng = ring::rand::SystemRandom::new();
                let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
                    .map_err(|_| "cannot draw a random key".to_owned())?;
                let slots = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
                Arc::new(Shared {
                    verdicts: moka::future::Cache::builder()
                        .max_capacity(CACHE_ENTRIES)
                        .expire_after(VerdictExpiry {
                            success: cfg.cache_ttl.0,
                            failure: cfg.cache_ttl.0.min(FAILURE_TTL),
                        })
                        .build(),
                    key,
                    slots: Arc::new(Semaphore::new(slots)),
                })
            }
        };
        Ok(Self {
            name: name.into(),
            source,
            challenge,
            shared,
        })
    }

    /// Checks the request's credential.
    pub async fn authenticate<B>(&self, req: &Request<B>, consumers: &Consumers) -> Outcome {
        let token = match self.source.credential(req) {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let Some((text, colon)) = decode(&token) else {
            return Outcome::Rejected("malformed Basic credentials".into());
        };
        let (user, password) = (&text[..colon], &text[colon + 1..]);
        let known = consumers.by_username(user);
        let hash = match (known, consumers.dummy_hash()) {
            (Some(u), _) => u.hash.clone(),
            (None, Some(dummy)) => dummy.clone(),
            // No consumer has Basic credentials: there is nothing to time.
            (None, None) => return Outcome::Rejected("invalid user name or password".into()),
        };
        // The tag is the hash's id, or zeros for an unknown user: a
        // credential's verdict is a pure function of the hash it was checked
        // against, so cached verdicts never go stale.
        let tag = if known.is_some() { hash.id } else { [0; 32] };
        let mut ctx = ring::hmac::Context::with_key(&self.shared.key);
        ctx.update(&tag);
        ctx.update(user.as_bytes());
        ctx.update(b":");
        ctx.update(password.as_bytes());
        let mut cache_key = [0; 32];
        cache_key.copy_from_slice(ctx.sign().as_ref());

        let slots = self.shared.slots.clone();
        let password = password.as_bytes().to_vec();
        let verdict = self
            .shared
            .verdicts
            .try_get_with(cache_key, async move {
                let permit = tokio::time::timeout(SLOT_WAIT, slots.acquire_owned())
                    .await
                    .map_err(|_| ())?
                    .map_err(|_| ())?;
                // The permit moves into the blocking task: a request that is
                // dropped meanwhile still holds its slot until the hash is done.
                tokio::task::spawn_blocking(move || {
                    let ok = hash.verify(&password);
                    drop(permit);
                    ok
                })
                .await
                .map_err(|_| ())
            })
            .await;
        match (verdict, known) {
            (Ok(true), Some(u)) => Outcome::Accepted(Identity {
                consumer: Some(u.consumer.clone()),
                subject: None,
                claims: None,
                provider: self.name.clone(),
            }),
            (Ok(_), _) => Outcome::Rejected("invalid user name or password".into()),
            (Err(_), _) => Outcome::Unavailable("too many password checks at once".into()),
        }
    }

    /// Removes the credential.
    pub fn strip<B>(&self, req: &mut Request<B>) {
        self.source.strip(req);
    }

    /// The challenge (Basic has no error parameter).
    pub fn challenge(&self, _error: Option<&str>) -> HeaderValue {
        self.challenge.clone()
    }
}

/// Standard base64; padding optional, since some clients leave it out.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// RFC 7617 §2: base64 of `user-id ":" password`, UTF-8 (the challenge
/// announces `charset="UTF-8"`); the text and where the first colon is.
fn decode(token: &str) -> Option<(String, usize)> {
    let text = String::from_utf8(B64.decode(token).ok()?).ok()?;
    let colon = text.find(':')?;
    Some((text, colon))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn consumers(hash: &str) -> Consumers {
        let yaml = format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:0\" }}]\nconsumers:\n  - name: alice\n    basic: [{{ username: al, password_hash: \"{hash}\" }}]\n"
        );
        let cfg = crate::config::load_str(&yaml, "t.yaml").unwrap();
        Consumers::compile(&cfg, "t.yaml").unwrap()
    }

    fn req(auth: &str) -> Request<()> {
        Request::builder()
            .header("authorization", auth)
            .body(())
            .unwrap()
    }

    fn basic(user_pass: &str) -> Request<()> {
        req(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        ))
    }

    #[test]
    fn decode_splits_at_the_first_colon() {
        let (t, i) = decode("dXNlcjpwYTpzcw==").unwrap();
        assert_eq!((&t[..i], &t[i + 1..]), ("user", "pa:ss"));
        let (t, i) = decode("dXNlcjpwYTpzcw").unwrap();
        assert_eq!(&t[..i], "user");
        assert!(decode("bm9jb2xvbg==").is_none()); // "nocolon"
        assert!(decode("/w==").is_none()); // not UTF-8
        assert!(decode("!!!").is_none());
        let (t, i) =
            decode(&base64::engine::general_purpose::STANDARD.encode("j\u{f6}rg:p\u{e4}ss"))
                .unwrap();
        assert_eq!((&t[..i], &t[i + 1..]), ("j\u{f6}rg", "p\u{e4}ss"));
    }

    #[test]
    fn challenge_quotes_the_realm() {
        let cfg = BasicConfig {
            realm: "my \"realm\"".into(),
            ..BasicConfig::default()
        };
        let b = Basic::compile("b", &cfg, None).unwrap();
        assert_eq!(
            b.challenge(None),
            "Basic realm=\"my \\\"realm\\\"\", charset=\"UTF-8\""
        );
        let cfg = BasicConfig {
            realm: "a\nb".into(),
            ..BasicConfig::default()
        };
        assert!(Basic::compile("b", &cfg, None).is_err());
    }

    #[tokio::test]
    async fn verifies_bcrypt_and_caches_by_keyed_digest() {
        let c = consumers(&bcrypt::hash("s3cret", 4).unwrap());
        let b = Basic::compile("b", &BasicConfig::default(), None).unwrap();
        let ok = b.authenticate(&basic("al:s3cret"), &c).await;
        assert!(
            matches!(&ok, Outcome::Accepted(id) if &*id.consumer.as_ref().unwrap().name == "alice"),
            "{ok:?}"
        );
        assert!(matches!(
            b.authenticate(&basic("al:wrong"), &c).await,
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            b.authenticate(&basic("bob:s3cret"), &c).await,
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            b.authenticate(&req("basic !!"), &c).await,
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            b.authenticate(&req("Bearer x"), &c).await,
            Outcome::Absent
        ));
        b.shared.verdicts.run_pending_tasks().await;
        assert_eq!(b.shared.verdicts.entry_count(), 3);
        // A second time comes from the cache, and still answers the same.
        assert!(matches!(
            b.authenticate(&basic("al:s3cret"), &c).await,
            Outcome::Accepted(_)
        ));
        assert!(matches!(
            b.authenticate(&basic("al:wrong"), &c).await,
            Outcome::Rejected(_)
        ));

        // A reload with a new hash for the same user: the cached success
        // does not carry over to the new hash.
        let kept = Basic::compile("b", &BasicConfig::default(), Some(&b)).unwrap();
        let c2 = consumers(&bcrypt::hash("other", 4).unwrap());
        assert!(matches!(
            kept.authenticate(&basic("al:s3cret"), &c2).await,
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            kept.authenticate(&basic("al:other"), &c2).await,
            Outcome::Accepted(_)
        ));
    }

    #[tokio::test]
    async fn verifies_argon2() {
        let c = consumers(&super::super::consumers::tests::argon2_hash("pw"));
        let b = Basic::compile("b", &BasicConfig::default(), None).unwrap();
        assert!(matches!(
            b.authenticate(&basic("al:pw"), &c).await,
            Outcome::Accepted(_)
        ));
        assert!(matches!(
            b.authenticate(&basic("al:pW"), &c).await,
            Outcome::Rejected(_)
        ));
    }

    #[tokio::test]
    async fn busy_slots_answer_unavailable() {
        let c = consumers(&bcrypt::hash("pw", 4).unwrap());
        let b = Basic::compile("b", &BasicConfig::default(), None).unwrap();
        let n = b.shared.slots.available_permits();
        let all = b
            .shared
            .slots
            .clone()
            .acquire_many_owned(u32::try_from(n).unwrap())
            .await
            .unwrap();
        assert!(matches!(
            b.authenticate(&basic("al:pw"), &c).await,
            Outcome::Unavailable(_)
        ));
        // Not cached: the same credential is checked again once slots free up.
        drop(all);
        assert!(matches!(
            b.authenticate(&basic("al:pw"), &c).await,
            Outcome::Accepted(_)
        ));
    }
}
