//! API keys, read from a header, cookie or query parameter and looked up
//! among the consumers' keys by SHA-256 digest, compared in constant time.
//!
//! RFC 9110 §11.6.1 asks every 401 to carry a challenge; API keys have no
//! registered scheme, so the provider announces `ApiKey realm="portico"`
//! (`error="invalid_key"` added when a key was refused).

use std::sync::Arc;

use http::{HeaderValue, Request};

use super::consumers::key_digest;
use super::source::Sources;
use super::{Consumers, Identity, Outcome};
use crate::config::ApiKeyConfig;

/// A compiled API key provider.
pub struct ApiKey {
    name: Arc<str>,
    sources: Sources,
}

impl ApiKey {
    /// Compiles the provider.
    pub fn compile(name: &str, cfg: &ApiKeyConfig) -> Result<Self, String> {
        Ok(Self {
            name: name.into(),
            sources: Sources::compile(&cfg.from).map_err(|e| format!("`from`: {e}"))?,
        })
    }

    /// Checks the request's key.
    pub fn authenticate<B>(&self, req: &Request<B>, consumers: &Consumers) -> Outcome {
        let key = match self.sources.credential(req) {
            Ok(key) => key,
            Err(outcome) => return outcome,
        };
        match consumers.by_key(&key_digest(key.as_bytes())) {
            Some(c) => Outcome::Accepted(Identity {
                consumer: Some(c.clone()),
                subject: None,
                claims: None,
                provider: self.name.clone(),
            }),
            None => Outcome::Rejected("invalid API key".into()),
        }
    }

    /// Removes the key.
    pub fn strip<B>(&self, req: &mut Request<B>) {
        self.sources.strip(req);
    }

    /// The challenge: a non-standard `ApiKey` scheme (there is no registered one).
    pub fn challenge(&self, error: Option<&str>) -> HeaderValue {
        match error {
            None => HeaderValue::from_static("ApiKey realm=\"portico\""),
            Some(_) => HeaderValue::from_static("ApiKey realm=\"portico\", error=\"invalid_key\""),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_by_digest() {
        let yaml = "listeners: [{ name: l, address: \"127.0.0.1:0\" }]\nconsumers:\n  - name: a\n    api_keys: [k1]\n";
        let cfg = crate::config::load_str(yaml, "t.yaml").unwrap();
        let c = Consumers::compile(&cfg, "t.yaml").unwrap();
        let p = ApiKey::compile("keys", &ApiKeyConfig::default()).unwrap();
        let req = |k: Option<&str>| {
            let mut b = Request::builder();
            if let Some(k) = k {
                b = b.header("X-Api-Key", k);
            }
            b.body(()).unwrap()
        };
        match p.authenticate(&req(Some("k1")), &c) {
            Outcome::Accepted(id) => {
                assert_eq!(&*id.consumer.unwrap().name, "a");
                assert_eq!(&*id.provider, "keys");
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            p.authenticate(&req(Some("k2")), &c),
            Outcome::Rejected(_)
        ));
        assert!(matches!(p.authenticate(&req(None), &c), Outcome::Absent));
        assert_eq!(
            p.challenge(Some("x")),
            "ApiKey realm=\"portico\", error=\"invalid_key\""
        );
    }
}
