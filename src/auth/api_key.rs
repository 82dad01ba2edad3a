//! API keys, read from a header or query parameter and looked up among the
//! consumers' keys by SHA-256 digest, compared in constant time.

use http::{HeaderValue, Request};

use super::{Consumers, Outcome};
use crate::config::ApiKeyConfig;

/// A compiled API key provider.
pub struct ApiKey {}

impl ApiKey {
    /// Compiles the provider.
    pub fn compile(_cfg: &ApiKeyConfig) -> Result<Self, String> {
        Err("api_key: not built yet".into())
    }
    /// Checks the request's key.
    pub fn authenticate<B>(&self, _name: &str, _req: &Request<B>, _c: &Consumers) -> Outcome {
        Outcome::Absent
    }
    /// Removes the key.
    pub fn strip<B>(&self, _req: &mut Request<B>) {}
    /// The challenge.
    pub fn challenge(&self, _error: Option<&str>) -> HeaderValue {
        HeaderValue::from_static("ApiKey")
    }
}
