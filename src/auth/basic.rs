//! Stub: being built.

use http::{HeaderValue, Request};

use super::{Consumers, Outcome};
use crate::config::BasicConfig;
use crate::observe::metrics::Metrics;

/// A compiled provider.
pub struct Basic {}

impl Basic {
    /// Compiles the provider; `previous` is the same definition's provider
    /// in the running snapshot, whose state is kept.
    pub fn compile(
        _name: &str,
        _cfg: &BasicConfig,
        _file: &str,
        _previous: Option<&Basic>,
        _metrics: &Metrics,
    ) -> Result<Self, String> {
        Err("not built yet".into())
    }
    /// Checks the request's credential.
    pub async fn authenticate<B>(&self, _name: &str, _req: &Request<B>, _c: &Consumers) -> Outcome {
        Outcome::Absent
    }
    /// Removes the credential.
    pub fn strip<B>(&self, _req: &mut Request<B>) {}
    /// The challenge.
    pub fn challenge(&self, _error: Option<&str>) -> HeaderValue {
        HeaderValue::from_static("Bearer")
    }
}
