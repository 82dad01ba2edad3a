//! Consumers: named identities with their credentials, indexed for the
//! providers (API key digests, Basic user names, token subjects).
//!
//! No secret is kept in clear: plain API keys are hashed with SHA-256 here,
//! Basic credentials are bcrypt or argon2 hashes from the start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use subtle::ConstantTimeEq as _;

use super::basic::PasswordHash;
use crate::config::{
    ApiKeyCredential, AuthProviderConfig, Config, ConfigError, ConsumerConfig, SubjectEntry,
};
use serde_saphyr::Spanned;

/// The SHA-256 digest of an API key.
pub type KeyDigest = [u8; 32];

/// A consumer as the request path sees it.
#[derive(Debug)]
pub struct Consumer {
    /// Its name.
    pub name: Arc<str>,
    /// Its groups.
    pub groups: Box<[Arc<str>]>,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A Basic user name's consumer and password hash.
#[derive(Debug)]
pub struct BasicUser {
    /// Whose it is.
    pub consumer: Arc<Consumer>,
    /// The hash to verify a password against.
    pub hash: Arc<PasswordHash>,
}

/// Every consumer, indexed by credential.
#[derive(Debug, Default)]
pub struct Consumers {
    keys: HashMap<KeyDigest, Arc<Consumer>>,
    users: HashMap<Box<str>, BasicUser>,
    /// Token subjects by provider name, then subject: a token of one
    /// provider never names a consumer through another provider's subject.
    subjects: HashMap<Box<str>, HashMap<Box<str>, Arc<Consumer>>>,
    /// Subjects written without a provider: allowed only when the config has
    /// a single token provider, so they match that one.
    plain_subjects: HashMap<Box<str>, Arc<Consumer>>,
    /// A real hash of the config, verified for unknown user names so that
    /// the time taken does not tell which users exist.
    dummy: Option<Arc<PasswordHash>>,
}

/// The SHA-256 digest of an API key.
pub fn key_digest(key: &[u8]) -> KeyDigest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
    out
}

/// Decodes a 64-character hex SHA-256 digest.
fn parse_hex_digest(s: &str) -> Option<KeyDigest> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// The `auth_providers` of a config.
type ProviderMap = std::collections::BTreeMap<String, Spanned<AuthProviderConfig>>;

/// Whether a provider reads tokens whose subjects name consumers.
fn is_token_provider(p: &AuthProviderConfig) -> bool {
    matches!(
        p,
        AuthProviderConfig::Jwt(_) | AuthProviderConfig::Introspection(_)
    )
}

impl Consumers {
    /// Indexes the consumers of `cfg`, checking their subjects against its
    /// auth providers; errors carry their location.
    pub fn compile(cfg: &Config, file: &str) -> Result<Self, Vec<ConfigError>> {
        Self::index(&cfg.consumers, &cfg.auth_providers, file)
    }

    fn index(
        cfg: &[ConsumerConfig],
        providers: &ProviderMap,
        file: &str,
    ) -> Result<Self, Vec<ConfigError>> {
        let token_providers: Vec<&str> = providers
            .iter()
            .filter(|(_, p)| is_token_provider(&p.value))
            .map(|(n, _)| n.as_str())
            .collect();
        let mut errors = Vec::new();
        let mut this = Self::default();
        let mut names: HashMap<&str, ()> = HashMap::with_capacity(cfg.len());
        for c in cfg {
            let name = c.name.value.as_str();
            let at =
                |loc, msg: String| ConfigError::at(file, loc, format!("consumer `{name}`: {msg}"));
            if name.is_empty() {
                errors.push(ConfigError::at(
                    file,
                    &c.name.referenced,
                    "a consumer's `name` must not be empty",
                ));
                continue;
            }
            if names.insert(name, ()).is_some() {
                errors.push(at(
                    &c.name.referenced,
                    "another consumer has this name".into(),
                ));
                continue;
            }
            let consumer = Arc::new(Consumer {
                name: name.into(),
                groups: c.groups.iter().map(|g| g.as_str().into()).collect(),
                metadata: c.metadata.clone(),
            });
            for key in &c.api_keys {
                let digest = match &key.value {
                    ApiKeyCredential::Plain(k) if k.is_empty() => {
                        errors.push(at(&key.referenced, "an API key must not be empty".into()));
                        continue;
                    }
                    ApiKeyCredential::Plain(k) => key_digest(k.as_bytes()),
                    ApiKeyCredential::Hashed { sha256 } => match parse_hex_digest(sha256) {
                        Some(d) => d,
                        None => {
                            errors.push(at(
                                &key.referenced,
                                "`sha256` must be 64 hex digits (a SHA-256 digest)".into(),
                            ));
                            continue;
                        }
                    },
                };
                if let Some(other) = this.keys.get(&digest) {
                    errors.push(at(
                        &key.referenced,
                        format!("this API key is also a key of consumer `{}`", other.name),
                    ));
                    continue;
                }
                this.keys.insert(digest, consumer.clone());
            }
            for cred in &c.basic {
                let user = cred.value.username.as_str();
                // RFC 7617 §2: the user-id cannot contain a colon.
                if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
                    errors.push(at(
                        &cred.referenced,
                        format!("Basic username `{}` must be non-empty, without `:` or control characters", user.escape_debug()),
                    ));
                    continue;
                }
                let hash = match PasswordHash::parse(&cred.value.password_hash) {
                    Ok(h) => Arc::new(h),
                    Err(e) => {
                        errors.push(at(&cred.referenced, format!("user `{user}`: {e}")));
                        continue;
                    }
                };
                if let Some(other) = this.users.get(user) {
                    errors.push(at(
                        &cred.referenced,
                        format!(
                            "Basic username `{user}` is also used by consumer `{}`",
                            other.consumer.name
                        ),
                    ));
                    continue;
                }
                this.dummy.get_or_insert_with(|| hash.clone());
                this.users.insert(
                    user.into(),
                    BasicUser {
                        consumer: consumer.clone(),
                        hash,
                    },
                );
            }
            for entry in &c.subjects {
                let (provider, subject) = match &entry.value {
                    SubjectEntry::Plain(s) => (None, s.as_str()),
                    SubjectEntry::Qualified { provider, subject } => {
                        (Some(provider.as_str()), subject.as_str())
                    }
                };
                if let Err(e) = check_subject(provider, subject, providers, &token_providers) {
                    errors.push(at(&entry.referenced, e));
                    continue;
                }
                if let Some(other) = this.subject_owner(provider, subject) {
                    let of = provider.map_or(String::new(), |p| format!(" of provider `{p}`"));
                    errors.push(at(
                        &entry.referenced,
                        format!(
                            "subject `{subject}`{of} is also a subject of consumer `{}`",
                            other.name
                        ),
                    ));
                    continue;
                }
                let map = match provider {
                    Some(p) => this.subjects.entry(p.into()).or_default(),
                    None => &mut this.plain_subjects,
                };
                map.insert(subject.into(), consumer.clone());
            }
        }
        if errors.is_empty() {
            Ok(this)
        } else {
            Err(errors)
        }
    }

    /// The consumer an API key digest belongs to. The map finds the
    /// candidate; the constant-time comparison is what accepts it.
    pub fn by_key(&self, digest: &KeyDigest) -> Option<&Arc<Consumer>> {
        let (stored, consumer) = self.keys.get_key_value(digest)?;
        bool::from(stored.ct_eq(digest)).then_some(consumer)
    }

    /// The consumer and password hash of a Basic user name.
    pub fn by_username(&self, username: &str) -> Option<&BasicUser> {
        self.users.get(username)
    }

    /// A hash to verify an unknown user's password against (`None` when no
    /// consumer has Basic credentials).
    pub fn dummy_hash(&self) -> Option<&Arc<PasswordHash>> {
        self.dummy.as_ref()
    }

    /// The consumer a subject of a token from `provider` names.
    pub fn by_subject(&self, provider: &str, subject: &str) -> Option<&Arc<Consumer>> {
        self.subjects
            .get(provider)
            .and_then(|m| m.get(subject))
            .or_else(|| self.plain_subjects.get(subject))
    }

    /// The consumer already holding `subject` for `provider`: a plain
    /// subject stands for the single token provider, so it clashes with the
    /// same subject under any provider.
    fn subject_owner(&self, provider: Option<&str>, subject: &str) -> Option<&Arc<Consumer>> {
        match provider {
            Some(p) => self.by_subject(p, subject),
            None => self
                .plain_subjects
                .get(subject)
                .or_else(|| self.subjects.values().find_map(|m| m.get(subject))),
        }
    }
}

/// Checks one `subjects` entry against the config's providers (when known).
fn check_subject(
    provider: Option<&str>,
    subject: &str,
    providers: &ProviderMap,
    token_providers: &[&str],
) -> Result<(), String> {
    if subject.is_empty() {
        return Err("a subject must not be empty".into());
    }
    match provider {
        None if token_providers.len() > 1 => Err(format!(
            "subject `{subject}` needs `provider:` when several token providers exist ({}): write `{{ provider: <name>, subject: {subject} }}`",
            token_providers.join(", ")
        )),
        None => Ok(()),
        Some(p) => match providers.get(p) {
            None => Err(format!(
                "subject `{subject}`: `provider: {p}` names no entry of `auth_providers`"
            )),
            Some(def) if !is_token_provider(&def.value) => Err(format!(
                "subject `{subject}`: `provider: {p}` is not a `jwt` or `introspection` provider"
            )),
            Some(_) => Ok(()),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Consumers, String> {
        let text =
            format!("listeners: [{{ name: l, address: \"127.0.0.1:0\" }}]\nconsumers:\n{yaml}");
        let cfg = crate::config::load_str(&text, "c.yaml").map_err(|e| e.to_string())?;
        Consumers::compile(&cfg, "c.yaml").map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    pub(crate) fn argon2_hash(pw: &str) -> String {
        use argon2::PasswordHasher as _;
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        a.hash_password_with_salt(pw.as_bytes(), b"saltsaltsalt")
            .unwrap()
            .to_string()
    }

    const BCRYPT: &str = "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie";

    #[test]
    fn keys_are_found_by_digest_plain_or_hashed() {
        let hex = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"; // "test"
        let c = compile(&format!(
            "  - name: a\n    api_keys: [k1]\n  - name: b\n    api_keys: [{{ sha256: {hex} }}]\n    groups: [g]\n"
        ))
        .unwrap();
        assert_eq!(&*c.by_key(&key_digest(b"k1")).unwrap().name, "a");
        let b = c.by_key(&key_digest(b"test")).unwrap();
        assert_eq!(&*b.name, "b");
        assert_eq!(&*b.groups[0], "g");
        assert!(c.by_key(&key_digest(b"nope")).is_none());
    }

    #[test]
    fn errors_carry_locations_and_never_secrets() {
        let e = compile("  - name: a\n    api_keys: [k1]\n  - name: a\n").unwrap_err();
        assert_eq!(
            e,
            "c.yaml:5:11: consumer `a`: another consumer has this name"
        );
        let e = compile("  - name: a\n    api_keys: [k1]\n  - name: b\n    api_keys: [k1]\n")
            .unwrap_err();
        assert!(
            e.starts_with("c.yaml:6:16: consumer `b`: this API key is also a key of consumer `a`"),
            "{e}"
        );
        assert!(!e.contains("k1"), "{e}");
        let e = compile("  - name: a\n    api_keys: [{ sha256: abc }]\n").unwrap_err();
        assert!(e.contains("64 hex digits"), "{e}");
        let e = compile("  - name: a\n    api_keys: [\"\"]\n").unwrap_err();
        assert!(e.contains("must not be empty"), "{e}");
        let e = compile("  - name: a\n    basic: [{ username: u, password_hash: hunter2 }]\n")
            .unwrap_err();
        assert!(e.starts_with("c.yaml:4:13: consumer `a`: user `u`:"), "{e}");
        assert!(e.contains("plain passwords are not accepted"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = compile("  - name: a\n    basic: [{ username: \"a:b\", password_hash: x }]\n")
            .unwrap_err();
        assert!(e.contains("without `:`"), "{e}");
        let e = compile(&format!(
            "  - name: a\n    basic: [{{ username: u, password_hash: \"{BCRYPT}\" }}]\n  - name: b\n    basic: [{{ username: u, password_hash: \"{BCRYPT}\" }}]\n"
        ))
        .unwrap_err();
        assert!(e.contains("`u` is also used by consumer `a`"), "{e}");
        let e = compile("  - name: a\n    subjects: [s]\n  - name: b\n    subjects: [s]\n")
            .unwrap_err();
        assert!(
            e.contains("subject `s` is also a subject of consumer `a`"),
            "{e}"
        );
    }

    #[test]
    fn users_and_subjects_are_indexed() {
        let c = compile(&format!(
            "  - name: a\n    basic: [{{ username: alice, password_hash: \"{BCRYPT}\" }}]\n    subjects: [sub-1]\n"
        ))
        .unwrap();
        let u = c.by_username("alice").unwrap();
        assert_eq!(&*u.consumer.name, "a");
        assert!(c.by_username("Alice").is_none());
        assert!(c.dummy_hash().is_some());
        assert_eq!(&*c.by_subject("any", "sub-1").unwrap().name, "a");
        assert!(c.by_subject("any", "sub-2").is_none());
    }

    /// Compiles `consumers` against providers `corp` and `partner` (JWT),
    /// `intro` (introspection) and `keys` (API keys), or only those listed in `only`.
    fn with_providers(only: &[&str], consumers: &str) -> Result<Consumers, String> {
        let all = [
            ("corp", "{ jwt: { keys: [{ alg: HS256, secret: s }] } }"),
            ("partner", "{ jwt: { keys: [{ alg: HS256, secret: t }] } }"),
            (
                "intro",
                "{ introspection: { endpoint: \"http://127.0.0.1:1/\", client_id: c, client_secret: s } }",
            ),
            ("keys", "{ api_key: {} }"),
        ];
        let providers: String = all
            .iter()
            .filter(|(n, _)| only.contains(n))
            .map(|(n, d)| format!("  {n}: {d}\n"))
            .collect();
        let text = format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:0\" }}]\nauth_providers:\n{providers}consumers:\n{consumers}"
        );
        let cfg = crate::config::load_str(&text, "c.yaml").map_err(|e| e.to_string())?;
        Consumers::compile(&cfg, "c.yaml").map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn qualified_subjects_match_only_their_provider() {
        let c = with_providers(
            &["corp", "partner", "keys"],
            "  - name: alice\n    subjects: [{ provider: corp, subject: alice-sub }]\n  - name: p\n    subjects: [{ provider: partner, subject: alice-sub }]\n",
        )
        .unwrap();
        assert_eq!(&*c.by_subject("corp", "alice-sub").unwrap().name, "alice");
        assert_eq!(&*c.by_subject("partner", "alice-sub").unwrap().name, "p");
        assert!(c.by_subject("keys", "alice-sub").is_none());
        assert!(c.by_subject("corp", "p").is_none());

        // With a single token provider, a plain subject is that provider's.
        let c = with_providers(
            &["corp", "keys"],
            "  - name: alice\n    subjects: [alice-sub]\n",
        )
        .unwrap();
        assert_eq!(&*c.by_subject("corp", "alice-sub").unwrap().name, "alice");
    }

    #[test]
    fn subjects_are_checked_against_the_providers() {
        let two = ["corp", "intro", "keys"];
        let e =
            with_providers(&two, "  - name: alice\n    subjects: [ok, alice-sub]\n").unwrap_err();
        assert!(
            e.starts_with("c.yaml:8:16: consumer `alice`: subject `ok` needs `provider:` when several token providers exist (corp, intro)"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 2, "{e}");
        let e = with_providers(
            &two,
            "  - name: alice\n    subjects: [{ provider: nope, subject: s }]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("`provider: nope` names no entry of `auth_providers`"),
            "{e}"
        );
        let e = with_providers(
            &two,
            "  - name: alice\n    subjects: [{ provider: keys, subject: s }]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("`provider: keys` is not a `jwt` or `introspection` provider"),
            "{e}"
        );
        let e = with_providers(
            &two,
            "  - name: a\n    subjects: [{ provider: corp, subject: \"\" }]\n",
        )
        .unwrap_err();
        assert!(e.contains("must not be empty"), "{e}");
        let e = with_providers(
            &two,
            "  - name: a\n    subjects: [{ provider: corp, subject: s, x: 1 }]\n",
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");

        // Unique per (provider, subject).
        let e = with_providers(
            &two,
            "  - name: a\n    subjects: [{ provider: corp, subject: s }]\n  - name: b\n    subjects: [{ provider: corp, subject: s }, { provider: intro, subject: s }]\n",
        )
        .unwrap_err();
        assert!(
            e.contains(
                "consumer `b`: subject `s` of provider `corp` is also a subject of consumer `a`"
            ),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = with_providers(
            &["corp"],
            "  - name: a\n    subjects: [{ provider: corp, subject: s }]\n  - name: b\n    subjects: [s]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("subject `s` is also a subject of consumer `a`"),
            "{e}"
        );
        let e = with_providers(
            &["corp"],
            "  - name: a\n    subjects: [s]\n  - name: b\n    subjects: [{ provider: corp, subject: s }]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("subject `s` of provider `corp` is also a subject of consumer `a`"),
            "{e}"
        );
        // No token provider: plain subjects name nothing, but are no error.
        assert!(with_providers(&["keys"], "  - name: a\n    subjects: [s]\n").is_ok());
    }

    #[test]
    fn password_hashes_are_bcrypt_or_argon2() {
        assert!(PasswordHash::parse(BCRYPT).is_ok());
        assert!(PasswordHash::parse("$2b$04$short").is_err());
        assert!(PasswordHash::parse("$1$md5crypt").is_err());
        let bcrypt = bcrypt::hash("pw", 4).unwrap();
        let h = PasswordHash::parse(&bcrypt).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pW"));
        let argon = argon2_hash("pw");
        let h = PasswordHash::parse(&argon).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"px"));
        assert!(PasswordHash::parse("$argon2id$garbage").is_err());
    }
}
